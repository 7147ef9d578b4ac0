import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.backbones.vit import ExactGELU
from keras_ssl.layers.exact_gelu import exact_gelu
from tests._support.gradients import gradients

# The tails too: erf saturates in float32 beyond |x| ~ 4.
X = np.concatenate([np.linspace(-9, 9, 181), [-30.0, -5.5, 5.5, 30.0]]).astype("float32")


def _phi(x):
    return 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x]))


def _reference(x):
    """x * Phi(x) and its derivative Phi(x) + x * phi(x), in float64."""
    x = x.astype(np.float64)
    density = np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)
    return x * _phi(x), _phi(x) + x * density


def test_matches_the_erf_formula_and_its_derivative():
    value, derivative = _reference(X)
    error = np.abs(ops.convert_to_numpy(exact_gelu(X)) - value)
    # float32's 1 + erf(x / sqrt(2)) cancels for x < 0: an absolute error of a few ulp(1) * |x|
    # (torch's own GELU included); the tanh approximation would be off by up to 5e-4.
    assert np.all(error <= 3e-7 * np.maximum(np.abs(X), 1.0)), error.max()
    (grad,) = gradients(lambda x: ops.sum(exact_gelu(x)), X)
    np.testing.assert_allclose(grad, derivative, rtol=1e-5, atol=1e-6)


def test_matches_keras_exact_gelu():
    x = np.random.default_rng(0).normal(scale=3.0, size=(64, 48)).astype("float32")
    ours = ops.convert_to_numpy(exact_gelu(x))
    theirs = ops.convert_to_numpy(ops.gelu(x, approximate=False))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_inputs_keep_their_dtype(dtype):
    y = exact_gelu(ops.cast(X[::4], dtype))
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    value, _ = _reference(X[::4])
    y = ops.convert_to_numpy(ops.cast(y, "float32"))
    np.testing.assert_allclose(y, value, rtol=2e-2, atol=2e-2)


def test_layer_serialises_and_computes_the_function():
    layer = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ExactGELU()))
    assert isinstance(layer, ExactGELU)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(X)), ops.convert_to_numpy(exact_gelu(X)), rtol=0, atol=0
    )
