import keras
import numpy as np
import pytest

from keras_ssl.augment import RandomHorizontalFlip, RandomResizedCrop, _ops
from keras_ssl.augment._base import current_backend


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _bilinear_reference(image, top, left, box_h, box_w, out_h, out_w):
    """Crop then resize, bilinear with half-pixel centres and edge clamping (per image)."""
    crop = image[top : top + box_h, left : left + box_w]
    out = np.zeros((out_h, out_w, image.shape[-1]), dtype="float64")
    for i in range(out_h):
        sy = min(max((i + 0.5) * box_h / out_h - 0.5, 0.0), box_h - 1)
        y0 = int(np.floor(sy))
        y1 = min(y0 + 1, box_h - 1)
        fy = sy - y0
        for j in range(out_w):
            sx = min(max((j + 0.5) * box_w / out_w - 0.5, 0.0), box_w - 1)
            x0 = int(np.floor(sx))
            x1 = min(x0 + 1, box_w - 1)
            fx = sx - x0
            top_row = (1 - fx) * crop[y0, x0] + fx * crop[y0, x1]
            bottom_row = (1 - fx) * crop[y1, x0] + fx * crop[y1, x1]
            out[i, j] = (1 - fy) * top_row + fy * bottom_row
    return out


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_identity(channels):
    x = np.random.uniform(size=(3, 12, 12, channels)).astype("float32")
    layer = RandomResizedCrop(12, 12, scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)
    y = _np(layer(x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1e-5)


def test_crop_resize_matches_numpy_bilinear_upscale():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 10, 9, 3)).astype("float32")
    boxes = np.array([[0, 0, 10, 9], [2, 1, 5, 4], [4, 3, 6, 6]], dtype="float32")
    out_h, out_w = 13, 11
    y = _np(_ops.crop_resize(current_backend(), keras.ops.convert_to_tensor(x), boxes, 13, 11))
    for n in range(3):
        top, left, h, w = (int(v) for v in boxes[n])
        ref = _bilinear_reference(x[n], top, left, h, w, out_h, out_w)
        np.testing.assert_allclose(y[n], ref, atol=1e-5)


def test_downscale_is_antialiased():
    B = current_backend()
    m = _np(_ops.interpolation_matrix(B, np.zeros(1, "float32"), np.full(1, 16.0), 16, 8))[0]
    np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-6)
    # Triangle filter widened by the scale factor 2: weights 1/8, 3/8, 3/8, 1/8.
    np.testing.assert_allclose(m[3, 5:9], [0.125, 0.375, 0.375, 0.125], atol=1e-6)
    np.testing.assert_allclose(m[3, :5], 0.0, atol=1e-7)


def test_sampled_boxes_follow_torchvision_ranges():
    x = np.zeros((256, 20, 30, 1), "float32")
    scale, ratio = (0.2, 0.6), (0.5, 2.0)
    layer = RandomResizedCrop(8, 8, scale=scale, ratio=ratio, seed=3)
    boxes = _np(layer.sample_boxes(keras.ops.convert_to_tensor(x)))
    top, left, h, w = boxes.T
    assert np.all(h >= 1) and np.all(w >= 1)
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + h <= 20) and np.all(left + w <= 30)
    area = h * w / (20 * 30)
    # Rounding of h and w moves the area a little outside the nominal range.
    assert area.min() > scale[0] * 0.7 and area.max() < scale[1] * 1.3
    aspect = w / h
    assert aspect.min() > ratio[0] * 0.8 and aspect.max() < ratio[1] * 1.25
    assert len(np.unique(boxes, axis=0)) > 200  # per-image boxes


