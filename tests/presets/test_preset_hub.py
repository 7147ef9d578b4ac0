"""from_preset through an offline Hugging Face cache: names, hf:// handles and their errors."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ssl
from keras_ssl.presets import PresetError, registry
from tests.presets._preset_support import (
    SHA,
    TINY_RESNET_CONFIG,
    make_hf_cache,
    safetensors_bytes,
    tiny_resnet_state,
    write_card,
)

REPO = "tiny-org/tiny-resnet"


@pytest.fixture
def hub(tmp_path):
    """An offline cache holding a tiny torchvision-layout ResNet, and a card for it."""
    state = tiny_resnet_state()
    data = safetensors_bytes(state, tmp_path)
    cache = tmp_path / "hf"
    snapshot = make_hf_cache(
        cache, REPO, {"model.safetensors": data, "config.json": {"architecture": "resnet18"}}
    )
    cards = tmp_path / "cards"
    write_card(
        cards,
        "tiny_resnet",
        REPO,
        "torchvision_resnet",
        "ResNet",
        TINY_RESNET_CONFIG,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    registry.add_cards_dir(cards)
    yield {"cache": cache, "cards": cards, "state": state, "snapshot": snapshot}
    registry.remove_cards_dir(cards)


def _load(handle, hub, **kwargs):
    return keras_ssl.from_preset(handle, cache_dir=hub["cache"], local_files_only=True, **kwargs)


def _check_weights(model, state):
    kernel = keras.ops.convert_to_numpy(model.get_layer("layer2_0_downsample_0").kernel)
    np.testing.assert_array_equal(
        kernel, state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0)
    )
    bn = model.get_layer("bn1")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(bn.moving_variance), state["bn1.running_var"]
    )


def test_registered_name_loads_offline_with_preprocessing(hub):
    model, preprocess = _load("tiny_resnet", hub)
    _check_weights(model, hub["state"])
    assert model.output_dim == 8
    assert preprocess.crop_size == 32 and preprocess.interpolation == "bilinear"
    features = model(preprocess(np.zeros((2, 40, 48, 3), "uint8")))
    assert tuple(features.shape) == (2, 8)


def test_hf_handle_uses_the_matching_card_and_overrides(hub):
    model, _ = _load(f"hf://{REPO}@{SHA}", hub, pooling=None)
    _check_weights(model, hub["state"])
    assert model.pooling is None


def test_hf_handle_of_an_unknown_format(hub, tmp_path):
    repo = "other-org/a-text-model"
    make_hf_cache(hub["cache"], repo, {"config.json": {"model_type": "bert"}})
    with pytest.raises(PresetError, match="neither a keras_ssl preset nor a known checkpoint"):
        _load(f"hf://{repo}", hub)


def test_hf_offline_environment_in_a_subprocess(hub, tmp_path):
    """HF_HUB_CACHE / HF_HUB_OFFLINE are read when huggingface_hub is imported."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        import keras_ssl
        from keras_ssl.presets import registry
        registry.add_cards_dir({str(hub["cards"])!r})
        for handle in ("tiny_resnet", "hf://{REPO}@{SHA}"):
            model, _ = keras_ssl.from_preset(handle)
            print(handle, float(np.asarray(model.get_layer("bn1").moving_mean)[0]))
        """
    )
    env = dict(os.environ, HF_HUB_CACHE=str(hub["cache"]), HF_HUB_OFFLINE="1")
    env.pop("HF_HOME", None)
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = float(hub["state"]["bn1.running_mean"][0])
    lines = [line for line in result.stdout.splitlines() if line.startswith(("tiny", "hf://"))]
    assert len(lines) == 2
    for line in lines:
        assert abs(float(line.split()[-1]) - expected) < 1e-6


def test_unknown_name_lists_known_presets(hub):
    with pytest.raises(PresetError, match=r"Unknown preset 'no_such'.*dino_vits16.*tiny_resnet"):
        keras_ssl.from_preset("no_such")


def test_offline_without_cache_says_what_to_do(hub, tmp_path):
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    with pytest.raises(PresetError, match=r"not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        keras_ssl.from_preset("tiny_resnet", cache_dir=empty, local_files_only=True)


def test_no_network_without_cache_says_so(hub, tmp_path, monkeypatch):
    # What huggingface_hub raises online when the Hub cannot be reached and nothing is cached.
    import huggingface_hub
    from huggingface_hub import errors

    def unreachable(*args, **kwargs):
        raise errors.LocalEntryNotFoundError("connection error and no cached file")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(PresetError, match=r"could not be downloaded.*no network\?.*hf download"):
        keras_ssl.from_preset("tiny_resnet", cache_dir=tmp_path, local_files_only=False)


def test_no_network_is_not_taken_for_an_absent_optional_file(hub, monkeypatch):
    # A cached snapshot, then the Hub stops answering: an optional file (a preset's
    # preprocessing or optimizer state) is not silently left out.
    import huggingface_hub
    from huggingface_hub import errors

    from keras_ssl.presets.sources import HubSource

    def unreachable(*args, **kwargs):
        raise errors.LocalEntryNotFoundError("connection error and no cached file")

    source = HubSource(REPO, SHA, cache_dir=hub["cache"], local_files_only=False)
    assert source._cached_snapshot()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(PresetError, match="could not be downloaded"):
        source.get("optimizer.json", required=False)
    offline = HubSource(REPO, SHA, cache_dir=hub["cache"], local_files_only=True)
    assert offline.get("optimizer.json", required=False) is None


def test_missing_file_in_the_snapshot(hub):
    (hub["snapshot"] / "model.safetensors").unlink()
    with pytest.raises(PresetError, match="model.safetensors"):
        _load("tiny_resnet", hub)


def test_hash_mismatch(hub):
    path = hub["snapshot"] / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(PresetError, match="sha256 mismatch"):
        _load("tiny_resnet", hub)


def test_truncated_safetensors(hub):
    card = json.loads((hub["cards"] / "tiny_resnet.json").read_text())
    card["source"]["sha256"] = {}  # no hash: the reader must notice the damage itself
    (hub["cards"] / "tiny_resnet.json").write_text(json.dumps(card))
    path = hub["snapshot"] / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(PresetError, match="corrupt or truncated"):
        _load("tiny_resnet", hub)


def test_shape_mismatch(hub):
    card = json.loads((hub["cards"] / "tiny_resnet.json").read_text())
    card["backbone"]["config"]["width"] = 8
    (hub["cards"] / "tiny_resnet.json").write_text(json.dumps(card))
    with pytest.raises(PresetError, match=r"do not fit.*shape mismatches.*conv1"):
        _load("tiny_resnet", hub)


def test_card_from_a_newer_keras_ssl(hub):
    card = json.loads((hub["cards"] / "tiny_resnet.json").read_text())
    card["min_keras_ssl_version"] = "99.0.0"
    (hub["cards"] / "tiny_resnet.json").write_text(json.dumps(card))
    with pytest.raises(PresetError, match=r"keras_ssl 99.0.0, newer than the installed"):
        _load("tiny_resnet", hub)


def test_names_and_files_cannot_escape(hub):
    with pytest.raises(PresetError, match="not a valid preset name.*Did you mean 'tiny_resnet'"):
        keras_ssl.from_preset("Tiny_ResNet")
    for bad in ("../tiny_resnet", "a/b"):
        with pytest.raises(PresetError, match=f"The directory '{bad}' does not exist"):
            keras_ssl.from_preset(bad)
    card = json.loads((hub["cards"] / "tiny_resnet.json").read_text())
    card["source"]["files"]["weights"] = "../../../secret.safetensors"
    (hub["cards"] / "tiny_resnet.json").write_text(json.dumps(card))
    with pytest.raises(PresetError, match="escapes its directory"):
        _load("tiny_resnet", hub)
    with pytest.raises(PresetError, match="not a Hugging Face handle"):
        keras_ssl.from_preset("hf://org/../etc")


def test_pickle_only_sources_point_to_the_converter_tool():
    with pytest.raises(PresetError, match=r"tools/convert_checkpoint.py --card mocov2_resnet50"):
        keras_ssl.from_preset("mocov2_resnet50")
    # The card of a repo applies to its hf:// handle too (lightly's torch pickle).
    with pytest.raises(PresetError, match=r"tools/convert_checkpoint.py --card simclr_resnet50"):
        keras_ssl.from_preset(
            "hf://lightly-ai/simclrv1-imagenet1k-resnet50-1x", local_files_only=True
        )
    # The head comes from the full checkpoint, which converts as a DINO model, not a backbone.
    full = r"tools/convert_checkpoint.py --method dino --card dino_vits16"
    with pytest.raises(PresetError, match=full):
        keras_ssl.from_preset("dino_vits16", include_head=True, local_files_only=True)


def test_builtin_cards_are_complete():
    names = registry.list_presets()
    for required in (
        "dino_vits16",
        "dino_vits8",
        "dino_vitb16",
        "dino_vitb8",
        *(f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")),
        "dino_resnet50",
        "mocov2_resnet50",
    ):
        assert required in names
    for name in names:
        card = registry.get_card(name)
        source = card["source"]
        assert card["scores"]["imagenet_linear_top1"] > 0, name
        assert card["license"] and card["paper"]["url"].startswith("https://"), name
        if source.get("hub") == "hf":
            revision = source["revision"]
            assert len(revision) == 40 or (revision == "main" and source["revision_note"])
        for digest in (source.get("sha256") or {}).values():
            assert digest is None or len(digest) == 64
        if card["backbone"].get("source_config"):  # architecture resolvable offline
            converter = keras_ssl.presets.converters.get(source["converter"])
            config = converter.backbone_config(card["backbone"]["source_config"])
            assert config["layer_norm_epsilon"] == 1e-6 and config["depth"] == 12, name


def test_messages_name_the_problem_and_the_likely_fix(hub):
    with pytest.raises(PresetError, match=r"directory './no/such/dir' does not exist"):
        keras_ssl.from_preset("./no/such/dir")
    with pytest.raises(PresetError, match=r"does not exist.*pass 'hf://tiny-org/tiny-resnet'"):
        keras_ssl.from_preset(REPO)
    with pytest.raises(PresetError, match=r"Unknown preset 'tiny_resnt'. Did you mean 'tiny_res"):
        keras_ssl.from_preset("tiny_resnt")
    with pytest.raises(PresetError, match=r"lower-case .*Did you mean 'dino_vits16'\?"):
        keras_ssl.from_preset("DINO_ViTS16")
    with pytest.raises(PresetError, match=r"holds the backbone only; it has no head\.$"):
        _load("tiny_resnet", hub, include_head=True)
    # Overrides the backbone does not take (a functional model would ignore them).
    with pytest.raises(PresetError, match=r"ResNet has no option 'poolng' \(did you mean 'pool"):
        _load("tiny_resnet", hub, poolng=None)


def test_hf_handle_without_revision_takes_the_cards_revision(hub):
    # The card pins SHA (and the hash of that revision's weights); the branch has moved on.
    other = "f" * 40
    make_hf_cache(hub["cache"], REPO, {"config.json": {"architecture": "resnet18"}}, sha=other)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not pinned")
        model, _ = _load(f"hf://{REPO}", hub)
    _check_weights(model, hub["state"])
