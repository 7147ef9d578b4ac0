"""get_config / from_config and .keras save/load round trips."""

import keras
import numpy as np
import pytest

from keras_ssl.backbones import ConvNet, ResNet, ResNet18, ViT
from tests._support.weights import perturb_weights


def _builders():
    return {
        "convnet": lambda: ConvNet(input_channels=1),
        "resnet18_cifar": lambda: ResNet18(stem="cifar"),
    }


def _input(name):
    if name == "convnet":
        return np.random.uniform(size=(2, 28, 28, 1)).astype("float32")
    return np.random.uniform(size=(2, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("name", ["convnet", "resnet18_cifar"])
def test_config_round_trip(name):
    model = _builders()[name]()
    perturb_weights(model)
    config = model.get_config()
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    assert clone.output_dim == model.output_dim
    for target, source in zip(clone.weights, model.weights, strict=True):
        target.assign(keras.ops.convert_to_tensor(source))
    x = _input(name)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(clone(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_serialize_deserialize_keras_object():
    model = ResNet(stem="cifar", stackwise_num_blocks=(1, 1), pooling=None)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(restored, ResNet)
    assert restored.get_config() == model.get_config()


# Keras' own jax saving path trips a NumPy 2 ``__array__`` DeprecationWarning.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("name", ["convnet", "resnet18_cifar"])
def test_save_and_load(name, tmp_path):
    model = _builders()[name]()
    perturb_weights(model)
    x = _input(name)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    path = str(tmp_path / "backbone.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    assert restored.get_config() == model.get_config()
    assert restored.output_dim == model.output_dim
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(restored(x, training=False)), expected, rtol=1e-5, atol=1e-5
    )


def test_unknown_keyword_arguments_are_refused():
    # keras.Model's functional constructor would drop them without a word.
    tiny_vit = {"patch_size": 8, "hidden_dim": 16, "depth": 1, "num_heads": 2}
    with pytest.raises(TypeError, match="ViT got unexpected keyword argument.*'outptu'"):
        ViT(**tiny_vit, pretrain_image_size=16, outptu="tokens")
    with pytest.raises(TypeError, match="ConvNet got unexpected keyword argument.*'widht'"):
        ConvNet(widht=(8,))
    with pytest.raises(TypeError, match="ResNet got unexpected keyword argument.*'dtpye'"):
        ResNet18(stem="cifar", dtpye="mixed_bfloat16")
    model = ConvNet((8,), name="kept", trainable=False)
    assert model.name == "kept" and not model.trainable
