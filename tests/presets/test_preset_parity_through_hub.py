"""Parity through ``from_preset``: random-weight references in an offline Hugging Face cache.

Each reference (transformers ``ViTModel`` / ``Dinov2Model`` / ``Dinov2WithRegistersModel``,
torchvision's real ``resnet50``, timm's ViT-S/16 at the size of ``dino_vits16``) is
written as ``model.safetensors`` + ``config.json`` into a Hugging Face cache made by the
test, with ``HF_HUB_OFFLINE=1`` (environment and ``huggingface_hub.constants``), and loaded
through ``keras_ssl.from_preset``: the ``hf://`` handle detects the converter from the
``config.json``, a registered card names it, and the built-in card ``dino_vits16`` is used
by its name with huggingface_hub's default cache. The Keras CLS and patch tokens (ResNet:
feature map and pooled features) must match the reference within 1e-4 at the native size
and at another one. At other sizes the DINO / DINOv2 references get the official
``interpolate_pos_encoding`` (``scale_factor=(h + 0.1) / M``), which the presets follow.
"""

import copy
import json
import types

import huggingface_hub
import keras
import numpy as np
import pytest

import keras_ssl
from keras_ssl.presets import PresetError, registry
from keras_ssl.presets.converters import torchvision_resnet
from tests._support.torch_reference import import_timm, import_torchvision
from tests.presets._preset_support import (
    SHA,
    cache_card_files,
    go_offline,
    make_hf_cache,
    safetensors_bytes,
    write_card,
)
from tests.presets._vit_parity import (
    assert_close,
    images,
    original_pos_embed,
    randomize_,
    to_numpy,
)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache as huggingface_hub's default, offline, and a record of
    every ``hf_hub_download`` call (so the loads provably go through huggingface_hub)."""
    cache = tmp_path / "hf"
    cache.mkdir()
    go_offline(monkeypatch, cache)
    calls = []
    download = huggingface_hub.hf_hub_download

    def recording_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("revision")))
        return download(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording_download)
    return {"cache": cache, "calls": calls, "tmp": tmp_path}


def _put_in_cache(hub, repo, save_dir, config=None):
    """Puts a ``save_pretrained`` folder (its ``config.json``, or ``config``, and any
    ``preprocessor_config.json``) in the cache."""
    files = {
        "model.safetensors": (save_dir / "model.safetensors").read_bytes(),
        "config.json": config if config is not None else (save_dir / "config.json").read_bytes(),
    }
    if (save_dir / "preprocessor_config.json").exists():
        files["preprocessor_config.json"] = (save_dir / "preprocessor_config.json").read_bytes()
    return make_hf_cache(hub["cache"], repo, files)


def _check_preprocessing(preprocess, processor, size):
    """Our preprocessing equals the checkpoint's own image processor on square uint8 images
    of the size it resizes to (no resampling on either side), and, within resampling's
    differences, on a non-square ramp (which tells a squash from a crop)."""
    image = np.random.default_rng(5).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    expected = processor(images=image, return_tensors="np")["pixel_values"][0]
    got = keras.ops.convert_to_numpy(preprocess(image))
    np.testing.assert_allclose(got, expected.transpose(1, 2, 0), atol=1e-5)
    height, width = size * 3 // 2, size * 5 // 2
    ramp = np.linspace(0, 195, width)[None, :, None] + np.linspace(0, 60, height)[:, None, None]
    ramp = np.broadcast_to(ramp, (height, width, 3)).round().astype(np.uint8)
    expected = processor(images=ramp, return_tensors="np")["pixel_values"][0]
    got = keras.ops.convert_to_numpy(preprocess(ramp))
    assert got.shape == expected.transpose(1, 2, 0).shape
    # PIL's and Keras's resampling differ at the borders; a crop in place of a squash (or the
    # reverse) is off by a tenth of the ramp's range nearly everywhere
    np.testing.assert_allclose(np.median(np.abs(got - expected.transpose(1, 2, 0))), 0, atol=0.02)


def _official_resize(embeddings, patch):
    """transformers embeddings with the official DINO / DINOv2 position-embedding resize."""

    def interpolate(tokens, height, width):
        grid = (height // patch, width // patch)
        return original_pos_embed(
            embeddings.position_embeddings, *grid, 0.1, False, image_size=(height, width)
        )

    embeddings.interpolate_pos_encoding = interpolate


def _check_tokens(model, reference, sizes, what, registers=0, **call):
    """CLS, register and patch tokens of ``model`` (``output="tokens"``) vs the reference
    ``last_hidden_state`` (CLS, registers, patches) at each size."""
    import torch

    for h, w in sizes:
        x, xt = images(h, w)
        with torch.no_grad():
            tokens = reference(pixel_values=xt, **call).last_hidden_state
        out = model.predict_on_batch(x)
        assert_close(out["cls"], tokens[:, 0], f"{what} cls {h}x{w}")
        if registers:
            assert_close(out["registers"], tokens[:, 1 : 1 + registers], f"{what} reg {h}x{w}")
        assert_close(out["patches"], tokens[:, 1 + registers :], f"{what} patches {h}x{w}")


def _transformers_reference(save_dir, kind):
    import_torchvision()
    import transformers

    if kind == "vit":
        config = transformers.ViTConfig(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=192,
            patch_size=8,
            image_size=32,
            layer_norm_eps=1e-6,  # what the DINO weights were trained with
        )
        config._attn_implementation = "eager"
        model = transformers.ViTModel(config, add_pooling_layer=False)
    else:
        config_class = (
            transformers.Dinov2WithRegistersConfig
            if kind == "registers"
            else transformers.Dinov2Config
        )
        config = config_class(
            hidden_size=48, num_hidden_layers=2, num_attention_heads=3, patch_size=14, image_size=56
        )
        config._attn_implementation = "eager"
        model_class = (
            transformers.Dinov2WithRegistersModel
            if kind == "registers"
            else transformers.Dinov2Model
        )
        model = model_class(config)
    randomize_(model, seed=21)
    if kind != "registers":  # the register models resize alike in both codes
        _official_resize(model.embeddings, config.patch_size)
    model.save_pretrained(save_dir)
    return model


def test_transformers_vit_through_hf_handle(offline_hub):
    """A ``facebook/dino-vit*``-style repo: its config says LayerNorm eps 1e-12, the
    weights need 1e-6; ``from_preset`` detects ``model_type: vit`` and converts, and takes
    the preprocessing from the repo's ``preprocessor_config.json``."""
    import transformers

    save_dir = offline_hub["tmp"] / "vit"
    reference = _transformers_reference(save_dir, "vit")
    config = json.loads((save_dir / "config.json").read_text())
    config["layer_norm_eps"] = 1e-12  # as in facebook/dino-vits16's config.json
    repo = "tiny-org/dino-vit-tiny"
    processor = transformers.ViTImageProcessor(  # a resize to 32 x 32 and mean / std 0.5
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor.save_pretrained(save_dir)
    _put_in_cache(offline_hub, repo, save_dir, config=config)
    model, preprocess = keras_ssl.from_preset(
        f"hf://{repo}@{SHA}",
        cache_dir=offline_hub["cache"],
        local_files_only=True,
        output="tokens",
    )
    assert model.layer_norm_epsilon == 1e-6
    assert (preprocess.resize_size, preprocess.crop_size, preprocess.interpolation) == (
        (32, 32),
        None,
        "bilinear",
    )
    _check_preprocessing(preprocess, processor, 32)
    assert (repo, "model.safetensors", SHA) in offline_hub["calls"]
    _check_tokens(
        model, reference, [(32, 32), (40, 56)], "hub hf-vit", interpolate_pos_encoding=True
    )


@pytest.mark.parametrize("kind", ["dinov2", "registers"])
def test_transformers_dinov2_through_hf_handle(offline_hub, kind):
    import transformers

    save_dir = offline_hub["tmp"] / kind
    reference = _transformers_reference(save_dir, kind)
    repo = f"tiny-org/{kind}-tiny"
    processor = transformers.BitImageProcessor(  # as facebook/dinov2-*: 256 -> crop 224
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    processor.save_pretrained(save_dir)
    _put_in_cache(offline_hub, repo, save_dir)
    model, preprocess = keras_ssl.from_preset(
        f"hf://{repo}@{SHA}",
        cache_dir=offline_hub["cache"],
        local_files_only=True,
        output="tokens",
    )
    registers = 4 if kind == "registers" else 0
    assert model.num_register_tokens == registers and model.layer_scale_init is not None
    assert (preprocess.resize_size, preprocess.crop_size, preprocess.interpolation) == (
        256,
        224,
        "bicubic",
    )
    _check_preprocessing(preprocess, processor, 256)  # 256 x 256: the crop alone
    assert (repo, "model.safetensors", SHA) in offline_hub["calls"]
    _check_tokens(model, reference, [(56, 56), (70, 98)], f"hub {kind}", registers=registers)


def test_a_local_checkpoint_split_into_several_files(tmp_path):
    """A transformers checkpoint saved in shards (model-0000k-of-0000n.safetensors and
    model.safetensors.index.json), without a card: the index is read."""
    reference = _transformers_reference(tmp_path / "whole", "dinov2")
    split = tmp_path / "split"
    reference.save_pretrained(split, max_shard_size="100KB")
    assert not (split / "model.safetensors").exists()
    assert len(list(split.glob("model-*.safetensors"))) > 1
    model, _ = keras_ssl.from_preset(split, output="tokens")
    _check_tokens(model, reference, [(56, 56)], "split dinov2")
    for shard in split.glob("model*.safetensors*"):
        shard.unlink()
    with pytest.raises(PresetError, match=r"neither model.safetensors nor model.safetensors.i"):
        keras_ssl.from_preset(split)


def _random_resnet50(torchvision, torch):
    """torchvision's ``resnet50`` (bottleneck, [3, 4, 6, 3]) with random weights and
    batch-norm statistics; BN scales keep the 16 residual blocks' activations O(1)."""
    model = torchvision.models.resnet50(weights=None)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = np.prod(module.weight.shape[1:])
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
                )
            elif isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.empty(n).uniform_(0.3, 0.8, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator))
                module.num_batches_tracked.fill_(100)
    model.fc = torch.nn.Identity()
    return model.eval()


