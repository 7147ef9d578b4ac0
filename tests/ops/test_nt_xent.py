import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import contrastive_accuracy, nt_xent_loss
from tests._support.gradients import assert_gradients_close, gradients, numeric_gradients


def _reference_nt_xent(z_a, z_b, temperature):
    """Chen et al. 2020, eq. 1, written out with loops over the 2N anchors."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        numerator = np.exp(z[i] @ z[j] / temperature)
        denominator = sum(np.exp(z[i] @ z[k] / temperature) for k in range(n2) if k != i)
        total += -np.log(numerator / denominator)
    return total / n2


def _mislabelled_nt_xent(z_a, z_b, temperature):
    """The widely copied variant: drop the diagonal, then label row i with arange(N).repeat(2)."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    sim = z @ z.T / temperature
    off_diagonal = sim[~np.eye(n2, dtype=bool)].reshape(n2, n2 - 1)
    labels = np.tile(np.arange(n), 2)
    log_softmax = off_diagonal - np.log(np.exp(off_diagonal).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(n2), labels].mean()


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("n", [2, 7])
def test_equals_reference(n, temperature):
    rng = np.random.default_rng(n)
    z_a = rng.normal(size=(n, 5)).astype("float32")
    z_b = rng.normal(size=(n, 5)).astype("float32")
    expected = _reference_nt_xent(z_a, z_b, temperature)
    got = float(nt_xent_loss(z_a, z_b, temperature=temperature))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_is_not_the_mislabelled_variant():
    rng = np.random.default_rng(0)
    z_a = rng.normal(size=(6, 8)).astype("float32")
    z_b = z_a + 0.05 * rng.normal(size=(6, 8)).astype("float32")
    ours = float(nt_xent_loss(z_a, z_b, temperature=0.5))
    np.testing.assert_allclose(ours, _reference_nt_xent(z_a, z_b, 0.5), rtol=1e-5)
    # Nearly identical views: the true positives are the most similar pairs, so the
    # correct loss is low while the mislabelled one (wrong column for rows < N) is high.
    assert _mislabelled_nt_xent(z_a, z_b, 0.5) > ours + 0.5


def test_symmetric_in_views_and_invariant_to_scale():
    rng = np.random.default_rng(1)
    z_a = rng.normal(size=(4, 3)).astype("float32")
    z_b = rng.normal(size=(4, 3)).astype("float32")
    loss = float(nt_xent_loss(z_a, z_b))
    np.testing.assert_allclose(float(nt_xent_loss(z_b, z_a)), loss, rtol=1e-6)
    np.testing.assert_allclose(float(nt_xent_loss(3.0 * z_a, z_b)), loss, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32(dtype):
    rng = np.random.default_rng(2)
    z_a = rng.normal(size=(8, 16)).astype("float32")
    z_b = rng.normal(size=(8, 16)).astype("float32")
    low_a = ops.cast(z_a, dtype)
    low_b = ops.cast(z_b, dtype)
    loss = nt_xent_loss(low_a, low_b, temperature=0.05)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    # The reference on the rounded inputs: any loss of precision comes from the inputs only.
    rounded_a = ops.convert_to_numpy(ops.cast(low_a, "float32"))
    rounded_b = ops.convert_to_numpy(ops.cast(low_b, "float32"))
    expected = _reference_nt_xent(rounded_a, rounded_b, 0.05)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_contrastive_accuracy():
    z = np.eye(4, dtype="float32")
    assert float(contrastive_accuracy(z, z)) == 1.0
    # Second views in reversed order: every anchor's best match is a wrong image.
    assert float(contrastive_accuracy(z, z[::-1].copy())) == 0.0


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(np.zeros((4, 3), "float32"), np.zeros((5, 3), "float32"))
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent_loss(np.ones((1, 3), "float32"), np.ones((1, 3), "float32"))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_gradients_equal_reference(temperature):
    rng = np.random.default_rng(3)
    z_a, z_b = (rng.normal(size=(3, 4)).astype("float32") for _ in range(2))
    got = gradients(lambda a, b: nt_xent_loss(a, b, temperature=temperature), z_a, z_b)
    expected = numeric_gradients(lambda a, b: _reference_nt_xent(a, b, temperature), z_a, z_b)
    assert_gradients_close(got, expected)
