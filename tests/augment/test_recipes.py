"""MoCo-v2, BYOL and DINO multi-crop recipes (all backends)."""

import json

import keras
import numpy as np
import pytest

from keras_ssl.augment import (
    BYOLAugment,
    ColorJitter,
    DINOMultiCrop,
    GaussianBlur,
    MoCoV2Augment,
    MultiViewAugment,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    SimCLRAugment,
    Solarize,
    blur_kernel_size,
    view_pipeline,
)


def _np(x):
    return keras.ops.convert_to_numpy(x)


# One batch shape and few recipe configurations throughout: on JAX an eager recipe call is
# compiled once per (configuration without seeds, input shape).
N, SIZE = 16, 16


def _uint8_images(n=N, size=SIZE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype="uint8")


def _check_view(view, shape):
    view = _np(view)
    assert view.shape == shape and view.dtype == np.float32
    assert view.min() >= 0.0 and view.max() <= 1.0
    return view


def _layer(pipeline, cls):
    found = [layer for layer in pipeline.layers if isinstance(layer, cls)]
    assert len(found) <= 1
    return found[0] if found else None


def _strip(config):
    """A pipeline's config without layer names and seeds (its distribution)."""
    if isinstance(config, dict):
        return {k: _strip(v) for k, v in config.items() if k not in ("name", "seed")}
    if isinstance(config, list):
        return [_strip(v) for v in config]
    return config


def _recipes():
    return {
        "moco": lambda seed=0: MoCoV2Augment(16, seed=seed),
        "byol": lambda seed=0: BYOLAugment(16, seed=seed),
        "dino": lambda seed=0: DINOMultiCrop(16, 8, num_local_crops=2, seed=seed),
    }


@pytest.mark.parametrize("name", ["moco", "byol", "dino"])
def test_views_shapes_and_seeds(name):
    make = _recipes()[name]
    x = _uint8_images()
    augment = make(seed=1)
    views = augment(x)
    assert isinstance(augment, MultiViewAugment) and isinstance(views, tuple)
    if name == "dino":
        assert augment.num_global_views == 2 and augment.num_views == 4
        shapes = [(N, 16, 16, 3)] * 2 + [(N, 8, 8, 3)] * 2
    else:
        assert augment.num_views == 2
        shapes = [(N, 16, 16, 3)] * 2
    assert len(views) == len(shapes)
    assert augment.compute_output_shape(x.shape) == tuple(shapes)
    views = [_check_view(v, s) for v, s in zip(views, shapes, strict=True)]
    assert not np.allclose(views[0], views[1])
    # Same seed -> identical views; another seed -> different views.
    again = [_np(v) for v in make(seed=1)(x)]
    for a, b in zip(views, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = [_np(v) for v in make(seed=2)(x)]
    assert not np.allclose(views[0], other[0])


def test_moco_v2_pipelines():
    augment = MoCoV2Augment(224, seed=0)
    view_1, view_2 = augment.pipelines
    assert [type(layer).__name__ for layer in view_1.layers] == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "RandomGrayscale",
        "GaussianBlur",
    ]
    crop = _layer(view_1, RandomResizedCrop)
    assert (crop.height, crop.width) == (224, 224)
    np.testing.assert_allclose(crop.scale, (0.2, 1.0))
    assert crop.interpolation == "bilinear"  # torchvision's default, as main_moco.py
    jitter = _layer(view_1, ColorJitter)
    np.testing.assert_allclose(
        [jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue],
        [(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)],
    )
    assert jitter.probability == 0.8
    assert _layer(view_1, RandomGrayscale).probability == 0.2
    blur = _layer(view_1, GaussianBlur)
    assert (blur.probability, blur.sigma, blur.kernel_size) == (0.5, (0.1, 2.0), 23)
    # Two views from the same distribution, with different seeds.
    assert _strip(view_1.get_config()) == _strip(view_2.get_config())
    assert crop.seed != _layer(view_2, RandomResizedCrop).seed

    small = MoCoV2Augment.small_images(32, crop_scale=(0.3, 1.0))
    assert _layer(small.pipelines[0], GaussianBlur) is None
    assert small.get_config()["crop_scale"] == [0.3, 1.0]
    assert _layer(small.pipelines[1], ColorJitter).probability == 0.8


