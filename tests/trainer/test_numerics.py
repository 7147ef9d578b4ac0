"""Numerics: float32 losses under mixed precision, the papers' smallest temperatures for 200
steps, and the `TerminateOnNaN` guard that names the term that went bad.

References are NumPy in float64, from the papers' formulas.
"""

import types
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_ssl
from keras_ssl.backbones import ConvNet, ViT
from keras_ssl.callbacks.terminate_on_nan import NonFiniteLossWarning, TerminateOnNaN
from tests._support.dtype_policy import global_dtype_policy

SIZE = 8


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _half_logits(shape, scale, dtype, seed=0):
    """Logits large enough that `logits / 0.04` overflows float16 (max 65504)."""
    values = np.random.default_rng(seed).uniform(-1, 1, size=shape) * scale
    return ops.cast(ops.convert_to_tensor(values.astype("float32")), dtype), values


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dino_and_ibot_softmaxes_run_in_float32(dtype):
    # 3000 / 0.04 = 75000 is infinite in float16: the ops must cast before dividing.
    student, student_np = _half_logits((2, 4, 32), 3000.0, dtype, seed=1)
    teacher, teacher_np = _half_logits((2, 4, 32), 3000.0, dtype, seed=2)
    student_np = ops.convert_to_numpy(ops.cast(student, "float32")).astype("float64")
    teacher_np = ops.convert_to_numpy(ops.cast(teacher, "float32")).astype("float64")
    loss = keras_ssl.ops.dino_loss(
        [student[0], student[1]], [teacher[0], teacher[1]], np.zeros(32, "float32"), 0.1, 0.04
    )
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    teacher_probs = np.exp(_log_softmax(teacher_np / 0.04))
    student_logp = _log_softmax(student_np / 0.1)
    expected = np.mean(
        [-(teacher_probs[i] * student_logp[v]).sum(-1).mean() for i, v in ((0, 1), (1, 0))]
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)

    masks = np.zeros((2, 4), bool)
    masks[:, :2] = True
    ibot = keras_ssl.ops.ibot_patch_loss(
        student, ops.convert_to_tensor(teacher_probs.astype("float32")), masks, 0.1
    )
    assert keras.backend.standardize_dtype(ibot.dtype) == "float32"
    per_patch = -(teacher_probs * student_logp).sum(-1)  # (2, 4)
    expected_ibot = np.mean([per_patch[b][masks[b]].mean() for b in range(2)])
    np.testing.assert_allclose(float(ibot), expected_ibot, rtol=1e-4)

    # A weight-normalised DINO head's logits lie in [-1, 1]: Sinkhorn-Knopp in float32.
    q = keras_ssl.ops.sinkhorn_knopp(ops.cast(teacher[0] / 3000.0, dtype), 0.04, 3)
    assert keras.backend.standardize_dtype(q.dtype) == "float32"
    assert np.all(np.isfinite(ops.convert_to_numpy(q)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_contrastive_losses_run_in_float32(dtype):
    # Embeddings of magnitude 300: their squares overflow float16 unless normalised in float32.
    z_a, a = _half_logits((6, 16), 300.0, dtype, seed=3)
    z_b, b = _half_logits((6, 16), 300.0, dtype, seed=4)
    queue, _ = _half_logits((10, 16), 300.0, dtype, seed=5)
    a = ops.convert_to_numpy(ops.cast(z_a, "float32")).astype("float64")
    b = ops.convert_to_numpy(ops.cast(z_b, "float32")).astype("float64")
    k = ops.convert_to_numpy(ops.cast(queue, "float32")).astype("float64")

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    nt_xent = keras_ssl.ops.nt_xent_loss(z_a, z_b, temperature=0.1)
    z = unit(np.concatenate([a, b]))
    sims = z @ z.T / 0.1
    np.fill_diagonal(sims, -np.inf)
    positives = np.concatenate([np.arange(6, 12), np.arange(6)])
    expected = -np.mean(_log_softmax(sims)[np.arange(12), positives])
    np.testing.assert_allclose(float(nt_xent), expected, rtol=1e-4)

    info_nce = keras_ssl.ops.info_nce_loss(z_a, z_b, queue, temperature=0.2)
    qn, kn, negatives = unit(a), unit(b), unit(k)
    logits = np.concatenate([(qn * kn).sum(1, keepdims=True), qn @ negatives.T], axis=1) / 0.2
    np.testing.assert_allclose(float(info_nce), -np.mean(_log_softmax(logits)[:, 0]), rtol=1e-4)

    byol = keras_ssl.ops.byol_loss(z_a, z_b)
    expected_byol = np.mean(2 - 2 * (unit(a) * unit(b)).sum(1))
    np.testing.assert_allclose(float(byol), expected_byol, rtol=1e-3, atol=1e-5)

    koleo = keras_ssl.ops.koleo_loss(z_a)
    for value in (nt_xent, info_nce, byol, koleo):
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(float(value))


def _convnet():
    return ConvNet(widths=(4, 8), input_channels=1)


def _vit():
    return ViT(
        patch_size=4,
        hidden_dim=16,
        depth=1,
        num_heads=2,
        input_channels=1,
        pretrain_image_size=SIZE,
    )


_DINO_TINY = dict(output_dim=32, hidden_dim=16, bottleneck_dim=8)
# The smallest temperatures the papers use: SimCLR 0.1 (large batches), MoCo-v2 0.2,
# DINO / iBOT / DINOv2 teacher 0.04 (warm-up start, held here) and student 0.1.
_SMALLEST_TEMPERATURES = dict(
    student_temperature=0.1,
    warmup_teacher_temperature=0.04,
    teacher_temperature=0.04,
    warmup_teacher_temperature_epochs=0,
)


def _method(name):
    if name == "simclr":
        return keras_ssl.SimCLR(_convnet(), projection_dim=8, hidden_dim=16, temperature=0.1)
    if name == "mocov2":
        return keras_ssl.MoCoV2(
            _convnet(),
            projection_dim=8,
            hidden_dim=16,
            queue_size=64,
            temperature=0.2,
            momentum=0.99,
        )
    if name == "byol":
        return keras_ssl.BYOL(_convnet(), projection_dim=8, hidden_dim=16)
    if name == "dino":
        return keras_ssl.DINO(_convnet(), **_DINO_TINY, **_SMALLEST_TEMPERATURES)
    if name == "dinov2":
        return keras_ssl.DINOv2(
            _vit(), centering="centering", seed=0, **_DINO_TINY, **_SMALLEST_TEMPERATURES
        )
    raise ValueError(name)


METHODS = ("simclr", "mocov2", "byol", "dino", "dinov2")


def _views(n, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(size=(n, SIZE, SIZE, 1))
    return tuple(
        np.clip(base + 0.1 * rng.normal(size=base.shape), 0, 1).astype("float32") for _ in range(2)
    )


@pytest.fixture
def mixed_bfloat16():
    with global_dtype_policy("mixed_bfloat16"):
        yield


@pytest.mark.parametrize("name", METHODS)
def test_loss_is_float32_and_finite_under_mixed_bfloat16(name, mixed_bfloat16):
    model = _method(name)
    assert model.backbone.compute_dtype == "bfloat16"
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0))
    model.optimizer.build(model.trainable_variables)
    views = tuple(ops.convert_to_tensor(v) for v in _views(8))
    features = model.backbone(views[0])
    assert keras.backend.standardize_dtype(features.dtype) == "bfloat16"  # the policy is on
    loss, logs = model.compute_ssl_loss(views, training=True)
    for value in (loss, *logs.values()):
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert np.isfinite(float(value))
    # The state the losses write stays float32 too.
    for variable in ("center", "patch_center", "queue"):
        if hasattr(model, variable):
            assert getattr(model, variable).dtype == "float32"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_fit_logs_finite_float32_losses(policy):
    # mixed_float16 trains under Keras's loss scaling; on JAX's CPU the ViT's attention
    # then runs in float32 (XLA:CPU has no float16 product accumulating in float32, which
    # Keras's attention op asks for in its gradient). This tiny head's bottleneck has a
    # norm of ~3e-4 at init, so its normalisation scales gradients up ~3e3x: from Keras's
    # initial loss scale (2^15) the float16 gradients overflow and the steps are skipped
    # until the scale falls to 8. The demo recipes step at 2^15 from the first batch.
    with global_dtype_policy(policy):
        model = _method("dinov2")
        optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.0, clipnorm=3.0)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=1.0)
        model.compile(optimizer=optimizer)
        history = model.fit(_views(16), batch_size=8, epochs=2, verbose=0).history
    assert int(model.optimizer.iterations) == 4  # every step taken (none skipped)
    for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
        assert np.all(np.isfinite(history[name])), (name, history[name])
    assert all(w.dtype == "float32" for w in model.trainable_weights)  # float32 master weights


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_200_steps_at_the_smallest_temperatures_stay_finite(name):
    model = _method(name)
    optimizer = keras.optimizers.AdamW(3e-3, weight_decay=0.0, clipnorm=3.0)
    model.compile(optimizer=optimizer)
    guard = TerminateOnNaN(raise_error=True, check_every=50)
    history = model.fit(
        _views(8 * 200), batch_size=8, epochs=1, shuffle=False, callbacks=[guard], verbose=0
    ).history
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 200
    assert guard.report is None
    assert all(np.all(np.isfinite(values)) for values in history.values()), history
    for weight in model.weights:
        assert np.all(np.isfinite(ops.convert_to_numpy(weight))), weight.path


