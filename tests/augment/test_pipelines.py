import keras
import numpy as np
import pytest

from keras_ssl.augment import (
    AugmentationPipeline,
    ColorJitter,
    DINOMultiCrop,
    GaussianBlur,
    MultiViewAugment,
    RandomApply,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    SimCLRAugment,
    Solarize,
    blur_kernel_size,
    simclr_pipeline,
)
from tests._support.dtype_policy import global_dtype_policy

BACKEND = keras.backend.backend()


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _uint8_images(n=4, size=16, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype="uint8")


def _check_view(view, shape):
    view = _np(view)
    assert view.shape == shape and view.dtype == np.float32
    assert view.min() >= 0.0 and view.max() <= 1.0
    return view


def _all_layers():
    return [
        RandomResizedCrop(8, 8, seed=0),
        RandomHorizontalFlip(0.5, seed=1),
        ColorJitter(0.4, 0.4, 0.4, 0.1, probability=0.8, seed=2),
        RandomGrayscale(0.2, seed=3),
        GaussianBlur(3, probability=0.5, seed=4),
        Solarize(0.5, probability=0.2, seed=5),
        RandomApply(RandomGrayscale(1.0, seed=6), probability=0.5, seed=7),
    ]


def test_random_apply_per_image():
    x = np.repeat(np.random.uniform(size=(1, 5, 5, 3)).astype("float32"), 24, axis=0)
    y = _np(RandomApply(Solarize(0.5, probability=1.0), probability=0.5, seed=0)(x))
    solarized = np.where(x[0] >= 0.5, 1 - x[0], x[0])
    is_sol = np.array([np.allclose(y[n], solarized) for n in range(24)])
    is_id = np.array([np.allclose(y[n], x[0]) for n in range(24)])
    assert np.all(is_sol ^ is_id) and 0 < is_sol.sum() < 24


def test_multiview_multicrop_shapes_and_uint8():
    augment = MultiViewAugment(
        [
            [RandomResizedCrop(12, 12, seed=0), RandomHorizontalFlip(seed=1)],
            AugmentationPipeline([RandomResizedCrop(6, 6, scale=(0.05, 0.4), seed=2)]),
        ]
    )
    assert augment.num_views == 2
    views = augment(_uint8_images())
    assert isinstance(views, tuple) and len(views) == 2
    _check_view(views[0], (4, 12, 12, 3))
    _check_view(views[1], (4, 6, 6, 3))
    assert augment.compute_output_shape((4, 16, 16, 3)) == ((4, 12, 12, 3), (4, 6, 6, 3))


def _integer_images(dtype):
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(0)
    images = rng.integers(0, top, size=(2, 6, 6, 3), endpoint=True).astype(dtype)
    images[0, 0, 0] = top
    return images, images.astype("float64") / top


def _backend_tensor(images):
    if BACKEND == "torch":  # Keras's own conversion turns uint16 into int32 on torch
        import torch

        return torch.from_numpy(images)
    return keras.ops.convert_to_tensor(images)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_integer_images_are_scaled_by_the_range_of_their_dtype(dtype):
    # torchvision: ToTensor reads 8-bit images / 255; convert_image_dtype reads uint16
    # (16-bit PNG) images / 65535.
    import tensorflow as tf

    images, expected = _integer_images(dtype)
    layers = [
        RandomHorizontalFlip(0.0, seed=0),
        MultiViewAugment(
            [[RandomHorizontalFlip(0.0, seed=1)], [Solarize(probability=0.0, seed=2)]]
        ),
    ]
    for layer in layers:
        for inputs in (images, _backend_tensor(images)):
            outputs = layer(inputs)
            for view in outputs if isinstance(outputs, tuple) else [outputs]:
                assert keras.backend.standardize_dtype(view.dtype) == "float32"
                np.testing.assert_allclose(_np(view), expected, rtol=1e-6, err_msg=dtype)
        batch = next(iter(tf.data.Dataset.from_tensor_slices(images).batch(2).map(layer)))
        for view in batch if isinstance(batch, tuple) else [batch]:
            np.testing.assert_allclose(view.numpy(), expected, rtol=1e-6, err_msg=dtype)


