"""transformers Dinov2Model / Dinov2WithRegistersModel -> keras_ssl ViT, numerically identical.

References: transformers models with random weights, written by ``save_pretrained`` (the
published key names: ``attention.attention.query``, ``mlp.weights_in`` ...) and read
back with ``safetensors.numpy``. At other input sizes transformers' ``Dinov2Model``
resizes with ``size=(h, w)`` while the official DINOv2 code (which the published
weights were evaluated with) uses ``scale_factor=(h + 0.1) / M``: the default config
matches the official code (checked against a reference patched with it) and
``interpolation="transformers"`` matches transformers. The register models use
``size=`` with antialias in both, and are compared against transformers directly.
"""

import json

import numpy as np
import pytest

from keras_ssl.backbones import ViT
from keras_ssl.backbones.vit import swiglu_hidden_dim
from keras_ssl.presets.converters import transformers_dinov2
from tests._support.torch_reference import import_torchvision
from tests.presets._vit_parity import (
    assert_close,
    images,
    numpy_state,
    original_pos_embed,
    outputs,
    randomize_,
    to_numpy,
)

TINY = dict(
    hidden_size=48, num_hidden_layers=2, num_attention_heads=3, patch_size=14, image_size=56
)
SIZES = [(56, 56), (70, 98), (42, 28)]  # native, up non-square, down


