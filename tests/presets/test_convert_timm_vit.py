"""timm / official DINO ViT checkpoints -> keras_ssl ViT, numerically identical to timm.

The reference is timm's ``VisionTransformer`` with random weights, saved to safetensors
and read back with ``safetensors.numpy`` (the registry's path). At the pretrain size the
model is compared as is; at other sizes timm's own resize (``size=``, antialias) differs
from the official DINO code the published weights were evaluated with, so the reference
gets DINO's ``interpolate_pos_encoding`` (``scale_factor=(h + 0.1) / M``, no antialias)
and our default config matches that; ``interpolation="timm"`` is checked against timm's
own resize.
"""

import types

import numpy as np
import pytest

from keras_ssl.backbones import ViT
from keras_ssl.presets.converters import timm_vit
from tests._support.torch_reference import import_timm
from tests.presets._vit_parity import (
    assert_close,
    images,
    numpy_state,
    original_pos_embed,
    outputs,
    randomize_,
    to_numpy,
)

ARGS = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
MODEL_ARGS = {"model_args": {**ARGS}}
SIZES = [(32, 32), (40, 56), (24, 16)]  # native, up non-square, down


def _timm(tmp_path, original=True, **extra):
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    timm = import_timm()
    model = timm.models.vision_transformer.VisionTransformer(
        **ARGS, num_classes=0, dynamic_img_size=True, **extra
    )
    randomize_(model, seed=3)
    if original:  # the official DINO resize instead of timm's

        def forward_features(self, x):
            # DINO tests the image's size, not the grid's; its patch convolution drops the
            # pixels past the last whole patch, which timm's refuses to see.
            self.pixel_size = height, width = x.shape[-2:]
            patch = ARGS["patch_size"]
            x = x[..., : height // patch * patch, : width // patch * patch]
            return type(self).forward_features(self, x)

        def _pos_embed(self, x):
            batch, h, w, dim = x.shape
            pos = original_pos_embed(
                self.pos_embed, h, w, offset=0.1, antialias=False, image_size=self.pixel_size
            )
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)], 1)
            return tokens + pos

        model.forward_features = types.MethodType(forward_features, model)
        model._pos_embed = types.MethodType(_pos_embed, model)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, load_file(str(path))


def _reference(model, x):
    """Final-norm tokens, the last block's attention, and the normed last-2 block tokens."""
    import torch

    captured = {}
    blocks = model.blocks
    hooks = [blocks[-1].norm1.register_forward_hook(lambda m, i, o: captured.update(a=o))]
    for j in (-2, -1):
        hooks.append(blocks[j].register_forward_hook(lambda m, i, o, j=j: captured.update({j: o})))
    with torch.no_grad():
        tokens = model.forward_features(x)
        attn = blocks[-1].attn
        batch, length, dim = captured["a"].shape
        qkv = attn.qkv(captured["a"]).reshape(batch, length, 3, attn.num_heads, -1)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * attn.head_dim**-0.5, dim=-1)
        intermediate = [model.norm(captured[j]) for j in (-2, -1)]
    for hook in hooks:
        hook.remove()
    return tokens, weights, intermediate


def test_backbone_config_from_timm_name_and_model_args():
    config = timm_vit.backbone_config(
        {"architecture": "vit_small_patch8_224", "pretrained_cfg": {"input_size": [3, 224, 224]}}
    )
    assert (config["hidden_dim"], config["depth"], config["num_heads"]) == (384, 12, 6)
    assert (config["patch_size"], config["pretrain_image_size"]) == (8, 224)
    assert config["layer_norm_epsilon"] == 1e-6 and config["mlp"] == "gelu"
    assert config["interpolation_offset"] == 0.1 and not config["interpolation_antialias"]
    assert not config["use_mask_token"] and config["layer_scale_init"] is None
    timm_config = timm_vit.backbone_config(MODEL_ARGS, interpolation="timm")
    assert (timm_config["hidden_dim"], timm_config["pretrain_image_size"]) == (48, 32)
    assert timm_config["interpolation_offset"] == 0.0 and timm_config["interpolation_antialias"]
    with pytest.raises(ValueError, match="Unsupported timm architecture"):
        timm_vit.backbone_config({"architecture": "deit_small_distilled_patch16_224"})
    with pytest.raises(ValueError, match="interpolation"):
        timm_vit.backbone_config(MODEL_ARGS, interpolation="bilinear")


def test_dino_parity_any_size(tmp_path):
    model, weights = _timm(tmp_path)
    backbone = ViT(**timm_vit.backbone_config(MODEL_ARGS))
    timm_vit.convert_weights(weights, backbone)
    for h, w in SIZES:
        x, xt = images(h, w)
        tokens, attention, intermediate = _reference(model, xt)
        out = outputs(backbone, x)
        assert_close(out["cls"], tokens[:, 0], f"timm cls {h}x{w}")
        assert_close(out["patches"], tokens[:, 1:], f"timm patches {h}x{w}")
        for j in range(2):
            assert_close(out["blocks"][j], intermediate[j], f"timm block {j - 2} {h}x{w}")
        if (h, w) == (40, 56):
            assert_close(backbone.get_last_self_attention(x), attention, f"timm attn {h}x{w}")


