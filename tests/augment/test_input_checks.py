"""Errors that name the fix for images the augmentation layers would turn into garbage, and
the jit-cache key of eager JAX calls."""

import types

import keras
import numpy as np
import pytest

from keras_ssl.augment import (
    AugmentationPipeline,
    BYOLAugment,
    ColorJitter,
    DINOMultiCrop,
    GaussianBlur,
    MoCoV2Augment,
    MultiViewAugment,
    RandomApply,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    SimCLRAugment,
    Solarize,
)
from keras_ssl.augment._base import _StaticLayer, config_without_sublayers

BACKEND = keras.backend.backend()

LAYERS = {
    "ColorJitter": lambda: ColorJitter(0.4, 0.4, 0.4, 0.1, seed=0),
    "RandomGrayscale": lambda: RandomGrayscale(0.5, seed=0),
    "Solarize": lambda: Solarize(0.5, seed=0),
    "GaussianBlur": lambda: GaussianBlur(3, seed=0),
    "RandomResizedCrop": lambda: RandomResizedCrop(16, 16, seed=0),
    "RandomHorizontalFlip": lambda: RandomHorizontalFlip(seed=0),
    "RandomApply": lambda: RandomApply(Solarize(0.5), probability=0.5, seed=0),
    "AugmentationPipeline": lambda: AugmentationPipeline(
        [RandomResizedCrop(16, 16, seed=0), ColorJitter(0.4, seed=1)]
    ),
    "MultiViewAugment": lambda: MultiViewAugment([[RandomResizedCrop(16, 16, seed=0)]]),
    "SimCLRAugment": lambda: SimCLRAugment(16, seed=0),
    "MoCoV2Augment": lambda: MoCoV2Augment(16, seed=0),
    "BYOLAugment": lambda: BYOLAugment(16, seed=0),
    "DINOMultiCrop": lambda: DINOMultiCrop.small_images(32, num_local_crops=1, seed=0),
}


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _images(shape, low=0.0, high=1.0, seed=0):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype("float32")


# Layers whose math is linear in the pixel values: they take images of any range.
RANGE_FREE = {
    "GaussianBlur",
    "MultiViewAugment",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
}


# -- float images outside [0, 1] -------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(set(LAYERS) - RANGE_FREE))
def test_float_images_in_0_255_are_refused(name):
    # They used to be jittered, solarized and clipped as if in [0, 1]: garbage views.
    with pytest.raises(ValueError, match=rf"\[0, 1\] for {name} \(.*divide them by 255"):
        LAYERS[name]()(_images((4, 32, 32, 3), high=255.0))


def test_the_error_names_the_steps_that_need_unit_range():
    cases = {
        "Solarize": ["Solarize inverts x -> 1 - x above a threshold in [0, 1]"],
        "RandomApply": ["Solarize inverts x -> 1 - x above a threshold in [0, 1]"],
        "AugmentationPipeline": ["ColorJitter clips to [0, 1]"],
        "SimCLRAugment": [
            "bicubic RandomResizedCrop clips to [0, 1]",
            "ColorJitter clips to [0, 1]",
        ],
    }
    for name, uses in cases.items():
        assert LAYERS[name]().unit_range_uses() == uses, name
    bicubic = RandomResizedCrop(16, 16, interpolation="bicubic", seed=0)
    with pytest.raises(ValueError, match=r"RandomResizedCrop \(bicubic RandomResizedCrop clips"):
        bicubic(_images((4, 32, 32, 3), high=255.0))


@pytest.mark.parametrize("name", sorted(RANGE_FREE))
def test_linear_layers_take_any_range(name):
    # A flip, a blur, a grayscale and a bilinear crop commute with scaling the pixels.
    images = _images((4, 32, 32, 3))
    assert LAYERS[name]().unit_range_uses() == []
    scaled = LAYERS[name]()(images * 255.0)
    unit = LAYERS[name]()(images)
    if name == "MultiViewAugment":
        scaled, unit = scaled[0], unit[0]
    np.testing.assert_allclose(_np(scaled), _np(unit) * 255.0, rtol=1e-5, atol=1e-3)
    assert _np(scaled).max() > 200.0


