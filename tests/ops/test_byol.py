import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import byol_loss
from tests._support.gradients import gradients


def _reference_byol(p, z):
    """Grill et al. 2020, eq. 2: |p/|p| - z/|z||^2 per pair, averaged."""
    total = 0.0
    for p_i, z_i in zip(p.astype(np.float64), z.astype(np.float64), strict=True):
        total += np.sum((p_i / np.linalg.norm(p_i) - z_i / np.linalg.norm(z_i)) ** 2)
    return total / len(p)


@pytest.mark.parametrize("n,d", [(1, 3), (6, 16)])
def test_equals_reference(n, d):
    rng = np.random.default_rng(n)
    p = rng.normal(size=(n, d)).astype("float32")
    z = rng.normal(size=(n, d)).astype("float32")
    np.testing.assert_allclose(float(byol_loss(p, z)), _reference_byol(p, z), rtol=1e-5, atol=1e-6)


def test_extremes_and_scale_invariance():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(5, 8)).astype("float32")
    np.testing.assert_allclose(float(byol_loss(p, 2.5 * p)), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(byol_loss(p, -p)), 4.0, rtol=1e-6)
    orthogonal = np.stack([np.eye(8, dtype="float32")[0], np.eye(8, dtype="float32")[1]])
    np.testing.assert_allclose(float(byol_loss(orthogonal, orthogonal[::-1].copy())), 2.0)


def test_target_receives_no_gradient():
    rng = np.random.default_rng(2)
    p = rng.normal(size=(4, 6)).astype("float32")
    z = rng.normal(size=(4, 6)).astype("float32")
    grad_p, grad_z = gradients(byol_loss, p, z)
    assert np.all(grad_z == 0.0)
    assert np.abs(grad_p).sum() > 1e-3
    # d/dp of 2 - 2 p.z/(|p||z|) averaged over N rows, written out.
    p64, z64 = p.astype(np.float64), z.astype(np.float64)
    pn = np.linalg.norm(p64, axis=1, keepdims=True)
    zu = z64 / np.linalg.norm(z64, axis=1, keepdims=True)
    pu = p64 / pn
    expected = -2.0 / len(p) * (zu - np.sum(pu * zu, axis=1, keepdims=True) * pu) / pn
    np.testing.assert_allclose(grad_p, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32(dtype):
    rng = np.random.default_rng(3)
    p = ops.cast(rng.normal(size=(8, 16)).astype("float32"), dtype)
    z = ops.cast(rng.normal(size=(8, 16)).astype("float32"), dtype)
    loss = byol_loss(p, z)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    rounded = [ops.convert_to_numpy(ops.cast(x, "float32")) for x in (p, z)]
    np.testing.assert_allclose(float(loss), _reference_byol(*rounded), rtol=1e-5)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same"):
        byol_loss(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"))
