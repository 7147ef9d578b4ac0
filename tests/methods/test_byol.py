import keras
import numpy as np
from keras import ops

import keras_ssl
from keras_ssl.backbones import ConvNet
from tests._support.views import blocky_views


def _model(**kwargs):
    return keras_ssl.BYOL(
        ConvNet(widths=(8, 16), input_channels=1), projection_dim=8, hidden_dim=16, **kwargs
    )


def _views(n=16):
    return blocky_views(n)


def test_thirty_steps_on_a_fixed_batch_lower_the_loss():
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    losses = model.fit(_views(), batch_size=16, epochs=30, verbose=0).history["loss"]
    assert losses[-1] < losses[0] - 0.5, losses


def test_loss_is_the_symmetrised_normalised_mse():
    model = _model()
    views = tuple(ops.convert_to_tensor(v) for v in _views(8))
    loss, _ = model.compute_ssl_loss(views, training=False)

    def online(v):
        return ops.convert_to_numpy(
            model.prediction_head(model.projection_head(model.backbone(v, training=False)))
        )

    def target(v):
        return ops.convert_to_numpy(model.teacher_head(model.teacher_backbone(v)))

    def nmse(p, z):
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return np.mean(2 - 2 * np.sum(p * z, axis=1))

    expected = nmse(online(views[0]), target(views[1])) + nmse(online(views[1]), target(views[0]))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_momentum_follows_the_cosine_schedule_over_the_run():
    model = _model(momentum=0.9)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    teacher_before = ops.convert_to_numpy(model.teacher_backbone.weights[0])
    model.fit(_views(32), batch_size=16, epochs=2, verbose=0)  # 4 steps
    assert int(ops.convert_to_numpy(model.total_steps)) == 4
    # After the last step (index 3 of 4): tau = 1 - 0.1 * (cos(pi * 3 / 4) + 1) / 2.
    expected = 1 - 0.1 * (np.cos(np.pi * 3 / 4) + 1) / 2
    np.testing.assert_allclose(float(model.teacher_momentum()), expected, rtol=1e-6)
    assert not np.array_equal(
        ops.convert_to_numpy(model.teacher_backbone.weights[0]), teacher_before
    )


def test_teacher_receives_no_gradient_and_round_trips(tmp_path):
    model = _model()
    assert not model.teacher_backbone.trainable_weights
    assert not model.teacher_head.trainable_weights
    trainable = {id(v) for v in model.trainable_variables}
    assert not trainable & {id(v) for v in model.teacher_backbone.weights}
    model.compile(optimizer="adam")
    model.fit(_views(), batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "byol.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    for a, b in zip(restored.weights, model.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