@pytest.mark.parametrize("name", ["ColorJitter", "SimCLRAugment"])
def test_normalised_float_images_are_refused(name):
    with pytest.raises(ValueError, match=r"got values in \[-0\.9.*normalise after augmenting"):
        LAYERS[name]()(_images((4, 32, 32, 3), low=-1.0, high=1.0))


def test_a_python_list_of_pixels_is_checked_and_scaled_as_a_numpy_array():
    with pytest.raises(ValueError, match=r"\[0, 1\] for ColorJitter.*divide them by 255"):
        ColorJitter(0.4)(_images((2, 8, 8, 3), high=255.0).tolist())
    # Integers in a list are 8-bit pixel values, as in a NumPy integer array.
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3))
    from_list = _np(Solarize(0.5, seed=0)(pixels.tolist()))
    np.testing.assert_allclose(from_list, _np(Solarize(0.5, seed=0)(pixels.astype("uint8"))))
    assert from_list.max() <= 1.0


def test_images_in_0_1_pass_rounding_error_included():
    images = _images((4, 32, 32, 3))
    images[0, 0, 0] = (-5e-4, 1.0 + 5e-4, 0.5)
    for view in SimCLRAugment(16, seed=0)(images):
        assert _np(view).shape == (4, 16, 16, 3)
    pixels = (_images((2, 8, 8, 3)) * 255).astype("uint8")
    assert _np(ColorJitter(0.4, seed=0)(pixels)).max() <= 1.0


def test_backend_tensors_are_not_checked():
    # Their values would have to come back from the device in every step; fit() checks its
    # data once, before training.
    images = keras.ops.convert_to_tensor(_images((2, 8, 8, 3), high=255.0))
    assert tuple(Solarize(0.5, seed=0)(images).shape) == (2, 8, 8, 3)


def _resized_in_tf_data(images, size=16):
    """Batches of `images` resized with `tf.image.resize` in a `tf.data` pipeline: floats in
    [0, 255] for uint8 images."""
    import tensorflow as tf

    resized = tf.data.Dataset.from_tensor_slices(images).map(
        lambda image: tf.image.resize(image, (size, size))
    )
    return resized.batch(4, drop_remainder=True)


