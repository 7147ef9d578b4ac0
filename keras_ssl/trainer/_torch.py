"""The PyTorch train step: autograd on the Keras variables, the optimizer, the after-step.

With `torch.distributed` started (one process per device, `torchrun`), Keras's `fit`
runs in every process on its shard of the data; the step averages the gradients over
the processes (the mean of the processes' gradients is the global-batch gradient, see
`keras_ssl.ops.distributed`) before `transform_gradients` and the optimizer, and `fit`
first copies process 0's weights to the others. The logged loss and metrics are
averaged over the processes.
"""

import functools

import keras
import torch

from keras_ssl.distributed import _torch as distributed
from keras_ssl.ops._multi_tensor import clip_each_by_norm
from keras_ssl.ops.distributed import all_reduce_mean


class BackendStep:
    def fit(self, *args, **kwargs):
        if distributed.world_size() > 1:
            variables = list(self.weights)
            if getattr(self.optimizer, "built", False):
                variables += list(self.optimizer.variables)
            distributed.broadcast_variables(variables)
        return super().fit(*args, **kwargs)

    def train_step(self, data):
        self.zero_grad()
        loss, logs = self._forward_and_loss(data, training=True)
        self.optimizer.scale_loss(loss).backward()
        trainable = self.trainable_variables
        gradients = [v.value.grad for v in trainable]
        if distributed.world_size() > 1:
            gradients = distributed.all_reduce_gradients(gradients)
            loss, logs = _replica_mean(loss, logs)
        gradients = self.transform_gradients(gradients)
        with torch.no_grad():
            _apply_gradients(self.optimizer, gradients, trainable)
            self._after_update()
        return self._update_trackers(loss, logs)

    def test_step(self, data):
        with torch.no_grad():
            loss, logs = self._forward_and_loss(data, training=False)
            if distributed.world_size() > 1:
                loss, logs = _replica_mean(loss, logs)
        return self._update_trackers(loss, logs)


def _apply_gradients(optimizer, gradients, variables):
    """`optimizer.apply(gradients, variables)` with three of Keras's PyTorch costs removed,
    each computing what Keras computes:

    - a per-variable `clipnorm` is done first by `clip_each_by_norm` over all gradients at
      once (Keras's own makes two host-device copies per variable, which on CUDA stall the
      step: 314 a step for a ViT-Tiny DINO). Keras's path is kept where it clips elsewhere
      than right before the update: with gradient accumulation (it clips the accumulated
      gradient) or a loss scale (it clips after unscaling). Variables whose gradient
      overwrites them (`overwrite_with_gradient`) are not clipped, as in Keras;
    - `weight_decay=0.0` is skipped: Keras multiplies every variable by `1 - 0 * lr`;
    - Keras's `Adam` and `AdamW` (without `amsgrad`) update with `_adam_update`.
    """
    overrides = {}
    clip_norm = getattr(optimizer, "clipnorm", None)
    if (
        clip_norm
        and clip_norm > 0
        and not getattr(optimizer, "gradient_accumulation_steps", None)
        and getattr(optimizer, "loss_scale_factor", None) is None
    ):
        clip = [
            None if getattr(v, "overwrite_with_gradient", False) else g
            for g, v in zip(gradients, variables, strict=True)
        ]
        clipped = clip_each_by_norm(clip, clip_norm)
        gradients = [c if c is not None else g for c, g in zip(clipped, gradients, strict=True)]
        overrides["clipnorm"] = None
    decay = getattr(optimizer, "weight_decay", None)
    if isinstance(decay, (int, float)) and decay == 0:
        overrides["weight_decay"] = None
    if _is_keras_adam(optimizer):
        overrides["_parallel_update_step"] = functools.partial(_adam_update, optimizer)
    saved = {name: getattr(optimizer, name, None) for name in ("clipnorm", "weight_decay")}
    for name, value in overrides.items():
        setattr(optimizer, name, value)
    try:
        optimizer.apply(gradients, variables)
    finally:
        for name in overrides:
            if name in saved:
                setattr(optimizer, name, saved[name])
            else:  # the instance's update step: back to the class's
                delattr(optimizer, name)


def _is_keras_adam(optimizer):
    return (
        isinstance(optimizer, keras.optimizers.Adam)
        and type(optimizer).__module__.startswith("keras.")
        and type(optimizer).__name__ in ("Adam", "AdamW")
        and not optimizer.amsgrad
    )


def _adam_update(optimizer, gradients, variables, learning_rate):
    """Keras's PyTorch `Adam._parallel_update_step` (Kingma & Ba, 2015, with Keras's
    epsilon placement), in fewer passes: with `t` the step, `alpha = lr sqrt(1 - b2^t) /
    (1 - b1^t)`, `m <- lerp(m, g, 1 - b1)`, `v <- b2 v + (1 - b2) g^2` (`addcmul`), and
    `w <- w - m / ((sqrt(v) + eps) / alpha)` (`addcdiv`): seven passes over the weights and
    one temporary, against ten passes and five temporaries. Variables of mixed dtypes keep
    Keras's own update."""
    values = [v.value for v in variables]
    dtype = values[0].dtype
    if any(value.dtype != dtype for value in values):
        type(optimizer)._parallel_update_step(optimizer, gradients, variables, learning_rate)
        return
    beta_1, beta_2 = optimizer.beta_1, optimizer.beta_2
    lr = keras.ops.cast(learning_rate, dtype)
    step = (optimizer.iterations.value + 1).to(dtype)
    alpha = lr * torch.sqrt(1 - torch.pow(beta_2, step)) / (1 - torch.pow(beta_1, step))
    index = optimizer._get_variable_index
    momentums = [optimizer._momentums[index(v)].value for v in variables]
    velocities = [optimizer._velocities[index(v)].value for v in variables]
    torch._foreach_lerp_(momentums, gradients, 1 - beta_1)
    torch._foreach_mul_(velocities, beta_2)
    torch._foreach_addcmul_(velocities, gradients, gradients, value=1 - beta_2)
    denominators = torch._foreach_sqrt(velocities)
    torch._foreach_add_(denominators, optimizer.epsilon)
    torch._foreach_div_(denominators, alpha)
    torch._foreach_addcdiv_(values, momentums, denominators, value=-1.0)


def _replica_mean(loss, logs):
    names = sorted(logs)
    scalars = [loss.detach()] + [torch.as_tensor(logs[n]).detach() for n in names]
    values = all_reduce_mean(torch.stack([v.float().reshape(()) for v in scalars]))
    return values[0], {name: values[i + 1] for i, name in enumerate(names)}
