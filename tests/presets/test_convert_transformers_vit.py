"""transformers ViTModel (the ``facebook/dino-vit*`` copies) -> keras_ssl ViT, identical.

The reference is a transformers ``ViTModel`` (no pooler) with random weights, written
by ``save_pretrained`` and read back with ``safetensors.numpy``. Its config says
``layer_norm_eps=1e-12`` like the ``facebook/dino-vit*`` configs; the DINO weights were
trained with 1e-6, so the reference is built with 1e-6 and ``backbone_config`` must
give 1e-6 from the 1e-12 config. At other sizes the reference gets the official DINO
resize (``scale_factor=(h + 0.1) / M``) for the default config, and transformers' own
(``interpolate_pos_encoding=True``, ``size=``) for ``interpolation="transformers"``.
"""

import json

import numpy as np
import pytest

from keras_ssl.backbones import ViT
from keras_ssl.presets.converters import transformers_vit
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
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=192,
    patch_size=8,
    image_size=32,
)
SIZES = [(32, 32), (40, 56), (24, 16)]  # native, up non-square, down


def _transformers(tmp_path, eps=1e-6, original=False, **changes):
    import_torchvision()
    import transformers
    from safetensors.numpy import load_file

    config = transformers.ViTConfig(**{**TINY, **changes}, layer_norm_eps=eps)
    config._attn_implementation = "eager"
    model = randomize_(transformers.ViTModel(config, add_pooling_layer=False), seed=7)
    if original:
        embeddings = model.embeddings

        def interpolate(tokens, height, width):
            patch = TINY["patch_size"]
            grid = (height // patch, width // patch)
            return original_pos_embed(
                embeddings.position_embeddings, *grid, 0.1, False, image_size=(height, width)
            )

        embeddings.interpolate_pos_encoding = interpolate
    model.save_pretrained(tmp_path)
    source_config = json.loads((tmp_path / "config.json").read_text())
    source_config["layer_norm_eps"] = 1e-12  # as in facebook/dino-vit*'s config.json
    return model, load_file(str(tmp_path / "model.safetensors")), source_config


def _reference(model, x):
    import torch

    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True, interpolate_pos_encoding=True)
    return out.last_hidden_state, out.attentions[-1]


def test_backbone_config_overrides_the_dino_epsilon():
    source = {**TINY, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    config = transformers_vit.backbone_config(source)
    assert config["layer_norm_epsilon"] == 1e-6 and config["mlp_ratio"] == 4.0
    assert config["interpolation_offset"] == 0.1 and not config["use_mask_token"]
    assert config["layer_scale_init"] is None and config["num_register_tokens"] == 0
    own = transformers_vit.backbone_config(
        source, layer_norm_epsilon=None, interpolation="transformers"
    )
    assert own["layer_norm_epsilon"] == 1e-12 and own["interpolation_offset"] == 0.0
    assert not own["interpolation_antialias"]
    with pytest.raises(ValueError, match="hidden_act"):
        transformers_vit.backbone_config({**source, "hidden_act": "gelu_new"})


def test_dino_copy_parity(tmp_path):
    model, weights, source_config = _transformers(tmp_path, original=True)
    backbone = ViT(**transformers_vit.backbone_config(source_config))
    transformers_vit.convert_weights(weights, backbone)
    for h, w in SIZES:
        x, xt = images(h, w)
        tokens, attention = _reference(model, xt)
        out = outputs(backbone, x)
        assert_close(out["cls"], tokens[:, 0], f"hf-vit cls {h}x{w}")
        assert_close(out["patches"], tokens[:, 1:], f"hf-vit patches {h}x{w}")
        if (h, w) == (40, 56):
            assert_close(backbone.get_last_self_attention(x), attention, f"hf-vit attn {h}x{w}")


def test_transformers_resize_epsilon_and_in_memory_names(tmp_path):
    model, weights, source_config = _transformers(tmp_path, eps=1e-12)
    config = transformers_vit.backbone_config(
        source_config, layer_norm_epsilon=None, interpolation="transformers"
    )
    backbone = ViT(**config)
    transformers_vit.convert_weights(weights, backbone)
    x, xt = images(40, 56)
    expected = _reference(model, xt)[0]
    assert_close(outputs(backbone, x)["patches"], expected[:, 1:], "hf-vit own 40x56")
    # the two resizes really differ (LayerNorm eps 1e-6 vs 1e-12 is invisible on
    # random unit-variance weights: `backbone_config` is checked for it above)
    dino_model, _, _ = _transformers(tmp_path / "dino", original=True)
    gap = np.abs(to_numpy(expected) - to_numpy(_reference(dino_model, xt)[0])).max()
    assert gap > 1e-2, gap
    # transformers >= 5 in-memory names, a `vit.` prefix and a pooler
    state = {f"vit.{k}": v for k, v in numpy_state(model).items()}
    assert "vit.layers.0.attention.q_proj.weight" in state
    state["vit.pooler.dense.weight"] = np.zeros((48, 48), "float32")
    again = ViT(**config)
    transformers_vit.convert_weights(state, again)
    for ours, theirs in zip(again.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_intermediate_size_need_not_be_a_multiple_of_the_width(tmp_path):
    # 120 / 88 as mlp_ratio gives int(88 * (120 / 88)) = 119 units: the width is exact.
    model, weights, source_config = _transformers(tmp_path, hidden_size=88, intermediate_size=120)
    backbone = ViT(**transformers_vit.backbone_config(source_config))
    transformers_vit.convert_weights(weights, backbone)
    x, xt = images(32, 32)
    tokens = _reference(model, xt)[0]
    assert_close(outputs(backbone, x)["patches"], tokens[:, 1:], "hf-vit 88/120 patches")


def test_errors(tmp_path):
    _, weights, source_config = _transformers(tmp_path)
    config = transformers_vit.backbone_config(source_config)
    wide = ViT(**{**config, "mlp_dim": 96})
    with pytest.raises(ValueError) as error:
        transformers_vit.convert_weights(weights, wide)
    message = str(error.value)
    assert "Shape mismatches (6)" in message
    assert "encoder.layer.0.intermediate.dense.weight: expected (96, 48)" in message
    assert "got (192, 48)" in message and "Fix:" in message
    with pytest.raises(ValueError, match="layer_scale_init=None"):
        transformers_vit.convert_weights(weights, ViT(**{**config, "layer_scale_init": 1.0}))
    with pytest.raises(ValueError, match="use_mask_token=False"):
        transformers_vit.convert_weights(weights, ViT(**{**config, "use_mask_token": True}))
