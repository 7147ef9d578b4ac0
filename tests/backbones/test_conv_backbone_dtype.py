"""The convolutional backbones' `dtype` policy: handed to every layer, saved, and computing
the float32 model's function to the policy's precision."""

import keras
import numpy as np
import pytest

from keras_ssl.backbones import ConvNet, ResNet
from tests._support.weights import perturb_weights


def _builders():
    return {
        "convnet": lambda **kw: ConvNet(widths=(8, 16), **kw),
        "resnet_cifar": lambda **kw: ResNet(stackwise_num_blocks=(1, 1), width=8, stem="cifar",
                                            **kw),
        "resnet_bottleneck": lambda **kw: ResNet(block_type="bottleneck",
                                                 stackwise_num_blocks=(1, 1), width=4, **kw),
    }  # fmt: skip


def _np(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


@pytest.mark.parametrize("name", sorted(_builders()))
@pytest.mark.parametrize(
    "policy, variables, outputs",
    [("bfloat16", "bfloat16", "bfloat16"), ("mixed_bfloat16", "float32", "bfloat16")],
)
def test_dtype_is_the_policy_of_every_layer(name, policy, variables, outputs):
    # keras.Model's functional constructor ignores `dtype`: the backbone hands it on.
    model = _builders()[name](dtype=policy)
    assert model.dtype_policy.name == policy
    assert {layer.dtype_policy.name for layer in model.layers[1:]} == {policy}
    assert {keras.backend.standardize_dtype(w.dtype) for w in model.weights} == {variables}
    for training in (False, True):
        out = model(np.zeros((2, 16, 16, 3), "float32"), training=training)
        assert keras.backend.standardize_dtype(out.dtype) == outputs
    clone = type(model).from_config(model.get_config())
    assert clone.dtype_policy.name == policy
    assert _builders()[name]().get_config()["dtype"] is None  # the global policy, as before


@pytest.mark.parametrize("name", sorted(_builders()))
def test_mixed_bfloat16_computes_the_float32_function(name):
    reference = perturb_weights(_builders()[name]())
    mixed = _builders()[name](dtype="mixed_bfloat16")
    for target, source in zip(mixed.weights, reference.weights, strict=True):
        target.assign(source.value)
    x = np.random.default_rng(1).uniform(size=(4, 16, 16, 3)).astype("float32")
    expected = _np(reference(x, training=False))
    got = _np(mixed(x, training=False))
    # bfloat16 keeps 8 significant bits: a few of its steps, after the few layers here.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.05 * scale)
    # And it is not the float32 computation under another name.
    assert np.abs(got - expected).max() > 1e-6 * scale


def test_mixed_bfloat16_backbone_trains_in_a_method():
    import keras_ssl

    backbone = _builders()["resnet_cifar"](dtype="mixed_bfloat16")
    augmenter = keras_ssl.augment.SimCLRAugment.small_images(16, seed=0)
    model = keras_ssl.SimCLR(backbone, augmenter, projection_dim=8, hidden_dim=16)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    images = np.random.default_rng(2).uniform(size=(8, 16, 16, 3)).astype("float32")
    before = [_np(w.value) for w in backbone.trainable_weights]
    logs = model.train_on_batch(images, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in backbone.weights)
    after = [_np(w.value) for w in backbone.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_preset_loads_with_a_dtype_override(tmp_path):
    import keras_ssl

    saved = perturb_weights(_builders()["resnet_cifar"]())
    keras_ssl.save_to_preset(saved, tmp_path / "resnet")
    loaded, _ = keras_ssl.from_preset(tmp_path / "resnet", dtype="mixed_bfloat16")
    assert isinstance(loaded, ResNet) and loaded.dtype_policy.name == "mixed_bfloat16"
    x = np.random.default_rng(3).uniform(size=(2, 16, 16, 3)).astype("float32")
    expected = _np(saved(x, training=False))
    np.testing.assert_allclose(
        _np(loaded(x, training=False)), expected, rtol=0, atol=0.05 * np.abs(expected).max()
    )
