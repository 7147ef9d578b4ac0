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
    model = _convert_full(tmp_path, path)
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


def _official_head(in_dim, out_dim, nlayers, use_bn, seed, hidden_dim=20, bottleneck_dim=12):
    """A torch module with the official DINOHead's layout and forward (written from its
    description: ``mlp`` = one Linear when ``nlayers == 1``, else Linear [-> BatchNorm1d] ->
    GELU blocks then a Linear to the bottleneck; L2 normalisation; weight-normalised
    ``last_layer``), with random weights, batch-norm statistics and ``weight_g``."""
    import warnings

    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            if nlayers == 1:
                self.mlp = nn.Linear(in_dim, bottleneck_dim)
            else:
                layers, width = [], in_dim
                for _ in range(nlayers - 1):
                    layers.append(nn.Linear(width, hidden_dim))
                    layers.extend([nn.BatchNorm1d(hidden_dim)] if use_bn else [])
                    layers.append(nn.GELU())
                    width = hidden_dim
                self.mlp = nn.Sequential(*layers, nn.Linear(width, bottleneck_dim))
            with warnings.catch_warnings():  # deprecated, but what the official code calls
                warnings.simplefilter("ignore", FutureWarning)
                self.last_layer = nn.utils.weight_norm(
                    nn.Linear(bottleneck_dim, out_dim, bias=False)
                )

        def forward(self, x):
            return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1))

    head = Head()
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 1.5)
        head.last_layer.weight_g.uniform_(0.5, 1.5)
    return head.eval()


def _torch_output(head, x):
    import torch

    with torch.no_grad():
        return head(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("use_bn", [False, True])
@pytest.mark.parametrize("nlayers", [1, 2, 3])
def test_official_head_of_any_depth_converts(tmp_path, nlayers, use_bn):
    import torch

    from keras_ssl.layers import DINOHead
    from keras_ssl.presets.converters import dino_head

    head = _official_head(FEATURES, OUT, nlayers, use_bn, seed=nlayers)
    torch.save({"head": head.state_dict()}, tmp_path / "head.pth")
    state = _tool().to_numpy(_tool().load_torch_checkpoint(tmp_path / "head.pth")["head"])
    config = dino_head.head_config(state)
    expected = {"output_dim": OUT, "bottleneck_dim": 12, "num_layers": nlayers}
    expected["use_bn"] = use_bn and nlayers > 1  # the official one-layer head has no BN
    expected.update({"hidden_dim": 20} if nlayers > 1 else {})
    assert config == expected
    keras_head = DINOHead(**config, norm_last_layer=False)
    keras_head.build((None, FEATURES))
    dino_head.convert_weights(state, keras_head)
    x = np.random.default_rng(0).normal(size=(5, FEATURES)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras_head(x, training=False)),
        _torch_output(head, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_parametrized_weight_norm_head_converts():
    import torch

    from keras_ssl.layers import DINOHead
    from keras_ssl.presets.converters import dino_head

    head = _official_head(FEATURES, OUT, 1, False, seed=7)
    state = {k: v for k, v in head.state_dict().items() if "last_layer" not in k}
    weight = torch.nn.Linear(12, OUT, bias=False)
    with torch.no_grad():  # the head's effective weight (its `.weight` is set in forward)
        old = head.last_layer
        weight.weight.copy_(torch._weight_norm(old.weight_v, old.weight_g, 0))
    weight = torch.nn.utils.parametrizations.weight_norm(weight)
    state.update({f"last_layer.{k}": v for k, v in weight.state_dict().items()})
    assert "last_layer.parametrizations.weight.original0" in state
    state = _tool().to_numpy(state)
    keras_head = DINOHead(**dino_head.head_config(state), norm_last_layer=False)
    keras_head.build((None, FEATURES))
    dino_head.convert_weights(state, keras_head)
    x = np.random.default_rng(1).normal(size=(5, FEATURES)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras_head(x)), _torch_output(head, x), rtol=1e-5, atol=1e-5
    )


# main_dino.py arguments, none at keras_ssl.DINO's default.
DINO_TRAINING_ARGS = {
    "arch": "resnet18",
    "patch_size": 16,
    "out_dim": OUT,
    "norm_last_layer": False,
    "momentum_teacher": 0.99,
    "warmup_teacher_temp": 0.03,
    "teacher_temp": 0.05,
    "warmup_teacher_temp_epochs": 7,
    "weight_decay": 0.05,
    "weight_decay_end": 0.3,
    "freeze_last_layer": 2,
    "drop_path_rate": 0.1,
    "local_crops_number": 6,
    "global_crops_scale": (0.4, 1.0),
}


def _full_checkpoint(nlayers, use_bn, path):
    import torch

    heads = [_official_head(FEATURES, OUT, nlayers, use_bn, seed=10 + i) for i in range(2)]
    checkpoint = {
        "student": {
            **_torch_state(tiny_resnet_state(0), "module.backbone."),
            **{"module.head." + k: v for k, v in heads[0].state_dict().items()},
        },
        "teacher": {
            **_torch_state(tiny_resnet_state(2), "backbone."),
            **{"head." + k: v for k, v in heads[1].state_dict().items()},
        },
        "epoch": 5,
        "args": argparse.Namespace(use_bn_in_head=use_bn, **DINO_TRAINING_ARGS),
        "dino_loss": {"center": torch.randn((1, OUT))},
    }
    torch.save(checkpoint, path)
    return heads


def _convert_full(tmp_path, path):
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
    return model


@pytest.mark.parametrize("use_bn", [False, True])
@pytest.mark.parametrize("nlayers", [1, 2, 3])
def test_dino_full_checkpoint_keeps_the_head_sizes_and_training_options(tmp_path, nlayers, use_bn):
    student_head, teacher_head = _full_checkpoint(nlayers, use_bn, tmp_path / "full.pth")
    model = _convert_full(tmp_path, tmp_path / "full.pth")
    assert (model.head_layers, model.head.num_layers) == (nlayers, nlayers)
    assert model.head.bottleneck_dim == 12 and model.output_dim == OUT
    if nlayers > 1:
        assert model.head.hidden_dim == 20
    assert model.head.use_bn == (use_bn and nlayers > 1)
    assert model.head.last_layer_g.trainable  # norm_last_layer=False
    options = {
        "norm_last_layer": False,
        "momentum": 0.99,
        "final_momentum": 1.0,
        "warmup_teacher_temperature": 0.03,
        "teacher_temperature": 0.05,
        "warmup_teacher_temperature_epochs": 7,
        "student_temperature": 0.1,
        "center_momentum": 0.9,
        "weight_decay": 0.05,
        "final_weight_decay": 0.3,
        "freeze_last_layer_epochs": 2,
    }
    assert {name: getattr(model, name) for name in options} == options
    x = np.random.default_rng(0).normal(size=(6, FEATURES)).astype("float32")
    for keras_head, torch_head in ((model.head, student_head), (model.teacher_head, teacher_head)):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(keras_head(x, training=False)),
            _torch_output(torch_head, x),
            rtol=1e-5,
            atol=1e-5,
        )
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["original_args"]["global_crops_scale"] == [0.4, 1.0]
    assert metadata["original_args"]["local_crops_number"] == 6


