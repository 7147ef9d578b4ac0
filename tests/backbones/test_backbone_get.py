"""backbones.get: names to constructors."""

import keras
import pytest

from keras_ssl import backbones


def test_get_resnets():
    for name, stem, block_type in [
        ("resnet18", "imagenet", "basic"),
        ("ResNet18_CIFAR", "cifar", "basic"),
        ("resnet50", "imagenet", "bottleneck"),
        ("resnet50-cifar", "cifar", "bottleneck"),
    ]:
        model = backbones.get(name, pooling=None)
        assert isinstance(model, backbones.ResNet), name
        assert (model.stem, model.block_type, model.pooling) == (stem, block_type, None), name


def test_get_convnet():
    model = backbones.get("convnet", input_channels=1)
    assert isinstance(model, backbones.ConvNet)
    assert model.output_dim == 256


def test_get_passes_models_through():
    model = backbones.ConvNet(input_channels=1)
    assert backbones.get(model) is model
    with pytest.raises(ValueError):
        backbones.get(model, pooling=None)


def test_get_unknown_lists_known_names():
    with pytest.raises(ValueError) as info:
        backbones.get("unknown")
    message = str(info.value)
    assert "unknown" in message
    for name in ["convnet", "resnet18", "resnet18_cifar", "resnet50"]:
        assert name in message
    assert set(backbones.names()) >= {"convnet", "resnet18", "resnet18_cifar", "resnet50"}


def test_get_cifar_rejects_stem():
    with pytest.raises(ValueError):
        backbones.get("resnet18_cifar", stem="imagenet")


def test_exports():
    for name in ["ResNet", "ResNet18", "ResNet50", "ConvNet", "get"]:
        assert hasattr(backbones, name)
    assert issubclass(backbones.ResNet, keras.Model)
