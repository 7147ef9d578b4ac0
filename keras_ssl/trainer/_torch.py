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
            self.optimizer.apply(gradients, trainable)
            self.after_optimizer_step()
        return self._update_trackers(loss, logs)

    def test_step(self, data):
        with torch.no_grad():
            loss, logs = self._forward_and_loss(data, training=False)
            if distributed.world_size() > 1:
                loss, logs = _replica_mean(loss, logs)
        return self._update_trackers(loss, logs)


def _replica_mean(loss, logs):
    names = sorted(logs)
    scalars = [loss.detach()] + [torch.as_tensor(logs[n]).detach() for n in names]
    values = all_reduce_mean(torch.stack([v.float().reshape(()) for v in scalars]))
    return values[0], {name: values[i + 1] for i, name in enumerate(names)}