def test_fallback_is_central_crop():
    # No candidate fits (area > image) -> central crop clamped to the ratio range.
    x = np.random.uniform(size=(2, 8, 16, 3)).astype("float32")
    layer = RandomResizedCrop(8, 8, scale=(2.0, 3.0), ratio=(1.0, 1.0), seed=0)
    boxes = _np(layer.sample_boxes(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(boxes, [[0, 4, 8, 8]] * 2)
    np.testing.assert_allclose(_np(layer(x)), x[:, :, 4:12], atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_per_image_randomness_and_range(channels):
    x = np.repeat(np.random.uniform(size=(1, 16, 16, channels)).astype("float32"), 6, axis=0)
    y = _np(RandomResizedCrop(8, 10, seed=1)(x))
    assert y.shape == (6, 8, 10, channels) and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert not np.allclose(y[0], y[1]) and not np.allclose(y[2], y[3])


def test_crop_unbatched_and_uint8():
    x = np.random.randint(0, 256, size=(16, 16, 3), dtype="uint8")
    y = _np(RandomResizedCrop(8, 8, seed=1)(x))
    assert y.shape == (8, 8, 3) and y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0


def test_flip_per_image():
    x = np.repeat(np.random.uniform(size=(1, 5, 7, 3)).astype("float32"), 32, axis=0)
    y = _np(RandomHorizontalFlip(0.5, seed=0)(x))
    flipped = np.array([np.allclose(y[n], x[n, :, ::-1]) for n in range(32)])
    same = np.array([np.allclose(y[n], x[n]) for n in range(32)])
    assert np.all(flipped ^ same)
    assert 0 < flipped.sum() < 32
    np.testing.assert_allclose(_np(RandomHorizontalFlip(1.0, seed=0)(x)), x[:, :, ::-1])
    np.testing.assert_allclose(_np(RandomHorizontalFlip(0.0, seed=0)(x)), x)


@pytest.mark.parametrize(
    "make",
    [lambda s: RandomResizedCrop(8, 8, seed=s), lambda s: RandomHorizontalFlip(seed=s)],
)
def test_seeds(make):
    x = np.random.uniform(size=(8, 12, 12, 3)).astype("float32")
    a, b, c = _np(make(5)(x)), _np(make(5)(x)), _np(make(6)(x))
    np.testing.assert_allclose(a, b)
    assert not np.allclose(a, c)


def test_images_of_unknown_size_in_tf_data_get_a_clear_error():
    import tensorflow as tf

    images = tf.data.Dataset.from_generator(
        lambda: iter([np.zeros((2, 8, 8, 3), "float32")]),
        output_signature=tf.TensorSpec((None, None, None, 3), tf.float32),
    )
    with pytest.raises(ValueError, match="needs images of a known height and width"):
        images.map(RandomResizedCrop(4, 4, scale=np.float32(0.5), seed=0))


def _pil_crop_resize(image, box, out_h, out_w, interpolation):
    """torchvision's ``resized_crop`` on a PIL image: crop, then PIL's (antialiased) resize,
    channel by channel in float mode so the reference is not rounded to 8 bits."""
    from PIL import Image

    top, left, box_h, box_w = (int(v) for v in box)
    crop = image[top : top + box_h, left : left + box_w]
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interpolation]
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(crop[..., c]), mode="F").resize(
                (out_w, out_h), resample
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("out_size", [(13, 29), (50, 45)])  # down- and upscaling
def test_crop_resize_matches_pil(interpolation, out_size):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(4, 40, 37, 3)).astype("float32")
    boxes = np.array([[0, 0, 40, 37], [3, 5, 20, 11], [10, 2, 7, 30], [1, 1, 39, 36]], "float32")
    y = _np(
        _ops.crop_resize(
            current_backend(), keras.ops.convert_to_tensor(x), boxes, *out_size, interpolation
        )
    )
    for n in range(len(x)):
        reference = _pil_crop_resize(x[n], boxes[n], *out_size, interpolation)
        np.testing.assert_allclose(y[n], reference, atol=2e-5)


def test_bicubic_layer_is_clipped_and_serialised():
    # A checkerboard overshoots under a cubic filter; the layer clips it back to [0, 1].
    board = np.indices((16, 16)).sum(0) % 2
    x = np.repeat(board[None, :, :, None], 3, axis=-1).astype("float32")
    crop = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)
    raw = _np(
        _ops.crop_resize(current_backend(), x, np.array([[0, 0, 16, 16]], "float32"), 24, 24,
                         "bicubic")
    )  # fmt: skip
    assert raw.min() < -0.05 and raw.max() > 1.05
    layer = RandomResizedCrop(24, 24, interpolation="bicubic", **crop)
    np.testing.assert_allclose(_np(layer(x)), np.clip(raw, 0.0, 1.0), atol=1e-6)
    config = layer.get_config()
    assert config["interpolation"] == "bicubic"
    assert RandomResizedCrop.from_config(config).interpolation == "bicubic"
    assert RandomResizedCrop(8, 8).interpolation == "bilinear"
    with pytest.raises(ValueError, match="`interpolation` must be one of"):
        RandomResizedCrop(8, 8, interpolation="area")