def test_torchvision_resnet50_through_a_registered_card(offline_hub):
    import torch

    torchvision = import_torchvision()
    reference = _random_resnet50(torchvision, torch)
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    repo = "tiny-org/resnet50-random"
    data = safetensors_bytes(state, offline_hub["tmp"])
    make_hf_cache(
        offline_hub["cache"],
        repo,
        {"model.safetensors": data, "config.json": {"architecture": "resnet50"}},
    )
    cards = offline_hub["tmp"] / "cards"
    config = torchvision_resnet.backbone_config({"depth": 50})
    assert config["stackwise_num_blocks"] == [3, 4, 6, 3]
    write_card(cards, "random_resnet50", repo, "torchvision_resnet", "ResNet", config)
    registry.add_cards_dir(cards)
    try:
        model, _ = keras_ssl.from_preset(
            "random_resnet50",
            cache_dir=offline_hub["cache"],
            local_files_only=True,
            pooling=None,
        )
    finally:
        registry.remove_cards_dir(cards)
    assert (repo, "model.safetensors", SHA) in offline_hub["calls"]

    captured = {}
    reference.layer4.register_forward_hook(lambda module, args, out: captured.update(map=out))
    for size in (64, 96):
        x, xt = images(size, size)
        with torch.no_grad():
            pooled = reference(xt)  # torchvision's forward: stages, avgpool, fc = Identity
        feature_map = captured["map"].permute(0, 2, 3, 1)
        scale = float(np.abs(to_numpy(pooled)).max())
        assert 0.05 < scale < 20, scale  # O(1) activations: the 1e-4 tolerance is tight
        out = model.predict_on_batch(x)
        assert out.shape == (2, size // 32, size // 32, 2048)
        assert_close(out, feature_map, f"hub resnet50 map {size}")
        assert_close(out.mean(axis=(1, 2)), pooled, f"hub resnet50 pooled {size}")


def _dino_vits16_reference():
    """timm's ViT-S/16 (the architecture of ``dino_vits16``) with random weights, LayerNorm
    eps 1e-6, and the official DINO position-embedding resize at other sizes.

    The patch embedding, position embeddings and CLS token are scaled by 1e-3, so the
    tokens entering the first LayerNorm have a variance of about 2e-6: there eps 1e-6
    and 1e-12 normalise differently (by ~20 %), which a wrong eps cannot hide."""
    import torch

    timm = import_timm()
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=224,
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        num_classes=0,
        dynamic_img_size=True,
    )
    randomize_(model, seed=16)
    with torch.no_grad():
        for param in (
            model.patch_embed.proj.weight,
            model.patch_embed.proj.bias,
            model.pos_embed,
            model.cls_token,
        ):
            param.mul_(1e-3)

    def official_pos_embed(self, x):
        batch, h, w, dim = x.shape
        pos = original_pos_embed(self.pos_embed, h, w, offset=0.1, antialias=False)
        cls = self.cls_token.expand(batch, -1, -1)
        return torch.cat([cls, x.reshape(batch, -1, dim)], 1) + pos

    model._pos_embed = types.MethodType(official_pos_embed, model)
    return model