def test_simclr_views_are_independent_per_image():
    x = np.repeat(_uint8_images(n=1), 4, axis=0)
    view_1, view_2 = SimCLRAugment(16, seed=0)(x)
    v1 = _check_view(view_1, (4, 16, 16, 3))
    v2 = _check_view(view_2, (4, 16, 16, 3))
    assert not np.allclose(v1, v2)
    assert not np.allclose(v1[0], v1[1]) and not np.allclose(v2[2], v2[3])


def test_simclr_seeds_and_small_images():
    x = _uint8_images()
    a = [_np(v) for v in SimCLRAugment(16, seed=11)(x)]
    b = [_np(v) for v in SimCLRAugment(16, seed=11)(x)]
    c = [_np(v) for v in SimCLRAugment(16, seed=12)(x)]
    np.testing.assert_allclose(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])
    assert not np.allclose(a[0], c[0])

    small = SimCLRAugment.small_images(16, seed=0)
    assert small.get_config()["jitter_strength"] == 0.5
    assert small.get_config()["blur_probability"] == 0.0
    layers = small.pipelines[0].layers
    assert not any(isinstance(layer, GaussianBlur) for layer in layers)
    jitter = next(layer for layer in layers if isinstance(layer, ColorJitter))
    np.testing.assert_allclose(jitter.brightness, (0.6, 1.4))
    np.testing.assert_allclose(jitter.hue, (-0.1, 0.1))
    assert (blur_kernel_size(224), blur_kernel_size(96), blur_kernel_size(32)) == (23, 9, 3)
    full = simclr_pipeline(224).layers
    assert [type(layer).__name__ for layer in full] == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "RandomGrayscale",
        "GaussianBlur",
    ]
    assert full[-1].kernel_size == 23 and full[-1].probability == 0.5
    assert full[0].interpolation == "bicubic"  # the official TensorFlow code's crop
    bilinear = SimCLRAugment(16, interpolation="bilinear")
    assert bilinear.get_config()["interpolation"] == "bilinear"
    assert all(p.layers[0].interpolation == "bilinear" for p in bilinear.pipelines)


def test_tf_data_pipeline():
    import tensorflow as tf

    for channels in (3, 1):
        x = _uint8_images(n=8, channels=channels)
        ds = tf.data.Dataset.from_tensor_slices(x).batch(4).map(SimCLRAugment(16, seed=0))
        batches = list(ds)
        assert len(batches) == 2
        for view_1, view_2 in batches:
            assert isinstance(view_1, tf.Tensor)
            _check_view(view_1.numpy(), (4, 16, 16, channels))
            _check_view(view_2.numpy(), (4, 16, 16, channels))

    floats = np.random.uniform(size=(6, 16, 16, 3)).astype("float32")
    pipeline = AugmentationPipeline(_all_layers())
    out = [b.numpy() for b in tf.data.Dataset.from_tensor_slices(floats).batch(3).map(pipeline)]
    assert [o.shape for o in out] == [(3, 8, 8, 3), (3, 8, 8, 3)]
    assert min(o.min() for o in out) >= 0.0 and max(o.max() for o in out) <= 1.0

    # Unbatched elements.
    crop = RandomResizedCrop(8, 8, seed=0)
    single = next(iter(tf.data.Dataset.from_tensor_slices(floats).map(crop)))
    assert tuple(single.shape) == (8, 8, 3)


def test_compiled():
    x = _uint8_images().astype("float32") / 255.0
    augment = SimCLRAugment(16, seed=0)
    if BACKEND == "jax":
        import jax

        augment(x)  # builds the layer
        state = [v.value for v in augment.non_trainable_variables]
        step = jax.jit(lambda values, images: augment.stateless_call([], values, images))
        views, new_state = step(state, x)
        views_again, _ = step(new_state, x)
        assert not np.allclose(_np(views[0]), _np(views_again[0]))
        views_same, _ = step(state, x)
        np.testing.assert_allclose(_np(views[0]), _np(views_same[0]))
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        step = tf.function(augment, jit_compile=True)
        views = step(tf.constant(x))
        views_again = step(tf.constant(x))
        assert not np.allclose(_np(views[0]), _np(views_again[0]))
    else:
        views = augment(x)
    for view in views:
        _check_view(view, (4, 16, 16, 3))