def _transformers(tmp_path, registers=False, original=False, **extra):
    import_torchvision()
    import transformers
    from safetensors.numpy import load_file

    config_class = (
        transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config
    )
    model_class = transformers.Dinov2WithRegistersModel if registers else transformers.Dinov2Model
    config = config_class(**TINY, **extra)
    config._attn_implementation = "eager"
    model = randomize_(model_class(config), seed=5)
    if original:  # the official DINOv2 resize (scale_factor with the 0.1 offset)
        embeddings = model.embeddings
        patch = TINY["patch_size"]

        def interpolate(tokens, height, width):
            grid = (height // patch, width // patch)
            return original_pos_embed(
                embeddings.position_embeddings, *grid, 0.1, False, image_size=(height, width)
            )

        embeddings.interpolate_pos_encoding = interpolate
    model.save_pretrained(tmp_path)
    source_config = json.loads((tmp_path / "config.json").read_text())
    return model, load_file(str(tmp_path / "model.safetensors")), source_config


def _reference(model, x, masks=None):
    import torch

    with torch.no_grad():
        out = model(pixel_values=x, bool_masked_pos=masks, output_attentions=True)
    return out.last_hidden_state, out.attentions[-1]


def _check(backbone, model, sizes, what, registers=0, attention_at=((70, 98),)):
    for h, w in sizes:
        x, xt = images(h, w)
        tokens, attention = _reference(model, xt)
        out = outputs(backbone, x)
        assert_close(out["cls"], tokens[:, 0], f"{what} cls {h}x{w}")
        if registers:
            assert_close(out["registers"], tokens[:, 1 : 1 + registers], f"{what} reg {h}x{w}")
        assert_close(out["patches"], tokens[:, 1 + registers :], f"{what} patches {h}x{w}")
        if (h, w) in attention_at:
            assert_close(backbone.get_last_self_attention(x), attention, f"{what} attn {h}x{w}")


def test_backbone_config():
    config = transformers_dinov2.backbone_config(
        {
            "model_type": "dinov2",
            "hidden_size": 1536,
            "num_hidden_layers": 40,
            "num_attention_heads": 24,
            "use_swiglu_ffn": True,
            "layer_norm_eps": 1e-6,
        }
    )
    assert config["mlp"] == "swiglu" and config["layer_scale_init"] == 1.0
    assert config["use_mask_token"] and config["num_register_tokens"] == 0
    assert (config["pretrain_image_size"], config["patch_size"]) == (518, 14)
    assert config["interpolation_offset"] == 0.1 and not config["interpolation_antialias"]
    assert swiglu_hidden_dim(1536, 4.0) == 4096  # ViT-g's weights_out (1536, 4096)
    registers = transformers_dinov2.backbone_config({"model_type": "dinov2_with_registers"})
    assert registers["num_register_tokens"] == 4 and registers["mlp"] == "gelu"
    assert registers["interpolation_offset"] == 0.0 and registers["interpolation_antialias"]
    own = transformers_dinov2.backbone_config(
        {"model_type": "dinov2"}, interpolation="transformers"
    )
    assert own["interpolation_offset"] == 0.0 and not own["interpolation_antialias"]
    with pytest.raises(ValueError, match="hidden_act"):
        transformers_dinov2.backbone_config({"model_type": "dinov2", "hidden_act": "relu"})


def test_dinov2_parity_original_resize(tmp_path):
    model, weights, source_config = _transformers(tmp_path, original=True)
    backbone = ViT(**transformers_dinov2.backbone_config(source_config))
    transformers_dinov2.convert_weights(weights, backbone)
    _check(backbone, model, SIZES, "dinov2", attention_at=())  # attention: registers test
    # masked patches (iBOT / DINOv2): bool_masked_pos <-> masks
    import torch

    x, xt = images(56, 56)
    masks = np.random.default_rng(1).random((2, 16)) < 0.4
    expected, _ = _reference(model, xt, torch.from_numpy(masks))
    out = outputs(backbone, x, masks=masks)
    assert_close(out["patches"], expected[:, 1:], "dinov2 masked patches")


def test_dinov2_transformers_resize_and_the_difference(tmp_path):
    model, weights, source_config = _transformers(tmp_path)
    original_model, _, _ = _transformers(tmp_path / "original", original=True)
    config = transformers_dinov2.backbone_config(source_config, interpolation="transformers")
    backbone = ViT(**config)
    transformers_dinov2.convert_weights(weights, backbone)
    _check(backbone, model, [(70, 98), (42, 28)], "dinov2-transformers", attention_at=())
    x, xt = images(70, 98)
    gap = np.abs(to_numpy(_reference(model, xt)[0]) - to_numpy(_reference(original_model, xt)[0]))
    assert gap.max() > 1e-2, gap.max()  # the two resizes really differ


def test_registers_parity(tmp_path):
    model, weights, source_config = _transformers(tmp_path, registers=True)
    config = transformers_dinov2.backbone_config(source_config)
    assert config["num_register_tokens"] == 4
    backbone = ViT(**config)
    transformers_dinov2.convert_weights(weights, backbone)
    _check(backbone, model, SIZES, "dinov2-reg", registers=4)


def test_swiglu_parity_and_in_memory_names(tmp_path):
    model, weights, source_config = _transformers(tmp_path, original=True, use_swiglu_ffn=True)
    assert "encoder.layer.0.mlp.weights_in.weight" in weights
    backbone = ViT(**transformers_dinov2.backbone_config(source_config))
    assert backbone.get_layer("blocks_0_mlp_fc2").kernel.shape == (swiglu_hidden_dim(48), 48)
    transformers_dinov2.convert_weights(weights, backbone)
    _check(backbone, model, [(56, 56), (70, 98)], "dinov2-swiglu", attention_at=())
    # transformers >= 5 in-memory names (q_proj, gate_proj / up_proj ...) and a prefix
    again = ViT(**transformers_dinov2.backbone_config(source_config))
    state = {f"dinov2.{k}": v for k, v in numpy_state(model).items()}
    assert "dinov2.encoder.layer.0.mlp.gate_proj.weight" in state
    transformers_dinov2.convert_weights(state, again)
    for ours, theirs in zip(again.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_errors(tmp_path):
    _, weights, source_config = _transformers(tmp_path, registers=True)
    config = transformers_dinov2.backbone_config(source_config)
    no_registers = ViT(**{**config, "num_register_tokens": 0})
    with pytest.raises(ValueError) as error:
        transformers_dinov2.convert_weights(weights, no_registers)
    assert "Unexpected keys (1)" in str(error.value)
    assert "embeddings.register_tokens (1, 4, 48)" in str(error.value)
    broken = dict(weights)
    del broken["encoder.layer.0.attention.attention.key.weight"]
    broken["encoder.layer.1.layer_scale2.lambda1"] = np.ones((47,), "float32")
    with pytest.raises(ValueError) as error:
        transformers_dinov2.convert_weights(broken, ViT(**config))
    message = str(error.value)
    assert "encoder.layer.0.attention.attention.key.weight (for blocks_0_attn_qkv" in message
    assert "encoder.layer.1.layer_scale2.lambda1: expected (48,)" in message
    assert "got (47,)" in message and "layer_scale_init=1.0" in message


def test_swiglu_vit_round_trip_and_intermediate_layers():
    from keras_ssl.backbones.vit import SwiGLU

    x = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    gate, value = x[:, :4], x[:, 4:]
    expected = gate / (1.0 + np.exp(-gate)) * value  # silu(x1) * x2
    np.testing.assert_allclose(to_numpy(SwiGLU()(x)), expected, rtol=1e-5, atol=1e-6)
    model = ViT(
        patch_size=4, hidden_dim=16, depth=2, num_heads=2, pretrain_image_size=8, mlp="swiglu"
    )
    assert model.get_config()["mlp"] == "swiglu"
    clone = ViT.from_config(model.get_config())
    assert clone.count_params() == model.count_params()
    assert model.get_layer("blocks_0_mlp_fc1").kernel.shape == (16, 2 * swiglu_hidden_dim(16))
    with pytest.raises(ValueError, match="`mlp` must be one of"):
        ViT(patch_size=4, hidden_dim=16, depth=1, num_heads=2, mlp="relu")
    with pytest.raises(ValueError, match=r"`n` must be in \[1, depth=2\]"):
        model.get_intermediate_layers(np.zeros((1, 8, 8, 3), "float32"), n=3)


def test_official_dinov2_layout_through_the_timm_converter(tmp_path):
    """The official DINOv2 key names (``blocks.i.ls1.gamma``, ``mlp.w12`` / ``mlp.w3``,
    fused ``attn.qkv``, ``register_tokens``, ``mask_token``) load through ``timm_vit``
    into exactly the variables the transformers copy of the same weights gives."""
    from keras_ssl.presets.converters import timm_vit

    _, weights, source_config = _transformers(tmp_path, registers=True, use_swiglu_ffn=True)
    config = transformers_dinov2.backbone_config(source_config)
    reference = ViT(**config)
    transformers_dinov2.convert_weights(weights, reference)
    official = {
        "cls_token": weights["embeddings.cls_token"],
        "pos_embed": weights["embeddings.position_embeddings"],
        "register_tokens": weights["embeddings.register_tokens"],
        "mask_token": weights["embeddings.mask_token"],
        "norm.weight": weights["layernorm.weight"],
        "norm.bias": weights["layernorm.bias"],
    }
    for kind in ("weight", "bias"):
        official[f"patch_embed.proj.{kind}"] = weights[
            f"embeddings.patch_embeddings.projection.{kind}"
        ]
    for i in range(TINY["num_hidden_layers"]):
        old, new = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            official[f"{new}attn.qkv.{kind}"] = np.concatenate(
                [weights[f"{old}attention.attention.{n}.{kind}"] for n in ("query", "key", "value")]
            )
            for a, b in (
                ("norm1", "norm1"),
                ("norm2", "norm2"),
                ("attention.output.dense", "attn.proj"),
                ("mlp.weights_in", "mlp.w12"),
                ("mlp.weights_out", "mlp.w3"),
            ):
                official[f"{new}{b}.{kind}"] = weights[f"{old}{a}.{kind}"]
        official[f"{new}ls1.gamma"] = weights[f"{old}layer_scale1.lambda1"]
        official[f"{new}ls2.gamma"] = weights[f"{old}layer_scale2.lambda1"]
    assert len(official) == len(weights) - 4 * TINY["num_hidden_layers"]  # q, k, v fused
    backbone = ViT(**config)
    timm_vit.convert_weights(official, backbone)
    for ours, theirs in zip(backbone.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