def test_dino_vits16_by_name_from_the_default_offline_cache(offline_hub, monkeypatch):
    """``from_preset("dino_vits16")`` with no hub arguments: the built-in card's repo,
    revision and file names, resolved by huggingface_hub from ``HF_HUB_CACHE`` offline."""
    import torch

    card = registry.get_card("dino_vits16")
    source = card["source"]
    assert source["converter"] == "timm_vit" and source["format"] == "safetensors"
    reference = _dino_vits16_reference()
    assert all(m.eps == 1e-6 for m in reference.modules() if isinstance(m, torch.nn.LayerNorm))
    wrong_eps = copy.deepcopy(reference)
    for module in wrong_eps.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-12  # what transformers' DINO configs say
    state = {k: v.detach().contiguous().numpy() for k, v in reference.state_dict().items()}
    weights_name = source["files"]["weights"]
    files = {
        weights_name: safetensors_bytes(state, offline_hub["tmp"]),
        source["files"]["config"]: {
            "architecture": "vit_small_patch16_224",
            "num_classes": 0,
            "pretrained_cfg": {"input_size": [3, 224, 224], "crop_pct": 0.9},
        },
    }
    cache_card_files(card, files, offline_hub["cache"], offline_hub["tmp"], monkeypatch)
    revision = source["revision"]

    model, preprocess = keras_ssl.from_preset("dino_vits16", output="tokens")
    assert (source["repo"], weights_name, revision) in offline_hub["calls"]
    assert (model.hidden_dim, model.depth, model.num_heads, model.patch_size) == (384, 12, 6, 16)
    assert model.layer_norm_epsilon == 1e-6 and preprocess.crop_size == 224
    assert model.count_params() == sum(p.numel() for p in reference.parameters())

    for h, w in ((224, 224), (96, 128)):  # native; another size, not square
        x, xt = images(h, w, n=1, seed=h)
        with torch.no_grad():
            expected = reference.forward_features(xt)
        out = model.predict_on_batch(x)
        assert_close(out["cls"], expected[:, 0], f"dino_vits16 cls {h}x{w}")
        assert_close(out["patches"], expected[:, 1:], f"dino_vits16 patches {h}x{w}")
    # The eps is visible: the same weights with eps 1e-12 give other tokens, so the match
    # above holds for eps 1e-6 only.
    with torch.no_grad():
        wrong = wrong_eps.forward_features(xt)
    gap = np.abs(out["patches"] - to_numpy(wrong[:, 1:])).max()
    assert gap > 1e-2, f"LayerNorm eps 1e-12 would pass too: max gap {gap:.2e}"


