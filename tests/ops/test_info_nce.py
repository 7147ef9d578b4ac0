import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import info_nce_accuracy, info_nce_loss
from tests._support.gradients import assert_gradients_close, gradients, numeric_gradients


def _reference_info_nce(q, k_pos, queue, temperature):
    """He et al. 2020, eq. 1, one query at a time, normalising everything first."""

    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    q, k_pos, queue = unit(q), unit(k_pos), unit(queue)
    losses = []
    for i in range(len(q)):
        positive = np.exp(q[i] @ k_pos[i] / temperature)
        negatives = sum(np.exp(q[i] @ k / temperature) for k in queue)
        losses.append(-np.log(positive / (positive + negatives)))
    return np.mean(losses)


@pytest.mark.parametrize(
    "n,k,d,temperature", [(1, 3, 4, 0.07), (5, 17, 8, 0.07), (5, 17, 8, 0.2), (3, 6, 5, 1.0)]
)
def test_equals_reference(n, k, d, temperature):
    rng = np.random.default_rng(n + k)
    q = rng.normal(size=(n, d)).astype("float32")
    k_pos = rng.normal(size=(n, d)).astype("float32")
    queue = rng.normal(size=(k, d)).astype("float32")
    got = float(info_nce_loss(q, k_pos, queue, temperature=temperature))
    np.testing.assert_allclose(got, _reference_info_nce(q, k_pos, queue, temperature), rtol=1e-5)


def test_default_temperature_is_moco_v2():
    rng = np.random.default_rng(3)
    q, k_pos = rng.normal(size=(2, 2, 6)).astype("float32")
    queue = rng.normal(size=(9, 6)).astype("float32")
    expected = _reference_info_nce(q, k_pos, queue, 0.2)
    np.testing.assert_allclose(float(info_nce_loss(q, k_pos, queue)), expected, rtol=1e-5)


def test_inputs_are_normalised():
    rng = np.random.default_rng(4)
    q, k_pos = rng.normal(size=(2, 4, 6)).astype("float32")
    queue = rng.normal(size=(10, 6)).astype("float32")
    loss = float(info_nce_loss(q, k_pos, queue))
    scaled = float(info_nce_loss(3.0 * q, 0.1 * k_pos, 7.0 * queue))
    np.testing.assert_allclose(scaled, loss, rtol=1e-5)


def test_aligned_positive_beats_random_and_is_accurate():
    eye = np.eye(8, dtype="float32")
    q = eye[:4]
    queue = np.concatenate([eye[4:], -eye[4:]])  # orthogonal to every query
    aligned = float(info_nce_loss(q, q, queue, temperature=0.2))
    # Closed form: the positive logit is 1/T, the 8 negatives are 0.
    np.testing.assert_allclose(aligned, -np.log(np.exp(5.0) / (np.exp(5.0) + 8)), rtol=1e-5)
    random_keys = np.random.default_rng(5).normal(size=(4, 8)).astype("float32")
    assert float(info_nce_loss(q, random_keys, queue, temperature=0.2)) > aligned + 1.0
    assert float(info_nce_accuracy(q, q, queue)) == 1.0
    # A query whose own key points away while a queue entry equals it: never right.
    assert float(info_nce_accuracy(q, -q, np.concatenate([q, queue]))) == 0.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32(dtype):
    rng = np.random.default_rng(6)
    q, k_pos = (ops.cast(x, dtype) for x in rng.normal(size=(2, 6, 16)).astype("float32"))
    queue = ops.cast(rng.normal(size=(32, 16)).astype("float32"), dtype)
    loss = info_nce_loss(q, k_pos, queue, temperature=0.05)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    rounded = [ops.convert_to_numpy(ops.cast(x, "float32")) for x in (q, k_pos, queue)]
    np.testing.assert_allclose(float(loss), _reference_info_nce(*rounded, 0.05), rtol=1e-4)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same"):
        info_nce_loss(np.ones((4, 3), "float32"), np.ones((5, 3), "float32"), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(K, D\)"):
        info_nce_loss(np.ones((4, 3), "float32"), np.ones((4, 3), "float32"), np.ones((2, 5)))


def test_gradients_equal_reference():
    # Through the query, its positive key and the queue alike (the op stops nothing; MoCo's
    # key encoder is outside it).
    rng = np.random.default_rng(4)
    q, k_pos = (rng.normal(size=(3, 4)).astype("float32") for _ in range(2))
    queue = rng.normal(size=(5, 4)).astype("float32")
    got = gradients(lambda *x: info_nce_loss(*x, temperature=0.2), q, k_pos, queue)
    expected = numeric_gradients(lambda *x: _reference_info_nce(*x, 0.2), q, k_pos, queue)
    assert_gradients_close(got, expected)
