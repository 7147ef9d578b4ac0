"""tools/publish_presets.py on an offline cache: convert, check, save, upload, pin the card."""

import hashlib
import importlib.util
import json
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants

from tests.presets._preset_support import (
    SHA,
    TINY_RESNET_CONFIG,
    make_hf_cache,
    safetensors_bytes,
    tiny_resnet_state,
    write_card,
)

TOOL = Path(__file__).resolve().parents[2] / "tools" / "publish_presets.py"


def _tool():
    spec = importlib.util.spec_from_file_location("publish_presets", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_publish_converts_uploads_and_pins(tmp_path, monkeypatch, capsys):
    data = safetensors_bytes(tiny_resnet_state(), tmp_path)
    cache = tmp_path / "hf"
    make_hf_cache(cache, "tiny-org/tiny-resnet", {"model.safetensors": data, "config.json": {}})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    cards = tmp_path / "cards"
    write_card(
        cards,
        "tiny_resnet",
        "tiny-org/tiny-resnet",
        "torchvision_resnet",
        "ResNet",
        TINY_RESNET_CONFIG,
    )
    uploads = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, **kw: None)
    monkeypatch.setattr(
        huggingface_hub.HfApi, "upload_folder", lambda self, **kw: uploads.append(kw)
    )
    common = [
        "--offline",
        "--cards-dir",
        str(cards),
        "--output-dir",
        str(tmp_path / "out"),
        "--namespace",
        "me",
    ]
    assert _tool().main([*common, "--dry-run"]) == 0
    assert "would upload to hf://me/tiny_resnet" in capsys.readouterr().out
    assert uploads == []
    assert (tmp_path / "out" / "tiny_resnet" / "model.weights.h5").is_file()

    assert _tool().main(common) == 0
    assert uploads[0]["repo_id"] == "me/tiny_resnet"
    card = json.loads((cards / "tiny_resnet.json").read_text())
    assert card["source"]["revision"] == SHA
    assert card["source"]["sha256"]["model.safetensors"] == hashlib.sha256(data).hexdigest()
    metadata = json.loads((tmp_path / "out" / "tiny_resnet" / "metadata.json").read_text())
    assert metadata["source"]["revision"] == SHA and metadata["license"] == "Apache-2.0"