def _guard_with_model():
    guard = TerminateOnNaN()
    model = types.SimpleNamespace(stop_training=False)
    guard.set_model(model)
    return guard, model


def test_guard_names_the_term_that_went_bad():
    guard, model = _guard_with_model()
    guard.on_train_begin()
    guard.on_epoch_begin(2)
    finite = {"loss": 1.0, "dino_loss": 0.5, "ibot_loss": 0.4, "koleo_loss": 0.1}
    guard.on_train_batch_end(0, finite)
    assert guard.report is None and not model.stop_training
    bad = dict(finite, loss=float("nan"), ibot_loss=float("inf"))
    with pytest.warns(
        NonFiniteLossWarning, match=r"Non-finite ibot_loss, loss at epoch 3, batch 5"
    ):
        guard.on_train_batch_end(4, bad)
    assert model.stop_training
    assert guard.report["terms"] == ["ibot_loss", "loss"]  # the term first, the total last
    assert guard.report["epoch"] == 2 and guard.report["batch"] == 4
    assert guard.report["values"]["koleo_loss"] == 0.1

    raising = TerminateOnNaN(monitor=["koleo_loss"], raise_error=True)
    raising.set_model(types.SimpleNamespace(stop_training=False))
    raising.on_train_batch_end(0, dict(finite, loss=float("nan")))  # loss is not watched
    with pytest.raises(FloatingPointError, match="koleo_loss"):
        raising.on_train_batch_end(1, dict(finite, koleo_loss=float("-inf")))


