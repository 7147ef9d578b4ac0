import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.distributed import convert_sync_batchnorm
from keras_ssl.layers import fused_batch_norm
from keras_ssl.layers.fused_batch_norm import BatchNormalization, normalize_with_batch_statistics
from tests._support.gradients import gradients

EPSILON = 1e-5

# (shape, axis): NHWC images, NCHW images, (N, C) features.
CASES = [((4, 5, 6, 3), -1), ((4, 3, 5, 6), 1), ((16, 7), -1)]


def _moved(x, axis):
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def _reference(x, gamma, beta, axis, dy):
    """Ioffe & Szegedy (2015), Alg. 1 and its backward pass, in float64 NumPy."""
    x, dy = (a.astype(np.float64) for a in (x, dy))
    rows, upstream = _moved(x, axis), _moved(dy, axis)
    count = rows.shape[0]
    mean = rows.mean(0)
    variance = ((rows - mean) ** 2).mean(0)  # biased
    inverse_std = 1.0 / np.sqrt(variance + EPSILON)
    x_hat = (rows - mean) * inverse_std
    y = gamma * x_hat + beta
    d_beta = upstream.sum(0)
    d_gamma = (upstream * x_hat).sum(0)
    dx = gamma * inverse_std / count * (count * upstream - d_beta - x_hat * d_gamma)

    def back(a):
        shape = list(np.moveaxis(x, axis, -1).shape)
        return np.moveaxis(a.reshape(shape), -1, axis)

    return back(y), mean, variance, back(dx), d_gamma, d_beta


def _value_and_gradients(x, gamma, beta, axis, dy):
    """y, mean, variance of the op and the gradients of sum(y * dy) w.r.t. x, gamma, beta."""

    def loss(x, gamma, beta):
        y, _, _ = normalize_with_batch_statistics(x, gamma, beta, axis, EPSILON)
        return ops.sum(y * ops.convert_to_tensor(dy))

    grads = gradients(loss, x, gamma, beta)
    y, mean, variance = normalize_with_batch_statistics(x, gamma, beta, axis, EPSILON)
    values = [np.asarray(ops.convert_to_numpy(a), dtype=np.float64) for a in (y, mean, variance)]
    return [*values, *grads]


