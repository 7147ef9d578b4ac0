import colorsys

import keras
import numpy as np
import pytest

from keras_ssl.augment import ColorJitter, RandomGrayscale, Solarize, _ops
from keras_ssl.augment._base import current_backend

B = current_backend()
WEIGHTS = np.array([0.299, 0.587, 0.114])


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _t(x):
    return keras.ops.convert_to_tensor(np.asarray(x, dtype="float32"))


def _images(n=3, size=6, channels=3, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, channels)).astype("float32")


def _gray(x):
    return (x[..., :3] @ WEIGHTS)[..., None] if x.shape[-1] == 3 else x


def test_brightness_contrast_saturation_match_numpy():
    x = _images()
    f = np.array([0.3, 1.0, 1.7], "float32")
    fb = f[:, None, None, None]
    got = _np(_ops.adjust_brightness(B, _t(x), _t(f)))
    np.testing.assert_allclose(got, np.clip(x * fb, 0, 1), atol=1e-6)

    mean = _gray(x).mean(axis=(1, 2, 3), keepdims=True)
    got = _np(_ops.adjust_contrast(B, _t(x), _t(f)))
    np.testing.assert_allclose(got, np.clip(fb * x + (1 - fb) * mean, 0, 1), atol=1e-5)

    got = _np(_ops.adjust_saturation(B, _t(x), _t(f)))
    np.testing.assert_allclose(got, np.clip(fb * x + (1 - fb) * _gray(x), 0, 1), atol=1e-5)


def test_contrast_single_channel_matches_numpy():
    x = _images(channels=1)
    f = np.array([0.5, 1.2, 2.0], "float32")[:, None, None, None]
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    got = _np(_ops.adjust_contrast(B, _t(x), _t(f[:, 0, 0, 0])))
    np.testing.assert_allclose(got, np.clip(f * x + (1 - f) * mean, 0, 1), atol=1e-5)


def test_hue_matches_colorsys():
    pixels = np.array(
        [
            [0.9, 0.2, 0.1],
            [0.1, 0.8, 0.3],
            [0.2, 0.3, 0.7],
            [0.5, 0.5, 0.5],
            [1.0, 1.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.3, 0.1, 0.6],
            [0.7, 0.9, 0.95],
        ],
        dtype="float32",
    )
    shifts = np.array([0.1, -0.3, 0.5], "float32")
    x = np.broadcast_to(pixels.reshape(1, 2, 4, 3), (3, 2, 4, 3)).copy()
    got = _np(_ops.adjust_hue(B, _t(x), _t(shifts)))
    for n, shift in enumerate(shifts):
        for idx, (r, g, b) in enumerate(pixels):
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            expected = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
            np.testing.assert_allclose(got[n].reshape(-1, 3)[idx], expected, atol=1e-5)


def test_grayscale_and_solarize():
    x = _images(n=4)
    gray = _np(RandomGrayscale(1.0, seed=0)(x))
    np.testing.assert_allclose(gray, np.repeat(_gray(x), 3, axis=-1), atol=1e-6)
    np.testing.assert_allclose(_np(RandomGrayscale(0.0, seed=0)(x)), x)
    sol = _np(Solarize(0.5, probability=1.0, seed=0)(x))
    np.testing.assert_allclose(sol, np.where(x >= 0.5, 1 - x, x), atol=1e-7)
    x1 = _images(n=2, channels=1)
    np.testing.assert_allclose(_np(RandomGrayscale(1.0, seed=0)(x1)), x1)


def test_a_solarize_threshold_off_the_unit_scale_is_refused():
    # 128, torchvision's threshold on uint8 images, would invert nothing in [0, 1] images.
    with pytest.raises(ValueError, match=r"\[0, 1\].*threshold=128.*threshold=0\.502"):
        Solarize(threshold=128)
    with pytest.raises(ValueError, match="threshold=-0.1"):
        Solarize(threshold=-0.1)


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_per_image_range_dtype(channels):
    x = np.repeat(_images(n=1, size=8, channels=channels), 6, axis=0)
    y = _np(ColorJitter(0.8, 0.8, 0.8, 0.2, probability=1.0, seed=1)(x))
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert all(not np.allclose(y[i], y[j]) for i in range(6) for j in range(i + 1, 6))


def test_jitter_probability_zero_is_identity():
    x = _images(n=2, size=4)
    np.testing.assert_allclose(_np(ColorJitter(0.5, 0.5, probability=0.0, seed=0)(x)), x)


def test_jitter_random_order_per_image():
    # Fixed factors (ranges of zero width) whose result depends on the order, thanks to the
    # clipping: brightness x2 then contrast 0, or contrast 0 then brightness x2.
    x = np.repeat(_images(n=1, size=4), 24, axis=0)
    y = _np(ColorJitter(brightness=(2.0, 2.0), contrast=(0.0, 0.0), seed=3)(x))
    bright_first = np.full_like(x[0], _gray(np.clip(2 * x[0], 0, 1)).mean())
    contrast_first = np.full_like(x[0], min(2 * _gray(x[0]).mean(), 1.0))
    assert not np.allclose(bright_first, contrast_first)
    is_bc = np.array([np.allclose(y[n], bright_first, atol=1e-5) for n in range(24)])
    is_cb = np.array([np.allclose(y[n], contrast_first, atol=1e-5) for n in range(24)])
    assert np.all(is_bc ^ is_cb)
    assert 0 < is_bc.sum() < 24


def test_jitter_seeds():
    x = _images(n=4)
    a = _np(ColorJitter(0.4, 0.4, 0.4, 0.1, seed=5)(x))
    b = _np(ColorJitter(0.4, 0.4, 0.4, 0.1, seed=5)(x))
    c = _np(ColorJitter(0.4, 0.4, 0.4, 0.1, seed=6)(x))
    np.testing.assert_allclose(a, b)
    assert not np.allclose(a, c)


def test_factor_and_channel_checks():
    with pytest.raises(ValueError, match="`brightness` factors must be >= 0"):
        ColorJitter(brightness=(-1.0, -0.5))
    scalar = ColorJitter(np.float32(0.4), np.float64(0.4), 0, 0)  # NumPy scalars are numbers
    assert scalar.brightness == pytest.approx((0.6, 1.4))
    for layer in (ColorJitter(0.4, 0.4, 0.4, 0.1), RandomGrayscale(1.0)):
        for channels in (2, 4):
            with pytest.raises(ValueError, match=r"RGB \(3 channels\) or grayscale"):
                layer(_images(channels=channels))
