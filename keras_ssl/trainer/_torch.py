"""The PyTorch train step: autograd on the Keras variables, the optimizer, the after-step."""

import torch


class BackendStep:
    def train_step(self, data):
        self.zero_grad()
        loss, logs = self._forward_and_loss(data, training=True)
        self.optimizer.scale_loss(loss).backward()
        trainable = self.trainable_variables
        gradients = self.transform_gradients([v.value.grad for v in trainable])
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable)
            self.after_optimizer_step()
        return self._update_trackers(loss, logs)

    def test_step(self, data):
        with torch.no_grad():
            loss, logs = self._forward_and_loss(data, training=False)
        return self._update_trackers(loss, logs)