@pytest.mark.parametrize("shape,axis", CASES)
def test_matches_numpy_forward_statistics_and_gradients(shape, axis):
    rng = np.random.default_rng(0)
    channels = shape[axis]
    x = (3.0 * rng.normal(size=shape) + 1.5).astype("float32")
    gamma = rng.normal(size=channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    dy = rng.normal(size=shape).astype("float32")
    got = _value_and_gradients(x, gamma, beta, axis, dy)
    want = _reference(x, gamma.astype(np.float64), beta.astype(np.float64), axis, dy)
    names = ["y", "mean", "variance", "dx", "dgamma", "dbeta"]
    for name, a, b in zip(names, got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def _pair(shape, axis, **kwargs):
    """A Keras BatchNormalization and keras_ssl's with the same weights."""
    rng = np.random.default_rng(1)
    plain = keras.layers.BatchNormalization(axis=axis, epsilon=EPSILON, momentum=0.9, **kwargs)
    fused = BatchNormalization(axis=axis, epsilon=EPSILON, momentum=0.9, **kwargs)
    plain.build(shape)
    fused.build(shape)
    weights = [rng.normal(size=w.shape).astype("float32") for w in plain.weights]
    weights = [
        np.abs(w) if "variance" in v.path else w
        for w, v in zip(weights, plain.weights, strict=True)
    ]
    plain.set_weights(weights)
    fused.set_weights(weights)
    return plain, fused


@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("center_scale", [True, False])
def test_layer_matches_keras_batch_normalization(shape, axis, center_scale):
    plain, fused = _pair(shape, axis, center=center_scale, scale=center_scale)
    x = (2.0 * np.random.default_rng(2).normal(size=shape) - 0.5).astype("float32")
    for training in (True, False, True):
        a = ops.convert_to_numpy(plain(x, training=training))
        b = ops.convert_to_numpy(fused(x, training=training))
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    # Moving statistics: m * old + (1 - m) * batch mean / biased batch variance, twice.
    for p, f in zip(plain.weights, fused.weights, strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(f), ops.convert_to_numpy(p), rtol=1e-5, atol=1e-6, err_msg=p.path
        )


@pytest.mark.parametrize("shape,axis", CASES)
def test_mixed_bfloat16_matches_keras_batch_normalization(shape, axis):
    """16-bit inputs: keras_ssl's layer hands them to the fused kernels as they are, Keras
    computes in float32 and rounds once; both must give the same bfloat16 outputs and input
    gradients (up to one rounding step where float32 sums differ) and the same statistics."""
    plain, fused = _pair(shape, axis, dtype="mixed_bfloat16")
    rng = np.random.default_rng(5)
    x = (3.0 * rng.normal(size=shape) + 1.5).astype("float32")
    dy = rng.normal(size=shape).astype("float32")

    def output_and_input_gradient(layer):
        state = [
            [v.value for v in vs]
            for vs in (layer.trainable_variables, layer.non_trainable_variables)
        ]

        def loss(x):
            y, _ = layer.stateless_call(*state, ops.cast(x, "bfloat16"), training=True)
            return ops.sum(ops.cast(y, "float32") * ops.convert_to_tensor(dy))

        (dx,) = gradients(loss, x)
        y = layer(ops.cast(x, "bfloat16"), training=True)  # and the moving statistics
        assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
        return ops.convert_to_numpy(ops.cast(y, "float32")), dx

    (y_plain, dx_plain), (y_fused, dx_fused) = map(output_and_input_gradient, (plain, fused))
    for name, a, b in (("y", y_fused, y_plain), ("dx", dx_fused, dx_plain)):
        step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(b), 1e-30))) - 7)  # bfloat16 ulp
        assert np.all(np.abs(a - b) <= step + 1e-30), name
        assert np.mean(a != b) < 0.01, name
    for p, f in zip(plain.weights, fused.weights, strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(f), ops.convert_to_numpy(p), rtol=1e-5, atol=1e-6, err_msg=p.path
        )


def test_moving_statistics_follow_the_keras_rule():
    shape, axis = (8, 4, 4, 3), -1
    _, fused = _pair(shape, axis)
    old_mean, old_variance = (ops.convert_to_numpy(v) for v in fused.weights[2:])
    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    fused(x, training=True)
    rows = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(
        ops.convert_to_numpy(fused.moving_mean), 0.9 * old_mean + 0.1 * rows.mean(0), rtol=1e-5
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(fused.moving_variance),
        0.9 * old_variance + 0.1 * rows.var(0),  # biased, as Keras
        rtol=1e-5,
    )


def test_masks_and_sync_statistics_take_the_keras_path():
    shape = (6, 5)
    plain, fused = _pair(shape, -1)
    x = np.random.default_rng(4).normal(size=shape).astype("float32")
    mask = np.array([1, 1, 0, 1, 0, 1], bool)
    a = ops.convert_to_numpy(plain(x, training=True, mask=mask))
    b = ops.convert_to_numpy(fused(x, training=True, mask=mask))
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    model = keras.Sequential([fused])
    convert_sync_batchnorm(model)
    assert not fused._fusable()


def test_serialises():
    layer = BatchNormalization(axis=1, momentum=0.8, epsilon=1e-3, name="bn")
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, BatchNormalization)
    assert restored.get_config() == layer.get_config()


def test_configs_under_the_earlier_class_name_deserialise():
    config = keras.saving.serialize_keras_object(BatchNormalization(axis=1, momentum=0.8))
    config["registered_name"] = "keras_ssl>FusedBatchNormalization"
    config["class_name"] = "FusedBatchNormalization"
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is BatchNormalization
    assert restored.momentum == 0.8 and restored.axis == 1


