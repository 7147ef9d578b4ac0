"""The trainer's batch counter: the schedules' position, the steps a loss scale skips
included (the official code's iteration counter), saved with the model."""

import keras
import numpy as np
from keras import ops

import keras_ssl
from keras_ssl.backbones import ConvNet

BATCH, SKIPPED = 8, 2


class OverflowingBYOL(keras_ssl.BYOL):
    """BYOL whose first `SKIPPED` steps overflow, as a loss scale's first steps do."""

    def transform_gradients(self, gradients):
        overflow = ops.cast(self.batches_trained, "float32") < SKIPPED
        factor = ops.where(overflow, float("inf"), 1.0)
        return [g * ops.cast(factor, g.dtype) for g in gradients]


def _views():
    images = np.random.default_rng(0).uniform(size=(2 * BATCH, 8, 8, 1)).astype("float32")
    return images, np.flip(images, axis=2).copy()


def _model():
    keras.utils.set_random_seed(0)
    model = OverflowingBYOL(
        ConvNet(widths=(4, 8), input_channels=1), projection_dim=8, hidden_dim=8
    )
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    return model


def _int(variable):
    return int(ops.convert_to_numpy(variable))


def _state(model):
    return [ops.convert_to_numpy(v) for v in model.weights]


def test_skipped_steps_keep_their_place_in_the_schedules_and_in_a_resumed_run(tmp_path):
    straight = _model()
    straight.fit(_views(), batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    assert _int(straight.optimizer.iterations) == 6 - SKIPPED  # the loss scale skipped them
    assert _int(straight.batches_trained) == 6 and _int(straight.total_steps) == 6
    assert _int(straight.schedule_step()) == 5  # the last step's index: the run's end
    np.testing.assert_allclose(float(straight.teacher_momentum()), 1.0 - 0.004 * (
        1 + np.cos(np.pi * 5 / 6)) / 2, rtol=1e-7)  # fmt: skip

    # Both overflowing steps in the first epoch, then a restart from its weights.
    first = _model()
    first.fit(_views(), batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert _int(first.optimizer.iterations) == 0 and _int(first.batches_trained) == 2
    first.save_weights(tmp_path / "epoch_1.weights.h5")
    resumed = _model()
    resumed.load_weights(tmp_path / "epoch_1.weights.h5")
    resumed.fit(_views(), batch_size=BATCH, epochs=3, initial_epoch=1, shuffle=False, verbose=0)
    assert _int(resumed.total_steps) == 6 and _int(resumed.batches_trained) == 6
    for got, expected, variable in zip(
        _state(resumed), _state(straight), straight.weights, strict=True
    ):
        # 1e-5: TensorFlow's oneDNN convolutions differ in the last bits between the runs.
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=variable.path)


def test_the_counter_is_saved_by_name_and_older_files_derive_it():
    model = _model()
    model.fit(_views(), batch_size=BATCH, epochs=2, verbose=0)
    store = {}
    model.save_own_variables(store)
    assert int(store["batches_trained"]) == 4
    own = [k for k in store if k.isdigit()]
    assert len(own) == len(model._trainable_variables + model._non_trainable_variables) - 1

    # A file from before the counter: its position comes from the optimizer's step count.
    older = {k: v for k, v in store.items() if k != "batches_trained"}
    reloaded = _model()
    reloaded.load_own_variables(older)
    assert _int(reloaded.batches_trained) == -1
    assert _int(reloaded.schedule_step()) == 0  # read before a fit: the start
    reloaded.optimizer.build(reloaded.trainable_variables)
    reloaded.optimizer.iterations.assign(3)
    reloaded.fit(_views(), batch_size=BATCH, epochs=1, verbose=0)
    assert _int(reloaded.batches_trained) == 3 + 2 and _int(reloaded.total_steps) == 3 + 2