def _check_asymmetric_pair(view_1, view_2, crop_scale, size):
    for pipeline in (view_1, view_2):
        crop = _layer(pipeline, RandomResizedCrop)
        assert (crop.height, crop.width) == (size, size)
        np.testing.assert_allclose(crop.scale, crop_scale)
        assert crop.interpolation == "bicubic"  # BYOL Appendix B; DINO's Image.BICUBIC
        assert _layer(pipeline, RandomHorizontalFlip).probability == 0.5
        jitter = _layer(pipeline, ColorJitter)
        np.testing.assert_allclose(
            [jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue],
            [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)],
        )
        assert jitter.probability == 0.8
        assert _layer(pipeline, RandomGrayscale).probability == 0.2
    assert _layer(view_1, GaussianBlur).probability == 1.0
    assert _layer(view_2, GaussianBlur).probability == 0.1
    assert _layer(view_1, Solarize) is None
    solarize = _layer(view_2, Solarize)
    assert (solarize.probability, solarize.threshold) == (0.2, 0.5)
    assert type(view_2.layers[-1]) is Solarize  # solarize after the blur


def test_byol_and_dino_pipelines():
    view_1, view_2 = BYOLAugment(224).pipelines
    _check_asymmetric_pair(view_1, view_2, (0.08, 1.0), 224)

    dino = DINOMultiCrop()
    assert dino.num_views == 10 and dino.num_global_views == 2
    _check_asymmetric_pair(dino.pipelines[0], dino.pipelines[1], (0.4, 1.0), 224)
    assert _layer(dino.pipelines[0], GaussianBlur).kernel_size == 23
    for local in dino.pipelines[2:]:
        crop = _layer(local, RandomResizedCrop)
        assert (crop.height, crop.width) == (96, 96) and crop.interpolation == "bicubic"
        np.testing.assert_allclose(crop.scale, (0.05, 0.4))
        blur = _layer(local, GaussianBlur)
        assert (blur.probability, blur.kernel_size) == (0.5, 13)  # 3 sigma at sigma = 2
        assert _layer(local, Solarize) is None
        assert _layer(local, ColorJitter).saturation == (0.8, 1.2)
    assert _strip(dino.pipelines[2].get_config()) == _strip(dino.pipelines[9].get_config())
    assert DINOMultiCrop(num_local_crops=0).num_views == 2

    dinov2 = DINOMultiCrop.dinov2(local_size=98)  # DINOv2's crop areas, DINO's pipeline
    _check_asymmetric_pair(dinov2.pipelines[0], dinov2.pipelines[1], (0.32, 1.0), 224)
    local = _layer(dinov2.pipelines[2], RandomResizedCrop)
    assert (local.height, local.scale) == (98, (0.05, 0.32)) and dinov2.num_views == 10
    assert local.interpolation == "bicubic"


@pytest.mark.parametrize(
    "make, default",
    [
        (lambda **kw: MoCoV2Augment(16, **kw), "bilinear"),
        (lambda **kw: BYOLAugment(16, **kw), "bicubic"),
        (lambda **kw: DINOMultiCrop(16, 8, num_local_crops=1, **kw), "bicubic"),
    ],
)
def test_interpolation_option(make, default):
    other = {"bilinear": "bicubic", "bicubic": "bilinear"}[default]
    for interpolation, augment in ((default, make()), (other, make(interpolation=other))):
        assert augment.get_config()["interpolation"] == interpolation
        for pipeline in augment.pipelines:
            assert _layer(pipeline, RandomResizedCrop).interpolation == interpolation
    with pytest.raises(ValueError, match="`interpolation` must be one of"):
        make(interpolation="nearest")


def _gaussian_blur_2d(image, sigma, taps):
    """Direct 2-D correlation with the outer product of a normalised 1-D Gaussian of ``taps``
    taps, on the image reflect-padded as torchvision's ``GaussianBlur`` pads it."""
    radius = taps // 2
    weights = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2.0 * sigma**2))
    kernel = np.outer(weights, weights) / weights.sum() ** 2
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = image.shape[:2]
    out = np.zeros(image.shape, "float64")
    for i in range(taps):
        for j in range(taps):
            out += kernel[i, j] * padded[i : i + height, j : j + width]
    return out


