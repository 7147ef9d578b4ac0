"""The PyTorch train step: autograd on the Keras variables, the optimizer, the after-step.

With `torch.distributed` started (one process per device, `torchrun`), Keras's `fit`
runs in every process on its shard of the data; the step averages the gradients over
the processes (the mean of the processes' gradients is the global-batch gradient, see
`keras_ssl.ops.distributed`) before `transform_gradients` and the optimizer, and `fit`
first copies process 0's weights to the others. The logged loss and metrics are
averaged over the processes.
"""

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
            self.after_optimizer_step()
        return self._update_trackers(loss, logs)

    def test_step(self, data):
        with torch.no_grad():
            loss, logs = self._forward_and_loss(data, training=False)
            if distributed.world_size() > 1:
                loss, logs = _replica_mean(loss, logs)
        return self._update_trackers(loss, logs)


def _apply_gradients(optimizer, gradients, variables):
    """`optimizer.apply(gradients, variables)`, with a per-variable `clipnorm` done first
    by `clip_each_by_norm` over all gradients at once (the same formula as Keras's; Keras's
    own makes two host-device copies per variable, which on CUDA stall the step, 314 a
    step for a ViT-Tiny DINO). Keras's path is kept where it clips elsewhere than right
    before the update: with gradient accumulation (it clips the accumulated gradient) or
    a loss scale (it clips after unscaling). Variables whose gradient overwrites them
    (`overwrite_with_gradient`) are not clipped, as in Keras.
    """
    clip_norm = getattr(optimizer, "clipnorm", None)
    if (
        not clip_norm
        or clip_norm <= 0
        or getattr(optimizer, "gradient_accumulation_steps", None)
        or getattr(optimizer, "loss_scale_factor", None) is not None
    ):
        optimizer.apply(gradients, variables)
        return
    clip = [
        None if getattr(v, "overwrite_with_gradient", False) else g
        for g, v in zip(gradients, variables, strict=True)
    ]
    clipped = clip_each_by_norm(clip, clip_norm)
    gradients = [c if c is not None else g for c, g in zip(clipped, gradients, strict=True)]
    optimizer.clipnorm = None
    try:
        optimizer.apply(gradients, variables)
    finally:
        optimizer.clipnorm = clip_norm


def _replica_mean(loss, logs):
    names = sorted(logs)
    scalars = [loss.detach()] + [torch.as_tensor(logs[n]).detach() for n in names]
    values = all_reduce_mean(torch.stack([v.float().reshape(()) for v in scalars]))
    return values[0], {name: values[i + 1] for i, name in enumerate(names)}