def test_inside_keras_model():
    # ``predict`` is compiled (XLA) on TF and JAX, eager on torch.
    x = np.random.uniform(size=(4, 16, 16, 3)).astype("float32")
    inputs = keras.Input((16, 16, 3))
    augment = MultiViewAugment([[RandomResizedCrop(8, 8, seed=1), RandomHorizontalFlip(seed=2)]])
    model = keras.Model(inputs, augment(inputs))
    model.compile(jit_compile=BACKEND != "torch")
    predicted = model.predict(x, batch_size=4, verbose=0)
    predicted = predicted[0] if isinstance(predicted, (list, tuple)) else predicted
    _check_view(predicted, (4, 8, 8, 3))


def _recipes():
    return [
        SimCLRAugment(16, seed=3),
        SimCLRAugment.small_images(32, crop_scale=(0.2, 1.0)),
        MultiViewAugment([[RandomResizedCrop(8, 8, seed=0)], RandomHorizontalFlip(seed=1)]),
        AugmentationPipeline([RandomResizedCrop(8, 8), Solarize(0.4, probability=0.3)]),
    ]


@pytest.mark.parametrize("index", range(len(_all_layers()) + len(_recipes())))
def test_config_round_trip(index):
    layer = (_all_layers() + _recipes())[index]
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == config
    if isinstance(layer, MultiViewAugment):
        assert restored.num_views == layer.num_views


def test_round_trip_reproduces_outputs():
    x = np.random.uniform(size=(4, 16, 16, 3)).astype("float32")
    layer = SimCLRAugment(16, seed=9)
    clone = SimCLRAugment.from_config(SimCLRAugment(16, seed=9).get_config())
    for a, b in zip(layer(x), clone(x), strict=True):
        np.testing.assert_allclose(_np(a), _np(b))


class _Gain(keras.layers.Layer):
    """A user's layer whose factor is set outside its config."""

    gain = 1.0

    def call(self, images):
        return images * self.gain


def test_eager_calls_of_user_layers_do_not_share_compiled_functions():
    # On JAX eager calls run through cached jax.jit functions; only keras_ssl's own layers,
    # which their configs describe fully, may share one.
    images = np.full((2, 4, 4, 3), 0.25, "float32")
    for gain in (1.0, 2.0, 3.0):
        layer = _Gain()
        layer.gain = gain
        np.testing.assert_allclose(_np(RandomApply(layer, probability=1.0)(images)), 0.25 * gain)


def _grey(view):
    view = _np(view)
    return np.all(np.abs(view - view[..., :1]) < 1e-6, axis=(1, 2, 3))


def test_eager_calls_follow_sub_layers_changed_after_construction():
    # On JAX eager calls run through cached jax.jit functions keyed by configuration. A
    # recipe's config holds only its arguments: the key must cover its sub-layers, or a
    # changed sub-layer would run the function traced before the change.
    images = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype("float32")
    augment, twin = SimCLRAugment(16, seed=0), SimCLRAugment(16, seed=0)
    assert not all(_grey(view).all() for view in augment(images))
    greyscales = [
        layer
        for pipeline in augment.pipelines
        for layer in pipeline.layers
        if isinstance(layer, RandomGrayscale)
    ]
    assert len(greyscales) == 2
    for layer in greyscales:
        layer.probability = 1.0
    for _ in range(2):  # on TensorFlow the second call runs a tf.function of the layer
        assert all(_grey(view).all() for view in augment(images))
    # The unchanged twin (same arguments) keeps its own behaviour.
    assert not all(_grey(view).all() for view in twin(images))
    for layer in greyscales:
        layer.probability = 0.0
    for _ in range(2):
        assert not any(_grey(view).any() for view in augment(images))


def _op_by_op(layer):
    for inner in layer._flatten_layers(include_self=True, recursive=True):
        inner._jit_eager = False
    return layer


def _compiled_and_op_by_op_pairs():
    return [
        lambda: RandomResizedCrop(13, 19, seed=1),
        lambda: RandomResizedCrop(31, 17, interpolation="bicubic", seed=1),
        lambda: ColorJitter(0.4, 0.4, 0.2, 0.1, probability=0.8, seed=3),
        lambda: GaussianBlur(5, probability=1.0, seed=5),
        lambda: SimCLRAugment(15, seed=7),
        lambda: DINOMultiCrop((25, 21), local_size=11, num_local_crops=3, seed=10),
    ]


