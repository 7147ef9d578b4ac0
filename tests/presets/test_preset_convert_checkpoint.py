"""tools/convert_checkpoint.py: torch checkpoints (weights_only) -> Keras-native presets."""

import argparse
import importlib.util
import json
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ssl
from tests.presets._preset_support import TINY_RESNET_CONFIG, tiny_resnet_state

TOOL = Path(__file__).resolve().parents[2] / "tools" / "convert_checkpoint.py"
FEATURES, HIDDEN, BOTTLENECK, OUT = 8, 16, 8, 32


def _tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_state(state, prefix=""):
    import torch

    return {prefix + k: torch.from_numpy(np.array(v)) for k, v in state.items() if k[:3] != "fc."}


def _head_state(seed, prefix):
    import torch

    g = torch.Generator().manual_seed(seed)
    shapes = {
        "mlp.0.weight": (HIDDEN, FEATURES),
        "mlp.0.bias": (HIDDEN,),
        "mlp.2.weight": (HIDDEN, HIDDEN),
        "mlp.2.bias": (HIDDEN,),
        "mlp.4.weight": (BOTTLENECK, HIDDEN),
        "mlp.4.bias": (BOTTLENECK,),
        "last_layer.weight_v": (OUT, BOTTLENECK),
    }
    state = {prefix + k: torch.randn(s, generator=g) * 0.5 for k, s in shapes.items()}
    state[prefix + "last_layer.weight_g"] = torch.rand((OUT, 1), generator=g) + 0.5
    return state


def _reference_head(state, x):
    """The official DINOHead forward written with torch functional ops."""
    import torch
    import torch.nn.functional as F

    s = {k.split("head.", 1)[1]: v for k, v in state.items() if "head." in k}
    h = torch.from_numpy(x)
    h = F.gelu(F.linear(h, s["mlp.0.weight"], s["mlp.0.bias"]))
    h = F.gelu(F.linear(h, s["mlp.2.weight"], s["mlp.2.bias"]))
    h = F.normalize(F.linear(h, s["mlp.4.weight"], s["mlp.4.bias"]), dim=-1)
    weight = torch._weight_norm(s["last_layer.weight_v"], s["last_layer.weight_g"], 0)
    return F.linear(h, weight).numpy()


def test_dino_full_checkpoint_becomes_a_dino_preset(tmp_path):
    import torch

    student = {
        **_torch_state(tiny_resnet_state(0), "module.backbone."),
        **_head_state(1, "module.head."),
    }
    teacher = {**_torch_state(tiny_resnet_state(2), "backbone."), **_head_state(3, "head.")}
    center = torch.randn((1, OUT))
    checkpoint = {
        "student": student,
        "teacher": teacher,
        "epoch": 12,
        "args": argparse.Namespace(out_dim=OUT, use_bn_in_head=False, norm_last_layer=True),
        "dino_loss": {"center": center},
    }
    path = tmp_path / "full.pth"
    torch.save(checkpoint, path)
    _tool().main(
        [
            "--checkpoint",
            str(path),
            "--output",
            str(tmp_path / "out"),
            "--method",
            "dino",
            "--converter",
            "torchvision_resnet",
            "--backbone-config",
            json.dumps(TINY_RESNET_CONFIG),
        ]
    )
    model, _ = keras_ssl.from_preset(tmp_path / "out", task="pretraining")
    assert isinstance(model, keras_ssl.DINO)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.center), center.numpy())
    for network, state in (
        (model.backbone, tiny_resnet_state(0)),
        (model.teacher_backbone, tiny_resnet_state(2)),
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(network.get_layer("bn1").moving_mean),
            state["bn1.running_mean"],
        )
    x = np.random.default_rng(0).normal(size=(3, FEATURES)).astype("float32")
    for head, state in ((model.head, student), (model.teacher_head, teacher)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(head(x)), _reference_head(state, x), rtol=1e-5, atol=1e-5
        )
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["epochs"] == 12 and metadata["method"] == "DINO"


def test_moco_state_dict_becomes_a_backbone_preset(tmp_path):
    import torch

    state = tiny_resnet_state(4)
    checkpoint = {
        "state_dict": {
            **_torch_state(state, "module.encoder_q."),
            **_torch_state(tiny_resnet_state(5), "module.encoder_k."),
            "module.queue": torch.zeros(8, 16),
        },
        "epoch": 800,
    }
    torch.save(checkpoint, tmp_path / "moco.pth.tar")
    _tool().main(
        [
            "--checkpoint",
            str(tmp_path / "moco.pth.tar"),
            "--output",
            str(tmp_path / "out"),
            "--converter",
            "torchvision_resnet",
            "--backbone-config",
            json.dumps(TINY_RESNET_CONFIG),
        ]
    )
    backbone, _ = keras_ssl.from_preset(tmp_path / "out")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.get_layer("layer2_0_conv2").kernel),
        state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0),
    )


def test_pickled_objects_are_refused(tmp_path):
    import fractions

    import torch

    torch.save({"state_dict": {}, "object": fractions.Fraction(1, 3)}, tmp_path / "bad.pth")
    with pytest.raises(Exception, match="(?i)weights_only|Unsupported global"):
        _tool().load_torch_checkpoint(tmp_path / "bad.pth")