def test_dino_parity_non_square_image_with_the_pretrain_grid(tmp_path):
    # 32 x 39 and 38 x 32 pixels give the 4 x 4 pretrain grid, but DINO keeps the stored
    # embeddings only for a square image: these are resampled with scale (4 + 0.1) / 4.
    model, weights = _timm(tmp_path)
    backbone = ViT(**timm_vit.backbone_config(MODEL_ARGS))
    timm_vit.convert_weights(weights, backbone)
    stored = model.pos_embed.detach()
    for h, w in ((32, 32), (32, 39), (38, 32)):
        x, xt = images(h, w)
        tokens, attention, intermediate = _reference(model, xt)
        out = outputs(backbone, x)
        assert_close(out["cls"], tokens[:, 0], f"timm cls {h}x{w}", 1e-5)
        assert_close(out["patches"], tokens[:, 1:], f"timm patches {h}x{w}", 1e-5)
        for j in range(2):
            assert_close(out["blocks"][j], intermediate[j], f"block {j - 2} {h}x{w}", 1e-5)
        assert_close(backbone.get_last_self_attention(x), attention, f"attn {h}x{w}", 1e-5)
        resampled = original_pos_embed(stored, 4, 4, 0.1, False, image_size=(h, w))
        gap = np.abs(to_numpy(resampled) - to_numpy(stored)).max()
        assert (gap > 0.1) == (h != w), (h, w, gap)  # the resample really moves them


def test_timm_own_resize_and_the_difference(tmp_path):
    timm_model, weights = _timm(tmp_path, original=False)
    dino_model, _ = _timm(tmp_path, original=True)
    backbone = ViT(**timm_vit.backbone_config(MODEL_ARGS, interpolation="timm"))
    timm_vit.convert_weights(weights, backbone)
    for h, w in ((40, 56), (24, 16)):
        x, xt = images(h, w)
        expected = _reference(timm_model, xt)[0]
        assert_close(outputs(backbone, x)["patches"], expected[:, 1:], f"timm-own {h}x{w}")
        # the two resizes really differ, so the parity above is not vacuous
        gap = np.abs(to_numpy(expected) - to_numpy(_reference(dino_model, xt)[0])).max()
        assert gap > 1e-2, gap


def test_prefixes_heads_and_layer_scale(tmp_path):
    model, weights = _timm(tmp_path, init_values=0.5)
    config = timm_vit.backbone_config({"model_args": {**ARGS, "init_values": 0.5}})
    backbone = ViT(**config)
    full = {f"module.backbone.{k}": v for k, v in weights.items()}  # DINO student
    full["module.head.mlp.0.weight"] = np.zeros((8, 48), "float32")
    full["module.head.last_layer.weight_g"] = np.zeros((16, 1), "float32")
    timm_vit.convert_weights(full, backbone)
    x, xt = images(40, 56)
    assert_close(outputs(backbone, x)["cls"], _reference(model, xt)[0][:, 0], "timm ls")
    teacher = {f"backbone.{k}": v for k, v in weights.items()}
    teacher["head.mlp.0.bias"] = np.zeros((8,), "float32")
    timm_vit.convert_weights(teacher, ViT(**config))


def test_errors_name_every_problem_and_assign_nothing():
    weights = numpy_state(
        randomize_(import_timm().models.vision_transformer.VisionTransformer(**ARGS, num_classes=0))
    )
    backbone = ViT(**timm_vit.backbone_config(MODEL_ARGS))
    before = [np.array(v) for v in backbone.get_weights()]
    broken = dict(weights)
    del broken["blocks.1.attn.qkv.weight"]
    broken["pos_embed"] = np.zeros((1, 50, 48), "float32")
    broken["blocks.0.attn.extra"] = np.zeros((2,), "float32")
    with pytest.raises(ValueError) as error:
        timm_vit.convert_weights(broken, backbone)
    message = str(error.value)
    assert "Missing keys (1)" in message and "blocks.1.attn.qkv.weight" in message
    assert "(144, 48)" in message  # the expected shape of the missing key
    assert "Unexpected keys (1)" in message and "blocks.0.attn.extra" in message
    assert "pos_embed: expected (1, 17, 48)" in message and "got (1, 50, 48)" in message
    assert "Fix:" in message
    for old, new in zip(before, backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    # a backbone with a mask token: the DINO v1 checkpoint has none
    with pytest.raises(ValueError, match="mask_token.*use_mask_token=False"):
        timm_vit.convert_weights(
            weights, ViT(**{**timm_vit.backbone_config(MODEL_ARGS), "use_mask_token": True})
        )
