"""The TensorFlow train step: `tf.GradientTape`, the optimizer, then the after-step.

Under a `tf.distribute` strategy Keras runs this step once per replica on its shard of
the global batch. With several replicas the step averages the gradients over the
replicas itself (the mean of the replicas' gradients is the global-batch gradient, see
`keras_ssl.ops.distributed`) before `transform_gradients` and the optimizer, whose own
summing is switched off: Keras's optimizer would otherwise clip each replica's partial
gradient. The logged loss and metrics are averaged over the replicas.
"""

import tensorflow as tf

from keras_ssl.distributed import _tensorflow as distributed
from keras_ssl.ops.distributed import all_reduce_mean


class BackendStep:
    def train_step(self, data):
        # The optimizer's variables are made before the step's other ops: XLA
        # (`jit_compile=True`) cannot lift their creation out of the dependencies below.
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        # Every state update waits for the batch: Keras's loop over data of unknown length
        # ends an epoch with a call whose batch never comes, and in a graph the updates that
        # do not read it (the optimizer's and the loss tracker's counts, the augmentation's
        # random state) would run all the same.
        with tf.control_dependencies(_tensors(data)):
            with tf.GradientTape() as tape:
                loss, logs = self._forward_and_loss(data, training=True)
                scaled_loss = self.optimizer.scale_loss(loss)
            trainable = self.trainable_variables
            gradients = tape.gradient(scaled_loss, trainable)
            if distributed.world_size() == 1:
                gradients = self.transform_gradients(gradients)
                self.optimizer.apply(gradients, trainable)
            else:
                gradients = self.transform_gradients(distributed.all_reduce_gradients(gradients))
                with distributed.gradients_already_reduced(self.optimizer):
                    self.optimizer.apply(gradients, trainable)
                loss, logs = _replica_mean(loss, logs)
            self._after_update()
            return self._update_trackers(loss, logs)

    def test_step(self, data):
        with tf.control_dependencies(_tensors(data)):
            loss, logs = self._forward_and_loss(data, training=False)
            if distributed.world_size() > 1:
                loss, logs = _replica_mean(loss, logs)
            return self._update_trackers(loss, logs)


def assert_batch_size_at_least(views, minimum, message):
    """`views` behind an assertion that their batch holds at least `minimum` images, which
    fails as the step runs with `message.format(batch size)`: the check of a graph traced
    for an unknown batch size (Keras retraces for the smaller last batch of an epoch)."""
    size = tf.shape(tf.nest.flatten(views)[0])[0]
    check = tf.debugging.Assert(size >= minimum, [tf.strings.format(message, (size,))])
    with tf.control_dependencies([check]):
        return tf.nest.map_structure(tf.identity, views)


def _tensors(data):
    return [t for t in tf.nest.flatten(data) if isinstance(t, tf.Tensor)]


def _replica_mean(loss, logs):
    names = sorted(logs)
    scalars = [tf.stop_gradient(loss)] + [logs[n] for n in names]
    values = all_reduce_mean(tf.stack([tf.cast(v, tf.float32) for v in scalars]))
    return values[0], {name: values[i + 1] for i, name in enumerate(names)}