class _TermGoesBad(keras_ssl.ContrastiveTrainer):
    """Logs a healthy term and one that turns -inf at the 4th step, NaN after (no gradient)."""

    metric_names = ("healthy_term", "fragile_term")

    def compute_ssl_loss(self, views, training=True):
        a, b = self.encode_views(self.backbone, views, training=training)
        healthy = ops.mean(ops.square(a - b))
        step = ops.cast(self.optimizer.iterations, "float32")
        fragile = ops.stop_gradient(ops.log(3.0 - step))  # log(negative) = NaN from step 4
        return healthy + fragile, {"healthy_term": healthy, "fragile_term": fragile}


def test_guard_stops_a_fit_and_reports_the_term():
    model = _TermGoesBad(_convnet())
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    guard = TerminateOnNaN()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(_views(8 * 6), batch_size=8, epochs=2, verbose=0, callbacks=[guard])
    messages = [str(w.message) for w in caught if issubclass(w.category, NonFiniteLossWarning)]
    assert len(messages) == 1 and "fragile_term, loss at epoch 1, batch 4" in messages[0]
    assert guard.report["terms"] == ["fragile_term", "loss"]
    assert np.isfinite(guard.report["values"]["healthy_term"])
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 4  # stopped there
    assert len(history.history["loss"]) == 1
