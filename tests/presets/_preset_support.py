"""Helpers of the preset tests: an offline Hugging Face cache and tiny checkpoints."""

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

SHA = "0123456789abcdef0123456789abcdef01234567"

# ResNet(block_type="basic", stackwise_num_blocks=(1, 1), width=4), torchvision names.
TINY_RESNET_CONFIG = {"block_type": "basic", "stackwise_num_blocks": [1, 1], "width": 4}


def _bn(prefix, channels, rng):
    return {
        f"{prefix}.weight": rng.uniform(0.5, 1.5, channels),
        f"{prefix}.bias": rng.normal(size=channels),
        f"{prefix}.running_mean": rng.normal(size=channels),
        f"{prefix}.running_var": rng.uniform(0.5, 1.5, channels),
        f"{prefix}.num_batches_tracked": np.array(7),
    }


def tiny_resnet_state(seed=0):
    """A torchvision-layout state_dict for TINY_RESNET_CONFIG, written from torchvision's
    naming rules (not from the Keras model)."""
    rng = np.random.default_rng(seed)
    state = {"conv1.weight": rng.normal(size=(4, 3, 7, 7)) * 0.1, **_bn("bn1", 4, rng)}
    state["layer1.0.conv1.weight"] = rng.normal(size=(4, 4, 3, 3)) * 0.1
    state.update(_bn("layer1.0.bn1", 4, rng))
    state["layer1.0.conv2.weight"] = rng.normal(size=(4, 4, 3, 3)) * 0.1
    state.update(_bn("layer1.0.bn2", 4, rng))
    state["layer2.0.conv1.weight"] = rng.normal(size=(8, 4, 3, 3)) * 0.1
    state.update(_bn("layer2.0.bn1", 8, rng))
    state["layer2.0.conv2.weight"] = rng.normal(size=(8, 8, 3, 3)) * 0.1
    state.update(_bn("layer2.0.bn2", 8, rng))
    state["layer2.0.downsample.0.weight"] = rng.normal(size=(8, 4, 1, 1)) * 0.1
    state.update(_bn("layer2.0.downsample.1", 8, rng))
    state["fc.weight"] = rng.normal(size=(10, 8))  # a classifier, not part of the backbone
    state["fc.bias"] = rng.normal(size=10)
    return {k: np.asarray(v, "int64" if v.ndim == 0 else "float32") for k, v in state.items()}


def safetensors_bytes(state, tmp_path):
    path = Path(tmp_path) / "_tmp.safetensors"
    save_file(state, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def make_hf_cache(cache_dir, repo, files, sha=SHA):
    """Lays out ``models--org--name/{refs/main, snapshots/<sha>/...}`` as huggingface_hub does."""
    folder = Path(cache_dir) / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(sha)
    snapshot = folder / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = snapshot / name
        if isinstance(data, (dict, list)):
            path.write_text(json.dumps(data))
        else:
            path.write_bytes(data)
    return snapshot


def go_offline(monkeypatch, cache):
    """`cache` as huggingface_hub's default cache, with downloads off: in the environment
    and in `huggingface_hub.constants`, which huggingface_hub read at import."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def cache_card_files(card, files, cache, tmp, monkeypatch):
    """Puts `files` (name -> bytes or JSON) in `cache` where the built-in `card`'s source
    points (its repo; its revision, or refs/main -> SHA for an unpinned card).

    Once tools/publish_presets.py pins the published weights' sha256, random weights
    cannot match it: the same card with these weights' hash then replaces the built-in one
    (a card folder in `tmp`, named by the registry's environment variable)."""
    from keras_ssl.presets import registry

    source = card["source"]
    weights = source["files"]["weights"]
    if (source.get("sha256") or {}).get(weights):
        source["sha256"][weights] = hashlib.sha256(files[weights]).hexdigest()
        cards = Path(tmp) / "cards"
        cards.mkdir()
        (cards / f"{card['name']}.json").write_text(json.dumps(card))
        monkeypatch.setenv(registry.ENV_VAR, str(cards))
    revision = source["revision"]
    make_hf_cache(cache, source["repo"], files, sha=revision if len(revision) == 40 else SHA)


def write_card(folder, name, repo, converter, backbone_class, config, sha256=None, **extra):
    card = {
        "name": name,
        "backbone": {"class": backbone_class, "config": config},
        "source": {
            "hub": "hf",
            "repo": repo,
            "revision": SHA,
            "format": "safetensors",
            "files": {"weights": "model.safetensors", "config": "config.json"},
            "sha256": {"model.safetensors": sha256},
            "converter": converter,
        },
        "preprocessing": {"resize_size": 36, "crop_size": 32, "interpolation": "bilinear"},
        "license": "Apache-2.0",
    }
    for key, value in extra.items():
        card[key] = value
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(card))
    return card