class FusedBatchNormalization(BatchNormalization):
    """The layer under the class name of earlier keras_ssl builds, which keyed weight files
    `fused_batch_normalization`, `fused_batch_normalization_1`, ..."""


def _built_with(layer_class, build, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(fused_batch_norm, "BatchNormalization", layer_class)
        return build()


def _randomise(model):
    rng = np.random.default_rng(7)
    for variable in model.weights:
        if "float" in str(variable.dtype):
            variable.assign(rng.normal(size=variable.shape).astype("float32"))


def _h5_keys(path):
    import h5py

    names = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
    return names


def _assert_same_weights(loaded, saved):
    assert len(loaded.weights) == len(saved.weights)
    for a, b in zip(loaded.weights, saved.weights, strict=True):
        assert a.path == b.path
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def _resnet():
    from keras_ssl.backbones import ResNet

    return ResNet(stackwise_num_blocks=(1, 1), width=4, stem="cifar")


@pytest.mark.parametrize("layer_class", [FusedBatchNormalization, keras.layers.BatchNormalization])
def test_resnet_weight_files_of_earlier_batch_norm_classes_load(tmp_path, monkeypatch, layer_class):
    # Weight files key layers by class name: files written with Keras's own batch norm, and
    # with this layer under its earlier name, both load into today's ResNet.
    saved = _built_with(layer_class, _resnet, monkeypatch)
    assert {type(layer) for layer in saved.layers} >= {layer_class}
    _randomise(saved)
    path = str(tmp_path / "resnet.weights.h5")
    saved.save_weights(path)
    prefix = "fused_" if layer_class is FusedBatchNormalization else ""
    assert any(key.endswith(f"/{prefix}batch_normalization_2") for key in _h5_keys(path))
    loaded = _resnet()
    assert not any(type(layer) is layer_class for layer in loaded.layers)
    loaded.load_weights(path)
    _assert_same_weights(loaded, saved)


def test_method_archives_written_under_the_earlier_class_name_load(tmp_path, monkeypatch):
    # A .keras checkpoint of a method: its ResNet and its projection head's batch norms.
    import keras_ssl

    def simclr():
        return keras_ssl.SimCLR(_resnet(), projection_dim=4, hidden_dim=8)

    saved = _built_with(FusedBatchNormalization, simclr, monkeypatch)
    saved(np.zeros((2, 8, 8, 3), "float32"))
    _randomise(saved)
    path = tmp_path / "simclr.keras"
    saved.save(path)
    loaded = keras.saving.load_model(path)
    assert not any(
        type(layer) is FusedBatchNormalization
        for layer in loaded._flatten_layers(include_self=False, recursive=True)
    )
    _assert_same_weights(loaded, saved)


def test_a_batch_norm_missing_from_the_file_is_still_an_error(tmp_path):
    import h5py

    saved = _resnet()
    path = str(tmp_path / "resnet.weights.h5")
    saved.save_weights(path)
    with h5py.File(path, "a") as f:
        victim = next(key for key in _h5_keys(path) if key.endswith("/batch_normalization_2"))
        del f[victim]
    with pytest.raises(ValueError, match="expected 4 variables, but received 0"):
        _resnet().load_weights(path)


def test_files_keying_both_earlier_classes_in_one_list_are_refused(tmp_path):
    # Earlier files counted `fused_batch_normalization_k` and Keras's `batch_normalization_k`
    # apart; today both are `batch_normalization_k`: such a file cannot be matched safely.
    def model(ours):
        return keras.Sequential(
            [keras.Input((4,)), ours(name="ours"), keras.layers.BatchNormalization(name="keras")]
        )

    path = str(tmp_path / "mixed.weights.h5")
    model(FusedBatchNormalization).save_weights(path)
    with pytest.raises(ValueError, match="cannot be told"):
        model(BatchNormalization).load_weights(path)


def test_the_earlier_class_name_still_imports():
    assert fused_batch_norm.FusedBatchNormalization is BatchNormalization