def test_float_images_in_0_255_are_refused_in_tf_data():
    # `tf.image.resize` turns uint8 images into floats in [0, 255], which a tf.data map of
    # the recipe clipped without a word: 37% of the pixels of the views came out white.
    tf = pytest.importorskip("tensorflow")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 20, 18, 3)).astype("uint8")
    views = _resized_in_tf_data(pixels).map(SimCLRAugment(16, seed=0))
    match = (
        r"Float images must lie in \[0, 1\] for SimCLRAugment \(bicubic RandomResizedCrop "
        r"clips to \[0, 1\]; ColorJitter clips to \[0, 1\]\), got values in \[.*\]\. "
        r"They look like 0-255 pixel values: divide them by 255"
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        next(iter(views))
    normalised = tf.data.Dataset.from_tensor_slices(_images((4, 16, 16, 3), -1.0, 1.0))
    with pytest.raises(tf.errors.InvalidArgumentError, match="normalise after augmenting"):
        next(iter(normalised.batch(4).map(ColorJitter(0.4, seed=0))))
    # The fix of the error message, and layers that take any range, pass.
    for view in next(
        iter(_resized_in_tf_data(pixels).map(lambda x: x / 255.0).map(SimCLRAugment(16, seed=0)))
    ):
        assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 1.0
    flipped = next(iter(_resized_in_tf_data(pixels).map(RandomHorizontalFlip(seed=0))))
    assert float(tf.reduce_max(flipped)) > 200.0


def test_images_in_0_1_pass_the_tf_data_check_rounding_error_included():
    tf = pytest.importorskip("tensorflow")
    images = _images((4, 16, 16, 3))
    images[0, 0, 0] = (-5e-4, 1.0 + 5e-4, np.nan)  # NaN is the step guard's business
    batches = tf.data.Dataset.from_tensor_slices(images).batch(4)
    assert len(next(iter(batches.map(SimCLRAugment(16, seed=0))))) == 2


def test_the_tf_data_check_runs_once_per_call():
    # The recipe checks its input; the layers it calls get images it has checked.
    tf = pytest.importorskip("tensorflow")

    recipe = SimCLRAugment(16, seed=0)

    @tf.function(autograph=False)
    def augment(images):
        return recipe(images)

    graph = augment.get_concrete_function(tf.TensorSpec((4, 16, 16, 3), tf.float32)).graph
    asserts = [op for op in graph.get_operations() if op.type == "Assert"]
    assert len(asserts) == 1


def test_xla_compiled_calls_have_no_check_or_lock():
    # XLA compiles neither the assertion nor the seed generator's mutex (a TF train step).
    tf = pytest.importorskip("tensorflow")
    recipe = SimCLRAugment(16, seed=0)

    @tf.function(jit_compile=True, autograph=False)
    def augment(images):
        return recipe(images)

    graph = augment.get_concrete_function(tf.TensorSpec((4, 16, 16, 3), tf.float32)).graph
    assert not {"Assert", "MutexLock"} & {op.type for op in graph.get_operations()}
    views = augment(tf.constant(_images((4, 16, 16, 3))))
    assert [tuple(view.shape) for view in views] == [(4, 16, 16, 3)] * 2


def test_the_unknown_size_error_resizes_to_unit_floats():
    tf = pytest.importorskip("tensorflow")
    unknown = tf.data.Dataset.from_generator(
        lambda: iter([_images((2, 8, 8, 3))]),
        output_signature=tf.TensorSpec((None, None, None, 3), tf.float32),
    )
    with pytest.raises(ValueError, match=r"`tf.image.resize\(image, size\) / 255\.0`"):
        unknown.map(RandomResizedCrop(4, 4, seed=0))


def test_fit_checks_the_range_of_a_tf_data_sets_first_batch():
    # An augmenter in the train step clipped them as silently as a tf.data map did.
    pytest.importorskip("tensorflow")
    from keras_ssl.trainer._input_checks import check_fit_data

    model = types.SimpleNamespace(augmenter=SimCLRAugment.small_images(16, seed=0))
    pixels = np.random.default_rng(0).integers(0, 256, (8, 20, 18, 3)).astype("uint8")
    with pytest.raises(
        ValueError,
        match=r"In the first batch of the tf.data data set: Float images must lie in \[0, 1\] "
        r"for the augmentation \(.*ColorJitter clips to \[0, 1\]\).*divide them by 255",
    ):
        check_fit_data(model, _resized_in_tf_data(pixels))
    check_fit_data(model, _resized_in_tf_data(pixels).map(lambda x: x / 255.0))
    check_fit_data(model, _resized_in_tf_data(pixels).map(lambda x: (x / 255.0, 0)))  # labels
    # An empty data set of unknown length: left to fit, which names it.
    check_fit_data(model, _resized_in_tf_data(pixels).filter(lambda x: False))
    views = _resized_in_tf_data(pixels).map(lambda x: (x, x))
    with pytest.warns(UserWarning, match=r"The views reach 2\d\d.*divide them by 255"):
        check_fit_data(types.SimpleNamespace(augmenter=None), views)
    as_dict = _resized_in_tf_data(pixels).map(lambda x: {"images": x})
    with pytest.raises(ValueError, match="In the first batch of the tf.data data set"):
        check_fit_data(model, as_dict)


# -- channels-first images -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("channels", [1, 3])
def test_channels_first_images_are_refused_with_the_transpose(name, channels):
    # Each used to fail in its own way, or not at all: ColorJitter and RandomGrayscale took
    # 32 "channels" for an alpha channel, the crop resized C x H into a 16 x 16 view of 32
    # channels, flip, blur and solarize returned garbage of the input's shape.
    images = _images((4, channels, 32, 32))
    match = (
        rf"{name} got images of shape \(4, {channels}, 32, 32\), which look channels_first "
        r"\(N, C, H, W\).*`np.transpose\(images, \(0, 2, 3, 1\)\)`"
    )
    with pytest.raises(ValueError, match=match):
        LAYERS[name]()(images)


def test_channels_first_check_covers_every_kind_of_input():
    layer = ColorJitter(0.4, seed=0)
    match = r"look channels_first"
    with pytest.raises(ValueError, match=r"\(C, H, W\).*np.transpose\(image, \(1, 2, 0\)\)"):
        layer(_images((3, 32, 32)))  # one unbatched image
    with pytest.raises(ValueError, match=match):
        layer((_images((2, 3, 8, 8)) * 255).astype("uint8"))
    with pytest.raises(ValueError, match=match):
        layer(keras.ops.convert_to_tensor(_images((2, 3, 8, 8))))
    with pytest.raises(ValueError, match=match):
        layer(keras.Input((3, 8, 8)))  # a symbolic tensor: a functional model's
    with pytest.raises(ValueError, match=match):
        layer(_images((2, 3, 8, 8)).tolist())


def test_channels_first_check_in_tf_data():
    tf = pytest.importorskip("tensorflow")
    batches = tf.data.Dataset.from_tensor_slices(_images((4, 3, 16, 16))).batch(2)
    with pytest.raises(ValueError, match=r"SimCLRAugment got images.*look channels_first"):
        batches.map(SimCLRAugment(8, seed=0))
    # Unknown sizes pass the check: nothing is known to be wrong.
    unknown = tf.data.Dataset.from_generator(
        lambda: iter([_images((2, 16, 16, 3))]),
        output_signature=tf.TensorSpec((None, None, None, None), tf.float32),
    )
    flipped = next(iter(unknown.map(RandomHorizontalFlip(seed=0))))
    assert tuple(flipped.shape) == (2, 16, 16, 3)


@pytest.mark.parametrize(
    "shape",
    [(2, 8, 8, 3), (2, 8, 8, 1), (2, 3, 8, 3), (2, 3, 3, 3), (8, 8, 3), (3, 8, 8, 1)],
)
def test_channels_last_images_pass(shape):
    assert tuple(ColorJitter(0.4, seed=0)(_images(shape)).shape) == shape


# -- a batch without a channel axis ----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_batch_without_a_channel_axis_is_refused(name):
    # keras_ssl.datasets.fashion_mnist.load_data() gives (N, 28, 28): taken for one image of
    # 28 channels, the crop made one (20, 20, 28) view of the batch, the blur mixed images.
    match = (
        rf"{name} got images of shape \(64, 28, 28\), which look like a batch of "
        r"single-channel images without a channel axis \(N, H, W\).*`images\[\.\.\., None\]`"
    )
    with pytest.raises(ValueError, match=match):
        LAYERS[name]()((_images((64, 28, 28)) * 255).astype("uint8"))


def test_a_batch_without_a_channel_axis_is_refused_from_every_source():
    tf = pytest.importorskip("tensorflow")
    layer = RandomResizedCrop(20, 20, seed=0)
    match = r"without a channel axis \(N, H, W\)"
    with pytest.raises(ValueError, match=match):
        layer(keras.ops.convert_to_tensor(_images((8, 28, 28))))
    with pytest.raises(ValueError, match=match):
        layer(keras.Input((28, 28)))
    with pytest.raises(ValueError, match=match):
        tf.data.Dataset.from_tensor_slices(_images((8, 28, 28))).batch(4).map(layer)
    # The fix in the message, and unbatched images of 1 to 4 channels, pass.
    assert tuple(layer(_images((8, 28, 28))[..., None]).shape) == (8, 20, 20, 1)
    for channels in (1, 2, 3, 4):
        assert tuple(layer(_images((28, 28, channels))).shape) == (20, 20, channels)


def test_geometric_layers_take_any_channel_count():
    images = _images((2, 16, 16, 5))
    assert tuple(RandomResizedCrop(8, 8, seed=0)(images).shape) == (2, 8, 8, 5)
    assert tuple(RandomHorizontalFlip(seed=0)(images).shape) == (2, 16, 16, 5)


# -- the jit-cache key -----------------------------------------------------------------------
@pytest.fixture
def count_configs(monkeypatch):
    calls = []
    get_config = keras.layers.Layer.get_config  # every layer's, a recipe's included

    def counted(self):
        calls.append(type(self).__name__)
        return get_config(self)

    monkeypatch.setattr(keras.layers.Layer, "get_config", counted)
    return calls


def test_the_key_of_an_unchanged_layer_serialises_no_config(count_configs):
    # Every eager JAX call makes a key: it used to serialise every layer's config, a
    # container's holding its sub-layers' again (0.6 ms a call for SimCLRAugment, 3 ms for
    # a 10-view DINOMultiCrop).
    augment = DINOMultiCrop.small_images(32, num_local_crops=2, seed=0)
    key = _StaticLayer(augment)
    assert len(count_configs) == len(augment._flatten_layers())  # each layer once
    count_configs.clear()
    assert _StaticLayer(augment) == key
    assert count_configs == []
    # A changed layer makes its own part again, and a key of its own.
    augment.pipelines[2].layers[-1].probability = 0.25
    changed = _StaticLayer(augment)
    assert count_configs == ["RandomGrayscale"]
    assert changed != key and hash(changed) != hash(key)


def test_the_key_holds_each_layer_with_its_own_arguments_and_the_tree():
    with_inner = AugmentationPipeline(
        [RandomHorizontalFlip(seed=0), AugmentationPipeline([Solarize(0.5)]), ColorJitter(0.4)]
    )
    inner_last = AugmentationPipeline(
        [RandomHorizontalFlip(seed=0), AugmentationPipeline([Solarize(0.5), ColorJitter(0.4)])]
    )
    assert _StaticLayer(with_inner) != _StaticLayer(inner_last)
    assert '"layers"' not in str(_StaticLayer(with_inner).key)
    wrapped = RandomApply(Solarize(0.5), probability=0.5, seed=0)
    assert "layer" in wrapped.get_config()  # serialisation keeps the sub-layers
    assert not config_without_sublayers()


def test_keys_of_user_layers_stay_their_own():
    class Gain(keras.layers.Layer):
        def call(self, images):
            return images

    first, second = RandomApply(Gain(), seed=0), RandomApply(Gain(), seed=0)
    assert _StaticLayer(first) != _StaticLayer(second)
    assert _StaticLayer(first) == _StaticLayer(first)


def _square_crop(size, seed):
    return RandomResizedCrop(size, size, scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=seed)


def test_the_key_follows_the_layers_a_container_runs_in_their_order():
    # Keras's tracking order (`_layers`) keeps the construction order and every layer ever
    # assigned; the key must follow what the container runs, or an eager JAX call runs
    # another pipeline's compiled function.
    images = _images((2, 32, 32, 3))
    pipeline = AugmentationPipeline([_square_crop(16, 0), _square_crop(8, 1)])
    assert tuple(pipeline(images).shape) == (2, 8, 8, 3)
    pipeline.layers.reverse()
    assert tuple(pipeline(images).shape) == (2, 16, 16, 3)

    replaced = AugmentationPipeline([Solarize(0.5, probability=1.0)])
    replaced.layers = [_square_crop(8, 2)]
    fresh = AugmentationPipeline([Solarize(0.5, probability=1.0), _square_crop(8, 3)])
    assert _StaticLayer(replaced) != _StaticLayer(fresh)
    assert tuple(replaced(images).shape) == (2, 8, 8, 3)
    solarized = _np(fresh(images))
    assert solarized.shape == (2, 8, 8, 3) and solarized.max() <= 0.5 + 1e-6

    views = MultiViewAugment([[_square_crop(16, 4)], [_square_crop(8, 5)]])
    views.pipelines.reverse()
    assert [tuple(v.shape) for v in views(images)] == [(2, 8, 8, 3), (2, 16, 16, 3)]
