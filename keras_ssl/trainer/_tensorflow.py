"""The TensorFlow train step: `tf.GradientTape`, the optimizer, then the after-step."""

import tensorflow as tf


class BackendStep:
    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, logs = self._forward_and_loss(data, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        trainable = self.trainable_variables
        gradients = self.transform_gradients(tape.gradient(scaled_loss, trainable))
        self.optimizer.apply(gradients, trainable)
        self.after_optimizer_step()
        return self._update_trackers(loss, logs)

    def test_step(self, data):
        loss, logs = self._forward_and_loss(data, training=False)
        return self._update_trackers(loss, logs)
