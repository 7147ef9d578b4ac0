import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import koleo_loss
from tests._support.gradients import assert_gradients_close, gradients, numeric_gradients


def _reference_koleo(x, eps=1e-8):
    """Sablayrolles et al. 2019: -1/n sum_i log(min_{j != i} |x_i - x_j| + eps), unit vectors."""
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    distances = [
        min(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i) for i in range(len(x))
    ]
    return -np.mean(np.log(np.asarray(distances) + eps))


@pytest.mark.parametrize("n,d", [(2, 3), (16, 8)])
def test_equals_reference(n, d):
    x = np.random.default_rng(n).normal(size=(n, d)).astype("float32")
    np.testing.assert_allclose(float(koleo_loss(x)), _reference_koleo(x), rtol=1e-5)


def test_spread_points_have_lower_loss():
    rng = np.random.default_rng(0)
    clustered = (np.array([1.0, 0, 0]) + 0.05 * rng.normal(size=(8, 3))).astype("float32")
    spread = rng.normal(size=(8, 3)).astype("float32")
    assert float(koleo_loss(spread)) < float(koleo_loss(clustered)) - 1.0


def test_duplicates_are_finite_with_finite_gradient():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4)).astype("float32")
    x[1] = 2.0 * x[0]  # the same direction: distance 0 after normalisation
    loss = float(koleo_loss(x))
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, _reference_koleo(x), rtol=1e-4)
    assert np.all(np.isfinite(gradients(koleo_loss, x)[0]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32(dtype):
    x = ops.cast(np.random.default_rng(2).normal(size=(6, 8)).astype("float32"), dtype)
    loss = koleo_loss(x)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    rounded = ops.convert_to_numpy(ops.cast(x, "float32"))
    np.testing.assert_allclose(float(loss), _reference_koleo(rounded), rtol=1e-4)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        koleo_loss(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match=r"\(n, D\)"):
        koleo_loss(np.ones((3,), "float32"))


def test_gradients_equal_reference():
    x = np.random.default_rng(5).normal(size=(5, 3)).astype("float32")
    assert_gradients_close(gradients(koleo_loss, x), numeric_gradients(_reference_koleo, x))