def test_dinov2_blurs_every_crop_with_a_9_tap_kernel():
    # facebookresearch/dinov2, dinov2/data/transforms.py, class GaussianBlur:
    # transforms.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0)) for global and local crops.
    dinov2 = DINOMultiCrop.dinov2(num_local_crops=2)
    blurs = [_layer(pipeline, GaussianBlur) for pipeline in dinov2.pipelines]
    assert [blur.kernel_size for blur in blurs] == [9, 9, 9, 9]
    assert [blur.probability for blur in blurs] == [1.0, 0.1, 0.5, 0.5]  # the intended ones
    assert all(blur.sigma == (0.1, 2.0) for blur in blurs)
    assert dinov2.get_config()["blur_kernel_size"] == 9
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(dinov2))
    assert [_layer(p, GaussianBlur).kernel_size for p in restored.pipelines] == [9, 9, 9, 9]
    # The released code's probabilities (the upstream 1 - p bug), and an explicit kernel.
    released = DINOMultiCrop.dinov2(num_local_crops=1, global_blur_probabilities=(0.0, 0.9))
    assert [_layer(p, GaussianBlur) for p in released.pipelines][0] is None
    assert _layer(released.pipelines[1], GaussianBlur).probability == 0.9
    wide = DINOMultiCrop.dinov2(num_local_crops=1, blur_kernel_size=5)
    assert [_layer(p, GaussianBlur).kernel_size for p in wide.pipelines[1:]] == [5, 5]
    # DINO keeps 10% of each crop's side, at least 13 taps (DINOMultiCrop's default).
    dino = DINOMultiCrop(num_local_crops=1)
    assert [_layer(p, GaussianBlur).kernel_size for p in dino.pipelines] == [23, 23, 13]
    assert dino.get_config()["blur_kernel_size"] is None

    # Numerically: the recipe's global blur, its sigma forced, is a 9-tap Gaussian.
    images = np.random.default_rng(0).uniform(size=(2, 12, 12, 3)).astype("float32")
    for sigma in (0.7, 2.0):
        config = {**blurs[0].get_config(), "sigma": [sigma, sigma]}
        blurred = _np(GaussianBlur.from_config(config)(images))
        for n in range(2):
            expected = _gaussian_blur_2d(images[n], sigma, 9)
            np.testing.assert_allclose(blurred[n], expected, atol=2e-6)


def test_dino_blurs_local_crops_with_a_gaussian_that_is_not_cut_short():
    # The official DINO blurs with PIL's GaussianBlur(radius=sigma), not truncated; 10% of
    # a 96 px crop, 9 taps, cut the kernel at 2 sigma for sigma = 2 (its sigma was 1.85).
    dino = DINOMultiCrop(num_local_crops=1)
    images = np.random.default_rng(0).uniform(size=(2, 40, 40, 3)).astype("float32")
    for pipeline in (dino.pipelines[0], dino.pipelines[2]):  # a global crop, the local one
        config = {**_layer(pipeline, GaussianBlur).get_config(), "sigma": [2.0, 2.0]}
        blurred = _np(GaussianBlur.from_config({**config, "probability": 1.0})(images))
        for n in range(2):
            untruncated = _gaussian_blur_2d(images[n], 2.0, 61)  # 15 sigma either side
            np.testing.assert_allclose(blurred[n], untruncated, atol=1e-3)
    # DINOv2's 9 taps are its official kernel_size=9, kept as they are.
    assert _layer(DINOMultiCrop.dinov2().pipelines[2], GaussianBlur).kernel_size == 9


def test_recipes_take_numpy_integer_sizes():
    size = np.int64(32)
    recipes = [
        SimCLRAugment(size, seed=0),
        MoCoV2Augment(size, seed=0),
        BYOLAugment(size, seed=0),
        DINOMultiCrop(size, np.int64(16), num_local_crops=1, seed=0),
        DINOMultiCrop.small_images(size, num_local_crops=1, seed=0),
    ]
    for recipe in recipes:
        assert recipe.compute_output_shape((2, 32, 32, 3))[0] == (2, 32, 32, 3)
        json.dumps(recipe.get_config())  # plain ints in the config
    assert blur_kernel_size(np.int64(96)) == 9
    assert _layer(view_pipeline(size), RandomResizedCrop).height == 32


