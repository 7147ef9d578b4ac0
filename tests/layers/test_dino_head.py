import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.layers import DINOHead
from tests._support.gradients import gradients

_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _small_head(**kwargs):
    config = {"output_dim": 12, "hidden_dim": 10, "bottleneck_dim": 6}
    config.update(kwargs)
    return DINOHead(**config)


def _inputs(n=5, d=7, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype("float32")


def _reference_forward(head, x):
    """Linear-GELU(erf)-Linear-GELU-Linear, L2 normalise, then x @ (g * V / |V|_col)."""
    h = x.astype(np.float64)
    dense = [w for w in head.mlp if isinstance(w, keras.layers.Dense)]
    for i, layer in enumerate(dense):
        kernel, bias = (ops.convert_to_numpy(w).astype(np.float64) for w in layer.weights)
        h = h @ kernel + bias
        if i < len(dense) - 1:
            h = _gelu(h)
    h = h / np.linalg.norm(h, axis=-1, keepdims=True)
    v = ops.convert_to_numpy(head.last_layer_v).astype(np.float64)
    g = ops.convert_to_numpy(head.last_layer_g).astype(np.float64)
    return h @ (g * v / np.linalg.norm(v, axis=0, keepdims=True))


def test_output_shape_and_forward_equals_reference():
    head = _small_head()
    x = _inputs()
    y = head(x)
    assert tuple(y.shape) == (5, 12)
    assert tuple(head.compute_output_shape((5, 7))) == (5, 12)
    np.testing.assert_allclose(
        ops.convert_to_numpy(y), _reference_forward(head, x), rtol=1e-4, atol=1e-6
    )


def test_initialisation():
    head = DINOHead(output_dim=64, hidden_dim=256, bottleneck_dim=32)
    head.build((None, 256))
    kernel, bias = (ops.convert_to_numpy(w) for w in head.mlp[0].weights)
    assert np.all(bias == 0.0)
    assert np.abs(kernel).max() <= 2 * 0.02 + 1e-6  # truncated at two standard deviations
    assert 0.015 < kernel.std() < 0.02
    v = ops.convert_to_numpy(head.last_layer_v)
    assert np.abs(v).max() <= 1 / math.sqrt(32)
    np.testing.assert_array_equal(ops.convert_to_numpy(head.last_layer_g), np.ones(64))


def test_normalised_last_layer_and_bottleneck():
    head = _small_head()
    x = _inputs()
    head(x)
    # Perturb V: the effective columns keep unit norm whatever V's scale.
    head.last_layer_v.assign(3.0 * ops.convert_to_numpy(head.last_layer_v))
    kernel = ops.convert_to_numpy(head.last_layer_kernel())
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), np.ones(12), rtol=1e-5)
    bottleneck = ops.convert_to_numpy(head.bottleneck(x))
    assert bottleneck.shape == (5, 6)
    np.testing.assert_allclose(np.linalg.norm(bottleneck, axis=-1), np.ones(5), rtol=1e-5)
    # Logits are cosines between the bottleneck and unit prototypes.
    assert np.abs(ops.convert_to_numpy(head(x))).max() <= 1.0 + 1e-5


def test_weight_norm_gradients_equal_the_formula():
    # W = g V / |V|_col, n = |V|_col. For a loss sum(W * R):
    #   dL/dg = sum(R * V, 0) / n,    dL/dV = g / n * (R - V * sum(R * V, 0) / n^2).
    head = _small_head(norm_last_layer=False)
    head.build((None, 7))
    rng = np.random.default_rng(3)
    v = rng.normal(size=(6, 12)).astype("float32")
    g = rng.uniform(0.5, 2.0, size=(12,)).astype("float32")
    r = rng.normal(size=(6, 12))

    def loss(v, g):
        with keras.StatelessScope(state_mapping=[(head.last_layer_v, v), (head.last_layer_g, g)]):
            return ops.sum(head.last_layer_kernel() * ops.convert_to_tensor(r, "float32"))

    dv, dg = gradients(loss, v, g)
    v64, g64 = v.astype(np.float64), g.astype(np.float64)
    n = np.linalg.norm(v64, axis=0)
    c = (r * v64).sum(axis=0)
    np.testing.assert_allclose(dg, c / n, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dv, g64 / n * (r - v64 * c / n**2), rtol=1e-4, atol=1e-6)