def test_dino_args_saved_as_a_dict_of_strings(tmp_path):
    # A fork that saves `args` as a dict read from a config file: "False" is False, not
    # bool("False"); a value that is no flag stops the conversion with its name.
    import torch

    _full_checkpoint(2, False, tmp_path / "full.pth")
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(tmp_path / "full.pth", weights_only=True)
    checkpoint["args"] = {**vars(checkpoint["args"]), "norm_last_layer": "False"}
    torch.save(checkpoint, tmp_path / "dict.pth")
    assert _convert_full(tmp_path, tmp_path / "dict.pth").head.last_layer_g.trainable
    checkpoint["args"]["norm_last_layer"] = "True"
    torch.save(checkpoint, tmp_path / "dict.pth")
    assert not _convert_full(tmp_path / "b", tmp_path / "dict.pth").head.last_layer_g.trainable
    checkpoint["args"]["norm_last_layer"] = "maybe"
    torch.save(checkpoint, tmp_path / "dict.pth")
    with pytest.raises(SystemExit, match="Cannot read 'maybe'.*boolean flag"):
        _convert_full(tmp_path / "c", tmp_path / "dict.pth")


def test_dino_full_checkpoint_of_another_patch_size_is_refused():
    checkpoint = {
        "student": {},
        "teacher": {},
        "args": argparse.Namespace(arch="vit_small", patch_size=8),
    }
    with pytest.raises(SystemExit, match="patch_size 8.*patch_size 16"):
        _tool().convert_dino_full(checkpoint, None, None, "timm_vit", {"patch_size": 16}, "ViT")


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