def test_blur_kernel_size_option():
    assert _layer(view_pipeline(224), GaussianBlur).kernel_size == 23  # 10% of the side
    assert _layer(view_pipeline(224, blur_kernel_size=9), GaussianBlur).kernel_size == 9
    for bad in (4, 0, -3, 2.5, True):
        with pytest.raises(ValueError, match="`blur_kernel_size` must be a positive odd"):
            view_pipeline(224, blur_kernel_size=bad)
        with pytest.raises(ValueError, match="`blur_kernel_size` must be a positive odd"):
            DINOMultiCrop(num_local_crops=0, global_blur_probabilities=(0, 0), blur_kernel_size=bad)


def test_small_images():
    byol = BYOLAugment.small_images(32)
    assert all(_layer(p, GaussianBlur) is None for p in byol.pipelines)
    assert _layer(byol.pipelines[0], Solarize) is None
    assert _layer(byol.pipelines[1], Solarize).probability == 0.2

    for size, local in ((28, 12), (32, 14), (96, 41)):
        dino = DINOMultiCrop.small_images(size, num_local_crops=2)
        assert dino.get_config()["global_size"] == [size, size]
        assert dino.get_config()["local_size"] == [local, local]
        assert all(_layer(p, GaussianBlur) is None for p in dino.pipelines)
        assert _layer(dino.pipelines[1], Solarize).probability == 0.2
    dino = DINOMultiCrop.small_images(28, num_local_crops=2, local_blur_probability=0.3)
    assert _layer(dino.pipelines[3], GaussianBlur).probability == 0.3
    assert dino.compute_output_shape((1, 28, 28, 3))[2] == (1, 12, 12, 3)


def _two_batches(augment, x):
    """Calls ``augment`` twice on ``x`` (2 N images, one compiled shape) -> concatenated views."""
    first, second = augment(x), augment(x)
    return [np.concatenate([_np(a), _np(b)]) for a, b in zip(first, second, strict=True)]


def test_solarize_only_where_configured():
    # A constant gray image of 0.9: crop, flip, blur and grayscale keep it constant and the
    # jitter (brightness >= 0.6; contrast / saturation / hue leave a constant gray image as
    # is) keeps it >= 0.54, while solarization maps it to <= 0.46.
    x = np.full((N, SIZE, SIZE, 3), 0.9, dtype="float32")

    def solarized(view):
        low = view.max(axis=(1, 2, 3)) < 0.5
        assert np.all(low | (view.min(axis=(1, 2, 3)) > 0.5))
        return low

    byol_1, byol_2 = _two_batches(BYOLAugment(16, seed=0), x)
    assert not solarized(byol_1).any()
    assert 0 < solarized(byol_2).sum() < 20  # p = 0.2 on 32 images

    views = _two_batches(DINOMultiCrop(16, 8, num_local_crops=2, seed=0), x)
    assert not solarized(views[0]).any()
    assert 0 < solarized(views[1]).sum() < 20
    assert not any(solarized(v).any() for v in views[2:])


def test_blur_asymmetry():
    # The same recipe with the blur removed draws the same crops, flips, jitter... (fixed
    # per-layer seeds), so the images that differ are exactly the blurred ones. (DINO's
    # views come from the same builder; their probabilities are checked above.)
    x = np.random.default_rng(0).uniform(size=(N, SIZE, SIZE, 3)).astype("float32")
    views = _two_batches(BYOLAugment(16, seed=3), x)
    plain = _two_batches(BYOLAugment(16, blur_probabilities=(0.0, 0.0), seed=3), x)
    changed = [np.abs(a - b).max(axis=(1, 2, 3)) > 1e-3 for a, b in zip(views, plain, strict=True)]
    # View 1: blur p = 1 (only a sigma close to 0.1 leaves an image unchanged); view 2: p = 0.1.
    assert changed[0].mean() >= 0.75
    assert changed[1].mean() <= 0.3
    # Most view-2 images are not blurred at all: identical to the blur-free recipe's.
    identical = np.abs(views[1] - plain[1]).max(axis=(1, 2, 3)) == 0
    assert identical.mean() >= 0.7


