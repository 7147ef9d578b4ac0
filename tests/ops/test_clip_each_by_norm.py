"""`clip_each_by_norm` against NumPy: each tensor g becomes g * c / max(||g||_2, c)."""

import keras
import numpy as np
from keras import ops

from keras_ssl.ops._multi_tensor import clip_each_by_norm


def _expected(g, c):
    g = g.astype("float64")
    return g * c / max(np.sqrt(np.sum(g**2)), c)


def test_each_tensor_is_scaled_to_at_most_the_clip_norm():
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (7, 1, 3), (2, 2), (6, 6)]
    scales = [0.1, 10.0, 1.0, 0.0, 3.0]  # norms below, above and around c; one zero tensor
    arrays = [
        (s * rng.normal(size=shape)).astype("float32")
        for shape, s in zip(shapes, scales, strict=True)
    ]
    c = 2.5
    norms = [np.linalg.norm(a) for a in arrays]
    assert min(n for n in norms if n > 0) < c < max(norms)
    inputs = [ops.convert_to_tensor(a) for a in arrays] + [None]
    clipped = clip_each_by_norm(inputs, c)
    assert len(clipped) == len(inputs) and clipped[-1] is None
    for a, out in zip(arrays, clipped[:-1], strict=True):
        out = ops.convert_to_numpy(out)
        assert out.shape == a.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, _expected(a, c), rtol=2e-6, atol=1e-7)
        assert np.linalg.norm(out) <= c * (1 + 1e-6)
    for a, x in zip(arrays, inputs[:-1], strict=True):  # the inputs are left as they were
        np.testing.assert_array_equal(ops.convert_to_numpy(x), a)


def test_mixed_dtypes_keep_their_dtype():
    rng = np.random.default_rng(1)
    big = (10.0 * rng.normal(size=(4, 8))).astype("float32")
    small = (0.01 * rng.normal(size=(16,))).astype("float32")
    tensors = [ops.convert_to_tensor(big), ops.cast(ops.convert_to_tensor(big), "bfloat16")]
    tensors.append(ops.cast(ops.convert_to_tensor(small), "bfloat16"))
    clipped = clip_each_by_norm(tensors, 1.0)
    assert [keras.backend.standardize_dtype(t.dtype) for t in clipped] == [
        "float32",
        "bfloat16",
        "bfloat16",
    ]
    np.testing.assert_allclose(ops.convert_to_numpy(clipped[0]), _expected(big, 1.0), rtol=2e-6)
    # bfloat16 has 8 bits of mantissa: compare at its resolution.
    as_float = [ops.convert_to_numpy(ops.cast(t, "float32")) for t in clipped[1:]]
    np.testing.assert_allclose(as_float[0], _expected(big, 1.0), rtol=2e-2, atol=1e-4)
    np.testing.assert_allclose(as_float[1], small, rtol=1e-2, atol=1e-6)  # below c: unchanged


def test_non_finite_gradients_give_nan_as_keras_does():
    g = np.array([1.0, np.inf, 2.0], "float32")
    (out,) = clip_each_by_norm([ops.convert_to_tensor(g)], 1.0)
    assert np.isnan(ops.convert_to_numpy(out)).any()


def test_a_float16_norm_past_its_range_still_clips():
    # ||g|| = 80,000 overflows float16 (65,504): the norm is taken in float32.
    g = np.full((4,), 40000.0, "float16")
    (out,) = clip_each_by_norm([ops.convert_to_tensor(g)], 1.0)
    out = ops.convert_to_numpy(out)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype("float64"), _expected(g, 1.0), rtol=1e-3)
