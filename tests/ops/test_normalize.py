"""`l2_normalize` against NumPy, values and gradients."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import l2_normalize
from tests._support.gradients import gradients
from tests._support.torch_counting import count_numbers_made_tensors


def _reference(x, axis, epsilon):
    return x / np.maximum(np.sqrt(np.sum(x * x, axis=axis, keepdims=True)), epsilon)


def _rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype("float32")
    x[1] = 0.0  # stays zero
    x[2] *= 1e-14  # a norm below epsilon: divided by epsilon
    return x


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_values_match_numpy(axis):
    x = _rows()
    np.testing.assert_allclose(
        ops.convert_to_numpy(l2_normalize(x, axis=axis)),
        _reference(x.astype("float64"), axis, 1e-12),
        rtol=1e-6,
        atol=1e-7,
    )
    assert np.all(ops.convert_to_numpy(l2_normalize(x))[1] == 0.0)


def test_tuple_axis_and_integer_input():
    x = np.arange(24, dtype="int32").reshape(2, 3, 4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(l2_normalize(x, axis=(1, 2))),
        _reference(x.astype("float64"), (1, 2), 1e-12),
        rtol=1e-6,
    )


def test_gradients_match_the_formula():
    # d(x / |x|) . g = (g - u (u . g)) / |x| for |x| > epsilon, u = x / |x|.
    x = _rows()[[0, 3, 4]]
    g = np.random.default_rng(1).normal(size=x.shape).astype("float32")
    (grad,) = gradients(lambda t: ops.sum(l2_normalize(t) * ops.convert_to_tensor(g)), x)
    norm = np.linalg.norm(x.astype("float64"), axis=-1, keepdims=True)
    u = x / norm
    expected = (g - u * np.sum(u * g, axis=-1, keepdims=True)) / norm
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_no_python_number_becomes_a_tensor():
    if keras.backend.backend() != "torch":
        pytest.skip("about PyTorch's eager ops (on CUDA each such tensor is a host copy)")
    x = ops.convert_to_tensor(_rows())
    with count_numbers_made_tensors() as count:
        l2_normalize(x)
    assert count[0] == 0


def test_gradient_at_a_zero_vector_is_finite():
    # d/dx of x / sqrt(max(|x|^2, eps^2)) at x = 0 is g / eps (PyTorch's `F.normalize`).
    x = _rows()[[0, 1]]
    g = np.random.default_rng(2).normal(size=x.shape).astype("float32")
    (grad,) = gradients(lambda t: ops.sum(l2_normalize(t) * ops.convert_to_tensor(g)), x)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[1], g[1] / 1e-12, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_inputs_are_normalised_in_float32(dtype):
    # A norm of 300 squares past float16's 65,504, and epsilon rounds to 0 in 16 bits.
    x = np.array([[300.0, 300.0, 0.0], [0.0, 0.0, 0.0], [3.0, -4.0, 0.0]], "float32")
    out = l2_normalize(ops.cast(x, dtype))
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    expected = ops.convert_to_numpy(ops.cast(_reference(x, -1, 1e-12), dtype))
    np.testing.assert_array_equal(ops.convert_to_numpy(ops.cast(out, "float32")), expected)
