import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.layers.layer_norm import LayerNormalization
from tests._support.gradients import gradients
from tests._support.weight_files import assert_weight_files_interchange

EPSILON = 1e-6


def _pair(shape, **kwargs):
    ours = LayerNormalization(epsilon=EPSILON, **kwargs)
    theirs = keras.layers.LayerNormalization(epsilon=EPSILON, **kwargs)
    for layer in (ours, theirs):
        layer.build(shape)
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=w.shape).astype("float32") for w in ours.weights]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def _numpy_layer_norm(x, gamma, beta):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPSILON) * gamma + beta


def _weighted_sum(layer, r, input_dtype="float32"):
    """`L(x, gamma, beta) = sum(layer(x) * r)`, the layer's weights taken as inputs and `x`
    cast to `input_dtype` on the way in."""

    def loss(x, gamma, beta):
        with keras.StatelessScope(state_mapping=[(layer.gamma, gamma), (layer.beta, beta)]):
            y = ops.cast(layer(ops.cast(x, input_dtype)), "float32")
            return ops.sum(y * ops.convert_to_tensor(r, "float32"))

    return loss


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 6), (2, 1, 3, 8)])
def test_equals_numpy_and_keras_layer_norm(shape):
    ours, theirs = _pair(shape)
    x = (np.random.default_rng(1).normal(size=shape) * 3 + 2).astype("float32")
    got = ops.convert_to_numpy(ours(x))
    gamma, beta = (w.astype(np.float64) for w in ours.get_weights())
    np.testing.assert_allclose(got, _numpy_layer_norm(x.astype(np.float64), gamma, beta), atol=1e-5)
    np.testing.assert_allclose(got, ops.convert_to_numpy(theirs(x)), atol=1e-5)


@pytest.mark.parametrize("compiled", [False, True])
def test_gradients_equal_finite_differences_and_keras_autodiff(compiled):
    # L = sum(y * R); central differences of the float64 NumPy forward are the reference.
    shape = (2, 3, 5)
    ours, theirs = _pair(shape)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=shape) * 2 + 1).astype("float32")
    gamma, beta = ours.get_weights()
    r = rng.normal(size=shape)

    def numpy_loss(x, gamma, beta):
        return float((_numpy_layer_norm(x, gamma, beta) * r).sum())

    expected = []
    args = [a.astype(np.float64) for a in (x, gamma, beta)]
    for i, a in enumerate(args):
        grad = np.zeros_like(a)
        for index in np.ndindex(a.shape):
            step = np.zeros_like(a)
            step[index] = 1e-6
            plus = [b + step if j == i else b for j, b in enumerate(args)]
            minus = [b - step if j == i else b for j, b in enumerate(args)]
            grad[index] = (numpy_loss(*plus) - numpy_loss(*minus)) / 2e-6
        expected.append(grad)

    got = gradients(_weighted_sum(ours, r), x, gamma, beta, compiled=compiled)
    keras_autodiff = gradients(_weighted_sum(theirs, r), x, gamma, beta)
    for ours_grad, reference, keras_grad in zip(got, expected, keras_autodiff, strict=True):
        np.testing.assert_allclose(ours_grad, reference, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours_grad, keras_grad, rtol=1e-4, atol=1e-5)


def test_mixed_precision_normalises_in_float32():
    shape = (4, 16)
    ours, theirs = _pair(shape, dtype="mixed_bfloat16")
    x = (np.random.default_rng(3).normal(size=shape) * 4 + 100).astype("float32")
    x16 = ops.cast(x, "bfloat16")
    y = ours(x16)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    gamma, beta = (w.astype(np.float64) for w in ours.get_weights())
    # Normalised in float32 (in bfloat16, x - mean would keep 2 of the 8 bits at a mean of
    # 100 and a spread of 4): only the output's own rounding to 8 bits remains.
    rounded = ops.convert_to_numpy(ops.cast(x16, "float32")).astype(np.float64)
    y = ops.convert_to_numpy(ops.cast(y, "float32"))
    np.testing.assert_allclose(y, _numpy_layer_norm(rounded, gamma, beta), rtol=8e-3, atol=1e-2)
    np.testing.assert_array_equal(y, ops.convert_to_numpy(ops.cast(theirs(x16), "float32")))

    r = np.random.default_rng(6).normal(size=shape).astype("float32")

    weights = ours.get_weights()
    got = gradients(_weighted_sum(ours, r, "bfloat16"), x, *weights)
    keras_autodiff = gradients(_weighted_sum(theirs, r, "bfloat16"), x, *weights)
    for ours_grad, keras_grad in zip(got, keras_autodiff, strict=True):
        assert np.all(np.isfinite(ours_grad))
        np.testing.assert_allclose(ours_grad, keras_grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kwargs", [{"axis": [1, 2]}, {"center": False}, {"scale": False}])
def test_other_configurations_equal_keras(kwargs):
    shape = (2, 3, 4)
    ours, theirs = _pair(shape, **kwargs)
    x = np.random.default_rng(4).normal(size=shape).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(theirs(x)), atol=1e-5
    )


def test_weight_files_interchange_with_keras_layer_norm(tmp_path):
    def model(norm):
        inputs = keras.Input((4,))
        return keras.Model(inputs, norm()(keras.layers.Dense(4)(norm()(inputs))))

    assert_weight_files_interchange(
        model, LayerNormalization, keras.layers.LayerNormalization, tmp_path, seed=5
    )


def test_config_round_trip():
    layer = LayerNormalization(epsilon=1e-6, name="n")
    assert type(layer).__name__ == "LayerNormalization"
    clone = LayerNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, LayerNormalization)