@pytest.mark.skipif(BACKEND == "torch", reason="torch runs eager calls op by op")
@pytest.mark.parametrize("index", range(len(_compiled_and_op_by_op_pairs())))
def test_eager_calls_compiled_as_a_whole_give_the_op_by_op_views(index):
    # Eager calls run as one jax.jit function on JAX and, from a layer's second call, as a
    # tf.function on TensorFlow, whose graph optimizer must find nothing to rewrite
    # (`x / c`, `x + y - c`): the views are those of op-by-op calls, on TensorFlow to the
    # last bit, on JAX up to XLA's fusions. Odd sizes: no power-of-two constants.
    make = _compiled_and_op_by_op_pairs()[index]
    compiled, reference = make(), _op_by_op(make())
    images = np.random.default_rng(index).uniform(size=(16, 27, 23, 3)).astype("float32")
    for _ in range(3):
        views, expected = compiled(images, training=True), reference(images, training=True)
        views = views if isinstance(views, tuple) else (views,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for view, want in zip(views, expected, strict=True):
            if BACKEND == "tensorflow":
                np.testing.assert_array_equal(_np(view), _np(want))
            else:
                np.testing.assert_allclose(_np(view), _np(want), atol=1e-5)
    if BACKEND == "tensorflow":
        assert [f is not None for f in compiled._tf_functions.values()] == [True]
        assert "_tf_functions" not in reference.__dict__


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the tf.function of eager TensorFlow calls")
def test_eager_tensorflow_calls_trace_once_for_any_batch_size():
    augment = SimCLRAugment.small_images(16, seed=0)
    for n in (4, 4, 6, 3, 5, 4):
        views = augment(_uint8_images(n=n, size=16))
        assert [tuple(view.shape) for view in views] == [(n, 16, 16, 3)] * 2
    (function,) = augment._tf_functions.values()
    # The first call ran op by op; then one trace for batches of 4 and one for any size.
    assert function.experimental_get_tracing_count() == 2


def test_equal_pipelines_share_one_compiled_function():
    from keras_ssl.augment._base import _jitted_stateless_call, _StaticLayer

    # Seeds and names aside, equal recipes make equal keys; a changed sub-layer does not.
    first, second = SimCLRAugment(16, seed=0), SimCLRAugment(16, seed=5, name="other")
    assert _StaticLayer(first) == _StaticLayer(second)
    assert hash(_StaticLayer(first)) == hash(_StaticLayer(second))
    second.pipelines[1].layers[-1].probability = 0.25  # the blur of view 2
    assert _StaticLayer(first) != _StaticLayer(second)
    if BACKEND == "jax":
        images = _uint8_images(n=4, size=16)
        first(images)
        compiled = _jitted_stateless_call()._cache_size()
        SimCLRAugment(16, seed=7)(images)
        assert _jitted_stateless_call()._cache_size() == compiled


def test_views_stay_float32_under_mixed_precision():
    images = _uint8_images(n=4, size=16)
    reference = _np(SimCLRAugment.small_images(16, seed=3)(images)[0])
    with global_dtype_policy("mixed_bfloat16"):
        augment = SimCLRAugment.small_images(16, seed=3)
    views = augment(images)
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in views)
    np.testing.assert_allclose(_np(views[0]), reference, atol=1e-6)


def test_replicas_draw_different_crops_from_one_generator_state(monkeypatch):
    # Under tf.distribute or torch DDP every replica holds the same generator state; each
    # must take its own slice of one draw for all replicas.
    from keras_ssl.ops import distributed

    images = _uint8_images(n=4, size=16)

    def views(world, replica):
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "replica_id", lambda: replica)
        # (eager calls with world_size() > 1 run op by op, not through compiled functions)
        return _np(RandomResizedCrop(8, 8, seed=4)(images, training=True))

    first, second = views(2, 0), views(2, 1)
    assert not np.allclose(first, second)
    assert not np.allclose(views(1, 0), views(3, 2))
    np.testing.assert_array_equal(views(2, 0), first)  # each replica's draw is reproducible