class _Folder:
    """The part of a preset source that `_transformers_preprocessing` reads."""

    def __init__(self, path):
        self.path, self.description = path, str(path)

    def get(self, name, required=True):
        path = self.path / name
        return str(path) if path.exists() or required else None


@pytest.mark.parametrize(
    "config",
    [
        # facebook/dino-vits16's form: an int size, which ViT's processor takes as a square
        {"feature_extractor_type": "ViTFeatureExtractor", "size": 24, "resample": 2},
        {"image_processor_type": "ViTImageProcessor", "size": {"height": 24, "width": 40}},
        # an int size that BiT's processor takes as the shorter side, then a square crop
        {
            "image_processor_type": "BitImageProcessor",
            "size": 28,
            "do_center_crop": True,
            "crop_size": 20,
        },
        {
            "image_processor_type": "BitImageProcessor",
            "size": {"shortest_edge": 28},
            "do_center_crop": False,
        },
        # what a config leaves out is the processor's default: BiT crops 224 from 224
        {"image_processor_type": "BitImageProcessor"},
        {"image_processor_type": "ViTImageProcessor", "do_resize": False},
    ],
)
def test_preprocessor_config_sizes_as_transformers_reads_them(tmp_path, config):
    import_torchvision()  # transformers' image processors run on torchvision
    import transformers

    from keras_ssl.presets.loader import _transformers_preprocessing
    from keras_ssl.presets.preprocessing import Preprocessing

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    preprocess = Preprocessing.from_card(_transformers_preprocessing(_Folder(tmp_path)))
    kind = config.get("image_processor_type") or "ViTImageProcessor"
    processor = getattr(transformers, kind).from_dict(config)
    for height, width in ((30, 50), (50, 30), (230, 260)):
        if kind.startswith("Bit") and "size" not in config and min(height, width) < 224:
            continue  # BiT's default 224 px crop needs larger images
        image = np.zeros((height, width, 3), np.uint8)
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        assert preprocess.output_size(height, width) == expected.shape[1:], (height, width)


def test_a_rectangular_centre_crop_is_refused(tmp_path):
    from keras_ssl.presets.loader import _transformers_preprocessing

    config = {"size": {"shortest_edge": 28}, "do_center_crop": True}
    config["crop_size"] = {"height": 20, "width": 24}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(PresetError, match="crops to 20x24.*square centre crops only"):
        _transformers_preprocessing(_Folder(tmp_path))