@pytest.mark.parametrize(
    "make",
    [
        lambda: MoCoV2Augment(16, seed=3),
        lambda: MoCoV2Augment.small_images(32, blur_probability=0.1),
        lambda: BYOLAugment(16, seed=4),
        lambda: BYOLAugment.small_images(28, jitter=(0.2, 0.2, 0.1, 0.05)),
        lambda: DINOMultiCrop(16, 8, num_local_crops=2, seed=5),
        lambda: DINOMultiCrop.small_images(28, num_local_crops=1),
        lambda: DINOMultiCrop.dinov2(16, 8, num_local_crops=1, seed=6),
    ],
)
def test_config_round_trip(make):
    layer = make()
    config = layer.get_config()
    assert "pipelines" not in config
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == config
    assert restored.num_views == layer.num_views
    for a, b in zip(layer.pipelines, restored.pipelines, strict=True):
        assert _strip(a.get_config()) == _strip(b.get_config())
        assert [sub.seed for sub in a.layers] == [sub.seed for sub in b.layers]


def test_recipes_saved_before_the_interpolation_option_keep_bilinear_crops():
    for augment in (BYOLAugment(16, seed=1), DINOMultiCrop(16, 8, num_local_crops=1, seed=2)):
        config = augment.get_config()
        del config["interpolation"]
        restored = type(augment).from_config(config)
        assert restored.get_config()["interpolation"] == "bilinear"
        assert _layer(restored.pipelines[0], RandomResizedCrop).interpolation == "bilinear"


def test_round_trip_reproduces_outputs():
    x = _uint8_images()
    config = DINOMultiCrop(16, 8, num_local_crops=2, seed=9).get_config()
    views = DINOMultiCrop(16, 8, num_local_crops=2, seed=9)(x)
    for a, b in zip(views, DINOMultiCrop.from_config(config)(x), strict=True):
        np.testing.assert_array_equal(_np(a), _np(b))


def test_view_pipeline_seeds_are_per_layer():
    full = view_pipeline(16, solarize_probability=0.2, seed=7).layers
    bare = view_pipeline(16, jitter_probability=0.0, blur_probability=0.0, seed=7).layers
    assert [type(layer).__name__ for layer in bare] == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandomGrayscale",
    ]
    seeds = {type(layer).__name__: layer.seed for layer in full}
    assert all(seeds[type(layer).__name__] == layer.seed for layer in bare)
    assert len(set(seeds.values())) == len(full) == 6
    assert view_pipeline(16, jitter=(0, 0, 0, 0)).layers[2].__class__ is RandomGrayscale
    with pytest.raises(ValueError):
        view_pipeline(16, jitter=(0.4, 0.4))


def test_tf_data_pipeline():
    import tensorflow as tf

    x = _uint8_images(n=6)
    recipes = [
        (BYOLAugment(16, seed=0), [(3, 16, 16, 3)] * 2),
        (DINOMultiCrop(16, 8, num_local_crops=1, seed=0), [(3, 16, 16, 3)] * 2 + [(3, 8, 8, 3)]),
    ]
    for augment, shapes in recipes:
        ds = tf.data.Dataset.from_tensor_slices(x).batch(3).map(augment)
        batches = list(ds)
        assert len(batches) == 2
        for views in batches:
            assert len(views) == len(shapes)
            for view, shape in zip(views, shapes, strict=True):
                assert isinstance(view, tf.Tensor)
                _check_view(view.numpy(), shape)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="TensorFlow and JAX arrays have no strides"
)
@pytest.mark.parametrize("name", ["simclr", "moco", "byol", "dino"])
def test_views_are_dense_channels_last_memory_on_torch(name):
    """A ResNet on PyTorch runs channels-last convolutions on a permuted view of dense
    (N, H, W, C) images; views in another memory order would run them channels-first,
    slower (crops and blurs are einsums, whose torch results are permuted views)."""
    make = {"simclr": lambda seed=0: SimCLRAugment(16, seed=seed), **_recipes()}[name]
    for view in make(seed=0)(_uint8_images()):
        assert view.is_contiguous(), (tuple(view.shape), view.stride())
