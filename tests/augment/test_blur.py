import keras
import numpy as np
import pytest

from keras_ssl.augment import GaussianBlur, _ops
from keras_ssl.augment._base import current_backend


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _blur_reference(image, sigma, kernel_size):
    radius = kernel_size // 2
    offsets = np.arange(-radius, radius + 1, dtype="float64")
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(k * padded[t : t + image.shape[0]] for t, k in enumerate(kernel))
    return sum(k * rows[:, t : t + image.shape[1]] for t, k in enumerate(kernel))


@pytest.mark.parametrize("channels", [1, 3])
def test_blur_matches_numpy_reflect_reference(channels):
    x = np.random.default_rng(0).uniform(size=(3, 9, 7, channels)).astype("float32")
    sigma = np.array([0.3, 1.0, 2.0], "float32")
    got = _np(_ops.gaussian_blur(current_backend(), keras.ops.convert_to_tensor(x), sigma, 5))
    for n in range(3):
        np.testing.assert_allclose(got[n], _blur_reference(x[n], sigma[n], 5), atol=1e-5)


def test_reflect_index_matches_numpy_pad():
    size = 4
    idx = np.arange(-7, size + 7)
    padded = np.pad(np.arange(size), 7, mode="reflect")
    np.testing.assert_array_equal(_ops.reflect_index(idx, size), padded)


def test_blur_layer_per_image_probability_and_range():
    x = np.repeat(np.random.uniform(size=(1, 8, 8, 3)).astype("float32"), 8, axis=0)
    y = _np(GaussianBlur(3, sigma=(0.1, 2.0), probability=1.0, seed=0)(x))
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert not np.allclose(y[0], y[1])  # per-image sigma
    np.testing.assert_allclose(_np(GaussianBlur(3, probability=0.0, seed=0)(x)), x)
    a = _np(GaussianBlur(5, probability=0.5, seed=4)(x))
    b = _np(GaussianBlur(5, probability=0.5, seed=4)(x))
    np.testing.assert_allclose(a, b)


def test_blur_rejects_even_kernel():
    with pytest.raises(ValueError):
        GaussianBlur(4)


def test_blur_takes_numpy_scalars():
    # `sigma=np.float32(1.0)` used to fail: only Python ints and floats were taken for one sigma.
    blur = GaussianBlur(np.int64(3), sigma=np.float32(1.0), probability=np.float32(1.0))
    assert (blur.kernel_size, blur.sigma, blur.probability) == (3, (1.0, 1.0), 1.0)
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    expected = _blur_reference(x[0], 1.0, 3)
    np.testing.assert_allclose(_np(blur(x))[0], expected, atol=1e-5)
    pair = GaussianBlur(3, sigma=(np.float32(0.5), np.float64(2.0)))
    assert pair.sigma == (0.5, 2.0)
