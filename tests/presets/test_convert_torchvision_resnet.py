"""torchvision ResNet -> keras_ssl ResNet: parity with torchvision and checkpoint prefixes."""

import keras
import numpy as np
import pytest

from keras_ssl.backbones import ResNet
from keras_ssl.presets.converters import torchvision_resnet
from tests._support.torch_reference import import_torchvision
from tests.presets._preset_support import TINY_RESNET_CONFIG, tiny_resnet_state


def _randomise(model, torch):
    """Random weights and batch-norm statistics, so no layer is an identity."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


@pytest.mark.parametrize("block", ["bottleneck", "basic"])
def test_matches_torchvision(block):
    """torchvision's own ResNet class with 1-2 blocks a stage (ResNet-50's bottleneck with
    its layer1 projection shortcut and stride-2 3x3 convs; ResNet-18's basic block), random
    weights and statistics, 64 px; ResNet-50 itself differs only in block counts."""
    torchvision = import_torchvision()
    import torch

    torch.manual_seed(0)
    blocks = [1, 2, 1, 1]
    cls = torchvision.models.resnet.Bottleneck if block == "bottleneck" else None
    cls = cls or torchvision.models.resnet.BasicBlock
    reference = _randomise(torchvision.models.resnet.ResNet(cls, blocks), torch)
    reference.fc = torch.nn.Identity()
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    config = torchvision_resnet.backbone_config({"depth": 50 if block == "bottleneck" else 18})
    backbone = ResNet(**{**config, "stackwise_num_blocks": blocks})
    torchvision_resnet.convert_weights(state, backbone)

    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    actual = keras.ops.convert_to_numpy(backbone(images, training=False))
    assert expected.shape == actual.shape == (2, 2048 if block == "bottleneck" else 512)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual / scale, expected / scale, atol=1e-4)


def test_backbone_config_depths():
    config = torchvision_resnet.backbone_config({"architecture": "resnet50"})
    assert config["block_type"] == "bottleneck" and config["stackwise_num_blocks"] == [3, 4, 6, 3]
    config = torchvision_resnet.backbone_config({"arch": "resnet101"})
    assert config["stackwise_num_blocks"] == [3, 4, 23, 3]
    assert torchvision_resnet.backbone_config({"depth": 34})["block_type"] == "basic"


def test_checkpoint_prefixes():
    state = tiny_resnet_state()
    backbone = ResNet(**TINY_RESNET_CONFIG)
    for shift, prefix in enumerate(
        ["module.encoder_q.", "module.backbone.", "backbone.", "module.", ""]
    ):
        weights = {prefix + k: v + shift for k, v in state.items()}
        if prefix == "module.encoder_q.":  # MoCo: the key encoder and queue are ignored
            weights.update({"module.encoder_k." + k: v - 1 for k, v in state.items()})
            weights["module.queue"] = np.zeros((8, 16), "float32")
        torchvision_resnet.convert_weights(weights, backbone)
        kernel = keras.ops.convert_to_numpy(backbone.get_layer("layer1_0_conv2").kernel)
        expected = weights[prefix + "layer1.0.conv2.weight"].transpose(2, 3, 1, 0)
        np.testing.assert_array_equal(kernel, expected)
        bn = backbone.get_layer("layer2_0_downsample_1")
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(bn.gamma), weights[prefix + "layer2.0.downsample.1.weight"]
        )


def test_errors_name_the_keys():
    state = tiny_resnet_state()
    backbone = ResNet(**TINY_RESNET_CONFIG)
    before = [keras.ops.convert_to_numpy(w) for w in backbone.weights]
    broken = dict(state)
    del broken["layer1.0.bn2.running_var"]
    broken["layer3.0.conv1.weight"] = np.zeros((1, 1, 1, 1), "float32")
    broken["layer2.0.conv2.weight"] = np.zeros((8, 4, 3, 3), "float32")
    with pytest.raises(ValueError) as info:
        torchvision_resnet.convert_weights(broken, backbone)
    message = str(info.value)
    assert "missing keys ['layer1.0.bn2.running_var']" in message
    assert "unexpected keys ['layer3.0.conv1.weight']" in message
    assert "layer2.0.conv2: checkpoint [(3, 3, 4, 8)] vs Keras [(3, 3, 8, 8)]" in message
    for a, b in zip(before, backbone.weights, strict=True):  # nothing half-assigned
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    with pytest.raises(ValueError, match="expected a key 'conv1.weight'"):
        torchvision_resnet.convert_weights({"encoder.stem.weight": np.zeros(1)}, backbone)
    with pytest.raises(ValueError, match="resnet50d"):
        torchvision_resnet.backbone_config({"architecture": "resnet50d"})