def test_g_frozen_only_with_norm_last_layer():
    frozen = _small_head()
    frozen.build((None, 7))
    assert not frozen.last_layer_g.trainable
    assert all(w is not frozen.last_layer_g for w in frozen.trainable_weights)
    assert [w.path for w in frozen.last_layer_variables] == [frozen.last_layer_v.path]
    free = _small_head(norm_last_layer=False)
    free.build((None, 7))
    assert free.last_layer_g.trainable
    assert {w.path for w in free.last_layer_variables} == {
        free.last_layer_v.path,
        free.last_layer_g.path,
    }
    trainable = {w.path for w in free.trainable_weights}
    assert {w.path for w in free.last_layer_variables} <= trainable
    # Hidden layers: 3 linear layers with bias + V + g.
    assert len(free.trainable_weights) == 8


@pytest.mark.parametrize("num_layers,use_bn", [(1, False), (2, True)])
def test_variants(num_layers, use_bn):
    head = _small_head(num_layers=num_layers, use_bn=use_bn)
    y = head(_inputs(), training=True)
    assert tuple(y.shape) == (5, 12)
    dense = [w for w in head.mlp if isinstance(w, keras.layers.Dense)]
    assert len(dense) == num_layers
    assert dense[-1].units == 6
    has_bn = any(isinstance(w, keras.layers.BatchNormalization) for w in head.mlp)
    assert has_bn == use_bn


def test_get_config_round_trip():
    head = _small_head(num_layers=2, use_bn=True, norm_last_layer=False, name="dino_head")
    config = head.get_config()
    clone = DINOHead.from_config(config)
    assert clone.get_config() == config
    assert config["bottleneck_dim"] == 6 and config["norm_last_layer"] is False
    with pytest.raises(ValueError, match="num_layers"):
        DINOHead(num_layers=0)


def test_keras_save_and_load(tmp_path):
    inputs = keras.Input((7,))
    outputs = _small_head(name="head")(keras.layers.Dense(7, name="trunk")(inputs))
    model = keras.Model(inputs, outputs)
    x = _inputs(seed=1)
    expected = ops.convert_to_numpy(model(x))
    path = str(tmp_path / "dino_head.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(restored(x)), expected)
    head = restored.get_layer("head")
    assert isinstance(head, DINOHead)
    assert not head.last_layer_g.trainable


def test_batch_norm_statistics_skip_masked_out_rows():
    # Padding rows (here huge values) must not move the hidden BN's batch statistics: the
    # valid rows' outputs and the moving statistics equal those of the valid rows alone.
    inputs = np.random.default_rng(0).normal(size=(6, 8)).astype("float32")
    padded = np.concatenate([inputs, np.full((3, 8), 1e3, "float32")])
    mask = np.array([True] * 6 + [False] * 3)
    reference, head = _small_head(num_layers=2, use_bn=True), _small_head(num_layers=2, use_bn=True)
    reference.build((None, 8))
    head.build((None, 8))
    head.set_weights(reference.get_weights())
    expected = ops.convert_to_numpy(reference(inputs, training=True))
    got = ops.convert_to_numpy(head(padded, training=True, valid=ops.convert_to_tensor(mask)))
    np.testing.assert_allclose(got[:6], expected, rtol=1e-5, atol=1e-5)
    moving = [w for w in reference.non_trainable_weights if "moving" in w.path]
    assert len(moving) == 2
    pairs = zip(head.non_trainable_weights, reference.non_trainable_weights, strict=True)
    for ours, theirs in pairs:
        ours, theirs = ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_weight_norm_in_float32_under_mixed_precision(monkeypatch):
    kernels = []
    original = DINOHead.last_layer_kernel

    def spy(self):
        kernel = original(self)
        kernels.append(keras.backend.standardize_dtype(kernel.dtype))
        return kernel

    monkeypatch.setattr(DINOHead, "last_layer_kernel", spy)
    head = _small_head(dtype="mixed_bfloat16")
    x = _inputs()
    out = head(x)
    assert kernels == ["float32"]
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    # The hidden layers and the product run in bfloat16 (8-bit significands): unit-norm
    # features against unit-norm columns, logits in [-1, 1], within a few bfloat16 steps.
    got = ops.convert_to_numpy(ops.cast(out, "float32"))
    np.testing.assert_allclose(got, _reference_forward(head, x), rtol=0, atol=0.03)
