import keras
import numpy as np
import pytest
from keras import ops

import keras_ssl
from keras_ssl.backbones import ConvNet
from tests._support.views import blocky_views


def _model(queue_size=32, **kwargs):
    return keras_ssl.MoCoV2(
        ConvNet(widths=(8, 16), input_channels=1),
        projection_dim=8,
        hidden_dim=16,
        queue_size=queue_size,
        **kwargs,
    )


def test_thirty_steps_lower_the_loss():
    # 64 images in batches of 16 and a queue of two batches: the negatives are always keys of
    # other images, as in real training (a fixed batch would meet its own old keys there).
    views = blocky_views(64)
    model = _model(queue_size=32, momentum=0.99)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(views, batch_size=16, epochs=8, shuffle=False, verbose=0)
    losses = history.history["loss"]
    # Epoch 1 meets the random initial queue; from epoch 2 on the queue holds real keys.
    assert losses[-1] < losses[1] - 0.2, losses


def test_queue_rotates_as_a_ring_buffer():
    model = _model(queue_size=12)
    views = tuple(ops.convert_to_tensor(v[:8]) for v in blocky_views(8))
    before = ops.convert_to_numpy(model.queue)
    _, _ = model.compute_ssl_loss(views, training=True)
    keys = model.teacher_head(model.teacher_backbone(views[1], training=True), training=True)
    keys = ops.convert_to_numpy(keys)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queue = ops.convert_to_numpy(model.queue)
    np.testing.assert_allclose(queue[:8], keys, atol=1e-5)
    np.testing.assert_array_equal(queue[8:], before[8:])
    assert int(ops.convert_to_numpy(model.queue_pointer)) == 8
    # The next batch wraps around: rows 8..11 then 0..3.
    model.compute_ssl_loss(views, training=True)
    queue = ops.convert_to_numpy(model.queue)
    np.testing.assert_allclose(queue[8:12], keys[:4], atol=1e-5)
    np.testing.assert_allclose(queue[0:4], keys[4:], atol=1e-5)
    assert int(ops.convert_to_numpy(model.queue_pointer)) == 4


def test_loss_uses_the_queue_before_the_enqueue():
    model = _model(queue_size=16, temperature=0.2)
    views = tuple(ops.convert_to_tensor(v[:8]) for v in blocky_views(8))
    queue = ops.convert_to_numpy(model.queue)
    q = model.projection_head(model.backbone(views[0], training=False), training=False)
    k = model.teacher_head(model.teacher_backbone(views[1], training=False), training=False)
    expected = keras_ssl.ops.info_nce_loss(q, k, queue, temperature=0.2)
    loss, _ = model.compute_ssl_loss(views, training=False)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)


def test_teacher_is_the_ema_of_the_student():
    views = blocky_views(16)
    model = _model(queue_size=32, momentum=0.9)
    teacher0 = [ops.convert_to_numpy(w) for w in model.teacher_backbone.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit(views, batch_size=16, epochs=1, verbose=0)
    for t, t0, s in zip(
        model.teacher_backbone.weights, teacher0, model.backbone.weights, strict=True
    ):
        if not s.trainable:
            continue
        expected = 0.9 * t0 + 0.1 * ops.convert_to_numpy(s)
        np.testing.assert_allclose(ops.convert_to_numpy(t), expected, rtol=1e-5, atol=1e-6)
    assert not model.teacher_backbone.trainable_weights
    assert not model.teacher_head.trainable_weights


def test_batch_larger_than_queue_is_refused():
    model = _model(queue_size=8)
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="smaller than the batch"):
        model.fit(blocky_views(16), batch_size=16, verbose=0)


def test_save_load_keeps_queue_pointer_and_teacher(tmp_path):
    model = _model(queue_size=48)
    model.compile(optimizer="adam")
    model.fit(blocky_views(32), batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "moco.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert int(ops.convert_to_numpy(restored.queue_pointer)) == 32
    for a, b in zip(restored.weights, model.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
