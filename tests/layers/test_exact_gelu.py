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


@pytest.mark.parametrize("compiled", [False, True])
def test_matches_the_erf_formula_and_its_derivative(compiled):
    value, derivative = _reference(X)
    error = np.abs(ops.convert_to_numpy(exact_gelu(X)) - value)
    # float32's 1 + erf(x / sqrt(2)) cancels for x < 0: an absolute error of a few ulp(1) * |x|
    # (torch's own GELU included); the tanh approximation would be off by up to 5e-4.
    assert np.all(error <= 3e-7 * np.maximum(np.abs(X), 1.0)), error.max()
    (grad,) = gradients(lambda x: ops.sum(exact_gelu(x)), X, compiled=compiled)
    np.testing.assert_allclose(grad, derivative, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_inputs_are_computed_in_float32_and_rounded_once(dtype):
    x = ops.cast(X[(X > -9) & (X < 9)], dtype)
    y = exact_gelu(x)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    rounded = ops.convert_to_numpy(ops.cast(x, "float32"))
    value, _ = _reference(rounded)
    # One 16-bit rounding of the result (bfloat16: 2^-8 relative), and float32's cancellation:
    # computed in bfloat16, 1 + erf would be 45% off at x = -3 and 0 below -3.5.
    error = np.abs(ops.convert_to_numpy(ops.cast(y, "float32")) - value)
    assert np.all(error <= 8e-3 * np.abs(value) + 3e-7 * np.abs(rounded) + 1e-7), error.max()


def test_integer_inputs_become_floatx():
    y = exact_gelu(np.array([-2, 0, 3], "int32"))
    assert keras.backend.standardize_dtype(y.dtype) == keras.config.floatx()
    value, _ = _reference(np.array([-2.0, 0.0, 3.0]))
    np.testing.assert_allclose(ops.convert_to_numpy(y), value, rtol=1e-6, atol=1e-7)


def test_layer_serialises_and_computes_the_function():
    layer = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ExactGELU()))
    assert isinstance(layer, ExactGELU)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(X)), ops.convert_to_numpy(exact_gelu(X)), rtol=0, atol=0
    )


def test_layer_passes_a_mask_through():
    seen = []

    class MaskSpy(keras.layers.Layer):
        def call(self, x, mask=None):
            seen.append(None if mask is None else ops.convert_to_numpy(mask))
            return x

    x = np.array([[[1.0, 2.0], [0.0, 0.0], [-1.0, 0.5]]], "float32")
    MaskSpy()(ExactGELU()(keras.layers.Masking(mask_value=0.0)(x)))
    np.testing.assert_array_equal(seen[0], [[True, False, True]])
