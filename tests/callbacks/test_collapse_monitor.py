import math
import warnings

import keras
import numpy as np
import pytest

import keras_ssl
from keras_ssl.callbacks import CollapseMonitor
from keras_ssl.callbacks.collapse_monitor import CollapseWarning


def _images(n, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8, 1)).astype("float32")


def _backbone(collapsed, diverged=False):
    """A frozen backbone: constant output (collapsed), NaN output (diverged) or a random
    projection (healthy)."""
    if diverged:
        bias = keras.initializers.Constant(float("nan"))
    else:
        bias = "ones" if collapsed else "zeros"
    dense = keras.layers.Dense(
        16,
        kernel_initializer="zeros" if collapsed else keras.initializers.RandomNormal(seed=1),
        bias_initializer=bias,
    )
    backbone = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), dense])
    backbone.trainable = False
    return backbone


def _simclr(collapsed, diverged=False):
    model = keras_ssl.SimCLR(
        _backbone(collapsed, diverged),
        augmenter=keras_ssl.augment.SimCLRAugment.small_images(8, seed=0),
        projection_dim=4,
        hidden_dim=8,
    )
    model.compile(optimizer="adam")
    return model


def _fit(collapsed, monitor, epochs=3):
    model = _simclr(collapsed)
    return model.fit(_images(32, 1), batch_size=16, epochs=epochs, verbose=0, callbacks=[monitor])


def test_fires_on_a_collapsed_embedding_and_stops_fit():
    monitor = CollapseMonitor(_images(64), stop_on_collapse=True)
    with pytest.warns(CollapseWarning, match="effective rank") as record:
        history = _fit(True, monitor)
    assert len(history.history["loss"]) == 1  # stopped after the first epoch
    assert monitor.collapsed and "Training stopped" in monitor.message
    messages = [str(w.message) for w in record if w.category is CollapseWarning]
    assert len(messages) == 1 and "Try:" in messages[0]
    assert history.history["embedding_std"][0] < 1e-6
    assert history.history["effective_rank"][0] == pytest.approx(1.0, abs=1e-3)


def test_a_diverged_backbone_is_reported_not_measured():
    # NaN features: RankMe is NaN (its SVD used to raise), and NaN figures, which pass every
    # threshold, are a symptom of their own.
    monitor = CollapseMonitor(_images(64), stop_on_collapse=True)
    model = _simclr(collapsed=True, diverged=True)
    with pytest.warns(CollapseWarning, match="NaN or infinite: training has diverged"):
        history = model.fit(_images(32, 1), batch_size=16, epochs=3, verbose=0, callbacks=[monitor])
    assert len(history.history["loss"]) == 1 and monitor.collapsed
    assert math.isnan(history.history["effective_rank"][0])


def test_quiet_on_a_healthy_embedding():
    monitor = CollapseMonitor(_images(64), stop_on_collapse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        history = _fit(False, monitor, epochs=2)
    assert len(history.history["loss"]) == 2 and not monitor.collapsed
    assert history.history["effective_rank"][-1] > 5.0
    assert history.history["embedding_std"][-1] * math.sqrt(16) > 0.3


def test_dino_teacher_entropy_and_loss_at_ln_k():
    k = 32
    model = keras_ssl.DINO(
        keras_ssl.backbones.ConvNet(widths=(8,), input_channels=1),
        augmenter=keras_ssl.augment.DINOMultiCrop.small_images(8, num_local_crops=1, seed=0),
        output_dim=k, hidden_dim=16, bottleneck_dim=8,
    )  # fmt: skip
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0))
    monitor = CollapseMonitor(_images(32))
    monitor.set_model(model)
    figures = monitor.measure()
    # mean entropy of the teacher's distributions <= entropy of their mean <= ln K
    assert 0.0 <= figures["teacher_entropy"] <= figures["teacher_marginal_entropy"] + 1e-9
    assert figures["teacher_marginal_entropy"] <= math.log(k) + 1e-9
    healthy = {"embedding_std": 0.1, "effective_rank": 5.0}
    assert monitor.diagnose(healthy, {"loss": math.log(k) - 1.0}) == []
    stuck = monitor.diagnose(healthy, {"loss": math.log(k) + 1e-3})
    assert len(stuck) == 1 and "ln(out_dim)" in stuck[0]
    uniform = dict(healthy, teacher_entropy=math.log(k), teacher_marginal_entropy=math.log(k))
    assert "uniform" in monitor.diagnose(uniform)[0]
    one_hot = dict(healthy, teacher_entropy=0.0, teacher_marginal_entropy=0.0)
    assert "same prototype" in monitor.diagnose(one_hot)[0]


def test_bad_probe_batch():
    with pytest.raises(ValueError, match="at least 2 images"):
        CollapseMonitor(_images(1))


def test_use_teacher_without_a_teacher_is_refused_before_training():
    model = _simclr(False)
    monitor = CollapseMonitor(_images(8), use_teacher=True, every_n_epochs=3)
    with pytest.raises(ValueError, match="no EMA teacher"):
        model.fit(_images(32, 1), batch_size=16, epochs=3, verbose=0, callbacks=[monitor])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def test_dinov2_teacher_entropy_is_that_of_its_sinkhorn_targets():
    from keras_ssl.eval import distribution_entropy, extract_features
    from keras_ssl.ops import sinkhorn_knopp

    vit = keras_ssl.backbones.ViT(
        patch_size=4, hidden_dim=8, depth=1, num_heads=2, input_channels=1, pretrain_image_size=8
    )
    model = keras_ssl.DINOv2(vit, output_dim=16, hidden_dim=8, bottleneck_dim=4)
    model.compile(optimizer="adam")
    monitor = CollapseMonitor(_images(8), batch_size=8)
    monitor.set_model(model)
    figures = monitor.measure()
    logits = model.teacher_head(extract_features(model.teacher_backbone, _images(8)))
    temperature = float(keras.ops.convert_to_numpy(model.current_teacher_temperature()))
    targets = keras.ops.convert_to_numpy(sinkhorn_knopp(logits, temperature, num_iterations=3))
    expected = float(np.mean(distribution_entropy(targets)))
    np.testing.assert_allclose(figures["teacher_entropy"], expected, rtol=1e-5)
    centred = keras.ops.convert_to_numpy(keras.ops.softmax(logits / temperature))
    assert abs(float(np.mean(distribution_entropy(centred))) - expected) > 1e-3
