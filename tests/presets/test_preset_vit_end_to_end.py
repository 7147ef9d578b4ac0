"""End to end: a tiny timm-format ViT in an offline Hugging Face cache, loaded by from_preset
(hf:// handle detected from timm's config.json, and a registered card), equals timm."""

import json

import keras
import numpy as np
import pytest

import keras_ssl
from keras_ssl.presets import registry
from tests._support.torch_reference import import_timm
from tests.presets._preset_support import SHA, make_hf_cache, safetensors_bytes, write_card
from tests.presets._vit_parity import randomize_

REPO = "tiny-org/vit_tiny_patch8_32.dino"
MODEL_ARGS = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)


@pytest.fixture
def tiny_vit(tmp_path):
    import torch

    timm = import_timm()
    model = timm.models.vision_transformer.VisionTransformer(**MODEL_ARGS, num_classes=0)
    randomize_(model, seed=5)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    config = {
        "architecture": "vit_custom_patch8",
        "model_args": MODEL_ARGS,
        "pretrained_cfg": {"input_size": [3, 32, 32], "crop_pct": 0.8, "interpolation": "bicubic"},
    }
    cache = tmp_path / "hf"
    files = {"model.safetensors": safetensors_bytes(state, tmp_path), "config.json": config}
    make_hf_cache(cache, REPO, files)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    return {"cache": cache, "images": images, "tokens": tokens, "tmp": tmp_path}


def test_hf_handle_detects_timm_and_matches(tiny_vit):
    model, preprocess = keras_ssl.from_preset(
        f"hf://{REPO}@{SHA}", cache_dir=tiny_vit["cache"], local_files_only=True
    )
    assert isinstance(model, keras_ssl.backbones.ViT)
    assert (preprocess.resize_size, preprocess.crop_size) == (40, 32)  # 32 / 0.8
    cls = keras.ops.convert_to_numpy(model(tiny_vit["images"]))
    np.testing.assert_allclose(cls, tiny_vit["tokens"][:, 0], atol=1e-4, rtol=1e-4)


def test_registered_card_with_token_output(tiny_vit):
    cards = tiny_vit["tmp"] / "cards"
    write_card(cards, "tiny_dino_vit", REPO, "timm_vit", "ViT", None, sha256=None)
    card_path = cards / "tiny_dino_vit.json"
    card = json.loads(card_path.read_text())
    card["backbone"]["source_config"] = {"model_args": MODEL_ARGS}
    card_path.write_text(json.dumps(card))
    registry.add_cards_dir(cards)
    try:
        model, _ = keras_ssl.from_preset(
            "tiny_dino_vit", cache_dir=tiny_vit["cache"], local_files_only=True, output="tokens"
        )
    finally:
        registry.remove_cards_dir(cards)
    out = model(tiny_vit["images"])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out["patches"]), tiny_vit["tokens"][:, 1:], atol=1e-4, rtol=1e-4
    )
