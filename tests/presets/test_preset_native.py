"""Keras-native presets: save_to_preset -> from_preset round trips, errors, upload_preset."""

import json

import keras
import numpy as np
import pytest
from keras import ops

import keras_ssl
from keras_ssl.backbones import ConvNet, ViT
from keras_ssl.presets import Preprocessing, PresetError


def _np(x):
    return ops.convert_to_numpy(x)


def _images(n=4, size=16, channels=1, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, channels)).astype("float32")


def _dino():
    return keras_ssl.DINO(
        ConvNet(widths=(8, 16), input_channels=1),
        output_dim=32,
        hidden_dim=16,
        bottleneck_dim=8,
        warmup_teacher_temperature_epochs=1,
    )


def _views(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(size=(n, s, s, 1)).astype("float32") for s in (16, 16, 8, 8))


def test_backbone_round_trip_with_preprocessing(tmp_path):
    backbone = ConvNet(widths=(8, 16), input_channels=1)
    images = _images()
    expected = _np(backbone(images))
    preprocess = Preprocessing(resize_size=None, crop_size=12, mean=(0.5,), std=(0.25,))
    keras_ssl.save_to_preset(
        backbone, tmp_path / "p", metadata={"license": "MIT", "epochs": 3}, preprocessing=preprocess
    )
    metadata = json.loads((tmp_path / "p" / "metadata.json").read_text())
    assert metadata["license"] == "MIT" and metadata["epochs"] == 3
    assert metadata["keras_ssl_version"] == keras_ssl.__version__
    assert metadata["class_name"] == "ConvNet" and metadata["task"] == "backbone"
    model, restored = keras_ssl.from_preset(tmp_path / "p")
    np.testing.assert_array_equal(_np(model(images)), expected)
    assert restored.get_config() == preprocess.get_config()
    with pytest.raises(PresetError, match="backbone only; it has no head"):
        keras_ssl.from_preset(tmp_path / "p", include_head=True)
    with pytest.raises(PresetError, match="not a method model"):
        keras_ssl.from_preset(tmp_path / "p", task="pretraining")


def test_dino_round_trip_continues_pretraining(tmp_path):
    model = _dino()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0))
    model.fit(_views(), batch_size=8, epochs=2, verbose=0)
    assert np.any(_np(model.center) != 0)
    keras_ssl.save_to_preset(model, tmp_path / "dino", metadata={"data": "random"})

    restored, _ = keras_ssl.from_preset(tmp_path / "dino", task="pretraining")
    assert isinstance(restored, keras_ssl.DINO)
    assert int(_np(restored.optimizer.iterations)) == int(_np(model.optimizer.iterations)) == 2
    for a, b in zip(restored.weights, model.weights, strict=True):
        assert a.path == b.path
        np.testing.assert_array_equal(_np(a), _np(b))
    np.testing.assert_array_equal(_np(restored.center), _np(model.center))
    for a, b in zip(restored.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(_np(a), _np(b))

    # The default backbone of a DINO preset is the teacher (the published encoder).
    teacher, _ = keras_ssl.from_preset(tmp_path / "dino")
    images = _images()
    np.testing.assert_allclose(
        _np(teacher(images)), _np(model.teacher_backbone(images)), rtol=1e-5, atol=1e-6
    )
    student, _ = keras_ssl.from_preset(tmp_path / "dino", encoder="student")
    np.testing.assert_array_equal(
        [_np(w) for w in student.weights][0], _np(restored.backbone.weights[0])
    )
    with_head, _ = keras_ssl.from_preset(tmp_path / "dino", include_head=True)
    saved = keras_ssl.from_preset(tmp_path / "dino", task="pretraining").model
    np.testing.assert_allclose(
        _np(with_head(images)),
        _np(saved.teacher_head(saved.teacher_backbone(images))),
        rtol=1e-5,
        atol=1e-6,
    )

    # Both continue identically: teacher, centre, schedules and Adam moments all came back.
    views = _views(seed=1)
    model.fit(views, batch_size=8, epochs=1, verbose=0)
    restored.fit(views, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(restored.weights, model.weights, strict=True):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-6)


def test_native_errors(tmp_path):
    backbone = ConvNet(widths=(8, 16), input_channels=1)
    keras_ssl.save_to_preset(backbone, tmp_path / "p")
    with pytest.raises(PresetError, match="has no file 'model.weights.h5'"):
        (tmp_path / "q").mkdir()
        for name in ("config.json", "metadata.json"):
            (tmp_path / "q" / name).write_bytes((tmp_path / "p" / name).read_bytes())
        keras_ssl.from_preset(tmp_path / "q")

    weights = tmp_path / "p" / "model.weights.h5"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(PresetError, match="sha256 mismatch.*corrupt or truncated"):
        keras_ssl.from_preset(tmp_path / "p")
    metadata_path = tmp_path / "p" / "metadata.json"
    with_hashes = metadata_path.read_text()
    metadata_path.write_text(json.dumps({**json.loads(with_hashes), "sha256": {}}))
    with pytest.raises(PresetError, match="not a readable .weights.h5 file.*corrupt or truncated"):
        keras_ssl.from_preset(tmp_path / "p")  # no hash: HDF5's own error
    metadata_path.write_text(with_hashes)
    weights.write_bytes(good)
    # an override that drops layers: Keras alone would load the rest and say nothing
    with pytest.raises(PresetError, match=r"hold \d+ arrays but the model built with the ov"):
        keras_ssl.from_preset(tmp_path / "p", widths=[8])
    assert keras_ssl.from_preset(tmp_path / "p", name="renamed").model.name == "renamed"

    config_path = tmp_path / "p" / "config.json"
    config = json.loads(config_path.read_text())
    config["config"]["widths"] = [8, 32]
    config_path.write_text(json.dumps(config))
    with pytest.raises(PresetError, match="do not fit the model"):
        keras_ssl.from_preset(tmp_path / "p")

    metadata_path = tmp_path / "p" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["keras_ssl_version"] = "9.1.0"
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(PresetError, match=r"keras_ssl 9.1.0, newer than the installed.*pip"):
        keras_ssl.from_preset(tmp_path / "p")


def test_overrides_of_a_method_preset_rebuild_the_selected_encoder(tmp_path):
    # from_preset's overrides are backbone options: on a DINO preset they go to the encoder
    # it returns, not to DINO's config (which has no `output`).
    vit = ViT(patch_size=4, hidden_dim=16, depth=2, num_heads=2, input_channels=1,
              pretrain_image_size=16, use_mask_token=False)  # fmt: skip
    model = keras_ssl.DINO(vit, output_dim=32, hidden_dim=16, bottleneck_dim=8)
    rng = np.random.default_rng(0)
    for variable in model.backbone.weights:  # the student apart from the teacher
        variable.assign(variable + rng.normal(scale=0.1, size=variable.shape))
    keras_ssl.save_to_preset(model, tmp_path / "dino")
    images = _images(n=2, size=16)
    for encoder, saved in (("auto", model.teacher_backbone), ("student", model.backbone)):
        tokens, _ = keras_ssl.from_preset(tmp_path / "dino", encoder=encoder, output="tokens")
        assert isinstance(tokens, ViT) and tokens.output_type == "tokens"
        got, expected = tokens(images), saved.forward_features(images)
        for key in ("cls", "patches"):
            np.testing.assert_allclose(_np(got[key]), _np(expected[key]), rtol=1e-5, atol=1e-6)
    with_head, _ = keras_ssl.from_preset(tmp_path / "dino", include_head=True, name="renamed")
    assert with_head.layers[0].name == "renamed"
    np.testing.assert_allclose(
        _np(with_head(images)),
        _np(model.teacher_head(model.teacher_backbone(images))),
        rtol=1e-5,
        atol=1e-6,
    )

    with pytest.raises(PresetError, match=r"\['output_dim'\] is an option of DINO, not of its ViT"):
        keras_ssl.from_preset(tmp_path / "dino", output_dim=8)
    with pytest.raises(PresetError, match=r"change the teacher encoder's outputs.*include_head"):
        keras_ssl.from_preset(tmp_path / "dino", include_head=True, output="tokens")
    with pytest.raises(PresetError, match=r"ViT built with the overrides \{'depth': 1\} has \d+ "):
        keras_ssl.from_preset(tmp_path / "dino", depth=1)
    with pytest.raises(PresetError, match=r"has shape .* the overrides change the architecture"):
        keras_ssl.from_preset(tmp_path / "dino", hidden_dim=8, num_heads=1)  # ViT's, not DINO's
    with pytest.raises(PresetError, match="task='pretraining' .* config overrides"):
        keras_ssl.from_preset(tmp_path / "dino", task="pretraining", output="tokens")


def test_pre_releases_are_not_newer_than_their_release():
    from keras_ssl.presets.native import _version_tuple

    assert _version_tuple("0.1.0rc1") == _version_tuple("0.1.0") == (0, 1, 0)
    assert _version_tuple("1.0.0b2+local") == (1, 0, 0) and _version_tuple("1.2.dev3") == (1, 2)
    assert _version_tuple("0.2.0a1") > _version_tuple("0.1.9")


def test_upload_preset_calls_the_hub_api(tmp_path, monkeypatch):
    import huggingface_hub

    keras_ssl.save_to_preset(ConvNet(widths=(4,), input_channels=1), tmp_path / "p")
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, **kwargs):
        calls["upload"] = kwargs
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    result = keras_ssl.upload_preset("hf://my-org/my-convnet@dev", tmp_path / "p")
    assert result == "commit-info"
    assert calls["create"][0] == "my-org/my-convnet" and calls["create"][1]["exist_ok"]
    upload = calls["upload"]
    assert upload["repo_id"] == "my-org/my-convnet"
    assert upload["folder_path"] == str(tmp_path / "p")
    assert upload["revision"] == "dev"
    assert "ConvNet" in upload["commit_message"]
    with pytest.raises(PresetError, match="pass 'hf://org/name'"):
        keras_ssl.upload_preset("my-org/my-convnet", tmp_path / "p")
    (tmp_path / "p" / "metadata.json").unlink()
    with pytest.raises(PresetError, match="has no file 'metadata.json'"):
        keras_ssl.upload_preset("hf://my-org/my-convnet", tmp_path / "p")


def test_preprocessing_matches_numpy():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 10, 14, 3)).astype("uint8")
    layer = Preprocessing(resize_size=None, crop_size=6, mean=(0.1, 0.2, 0.3), std=(0.5, 2, 4))
    x = images.astype("float32") / 255.0
    top, left = 2, 4  # round((10 - 6) / 2), round((14 - 6) / 2)
    expected = (x[:, top : top + 6, left : left + 6] - np.array([0.1, 0.2, 0.3])) / np.array(
        [0.5, 2, 4]
    )
    np.testing.assert_allclose(_np(layer(images)), expected, rtol=1e-6, atol=1e-6)
    # odd margins: torchvision's CenterCrop rounds 2.5 -> 2 and 5.5 -> 6 (halves to even)
    odd = np.random.default_rng(1).random((1, 11, 17, 3)).astype("float32")
    plain = Preprocessing(resize_size=None, crop_size=6, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(_np(plain(odd)), odd[:, 2:8, 6:12], rtol=1e-6)
    resize = Preprocessing(resize_size=8, crop_size=8)
    assert resize.output_size(300, 400) == (8, 8)
    assert resize._resized(300, 400) == (8, 10)  # torchvision: int(8 * 400 / 300)
    assert tuple(resize(np.zeros((20, 30, 3), "float32")).shape) == (8, 8, 3)
    restored = Preprocessing.from_config(layer.get_config())
    np.testing.assert_array_equal(_np(restored(images)), _np(layer(images)))


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_preprocessing_scales_integer_images_by_the_range_of_their_dtype(dtype):
    # torchvision: ToTensor reads 8-bit images / 255; convert_image_dtype reads uint16
    # (16-bit PNG) images / 65535. As the augmentation layers scale them.
    top = np.iinfo(dtype).max
    images = np.random.default_rng(0).integers(0, top, size=(2, 6, 6, 3), endpoint=True)
    images = images.astype(dtype)
    images[0, 0, 0] = top
    layer = Preprocessing(resize_size=None, crop_size=4, mean=(0.5, 0.5, 0.5), std=(2, 2, 2))
    expected = (images[:, 1:5, 1:5].astype("float64") / top - 0.5) / 2
    if keras.backend.backend() == "torch":  # Keras's own conversion makes uint16 int32 there
        import torch

        tensor = torch.from_numpy(images)
    else:
        tensor = ops.convert_to_tensor(images)
    for inputs in (images, tensor):
        np.testing.assert_allclose(_np(layer(inputs)), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(layer(images[0])), expected[0], rtol=1e-6, atol=1e-6)
    if keras.backend.backend() == "torch" and dtype == "uint16":
        return  # predict() hands the layer int32 tensors: uint16 is lost before the layer
    traced = keras.Sequential([keras.Input((6, 6, 3), dtype=dtype), layer])
    np.testing.assert_allclose(_np(traced.predict(images, verbose=0)), expected, atol=1e-6)


def test_preprocessing_resizes_to_a_fixed_height_and_width():
    # torchvision's Resize((h, w)) and transformers' ViTImageProcessor: no aspect ratio kept.
    squash = Preprocessing(resize_size=(4, 6), crop_size=None, mean=(0, 0, 0), std=(1, 1, 1))
    assert squash.output_size(300, 400) == (4, 6) and squash.output_size(9, 5) == (4, 6)
    assert squash.compute_output_shape((2, None, None, 3)) == (2, 4, 6, 3)
    # 2x nearest-neighbour upsampling of a 2 x 3 image: each pixel becomes a 2 x 2 block
    small = np.random.default_rng(2).random((1, 2, 3, 3)).astype("float32")
    nearest = Preprocessing((4, 6), None, "nearest", (0, 0, 0), (1, 1, 1), antialias=False)
    expected = small.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(_np(nearest(small)), expected, rtol=1e-6)
    config = squash.get_config()
    assert config["resize_size"] == [4, 6]
    assert Preprocessing.from_config(config).resize_size == (4, 6)
    with pytest.raises(ValueError, match=r"\(height, width\) with positive sides"):
        Preprocessing(resize_size=(4, 6, 3))
    with pytest.raises(ValueError, match="must be positive"):
        Preprocessing(resize_size=0)


def test_preprocessing_refuses_a_channel_count_its_statistics_do_not_have():
    layer = Preprocessing(resize_size=None, crop_size=None)
    with pytest.raises(ValueError, match=r"1 channel\(s\).*have 3.*repeat\(images, 3, axis=-1\)"):
        layer(np.zeros((2, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match=r"look channels_first.*transpose\(0, 2, 3, 1\)"):
        layer(np.zeros((2, 3, 8, 8), "float32"))
    with pytest.raises(ValueError, match=r"images \(H, W, C\) or a batch"):
        layer(np.zeros((8, 8), "float32"))
    gray = Preprocessing(resize_size=None, crop_size=None, mean=(0.5,), std=(0.5,))
    assert tuple(gray(np.zeros((2, 8, 8, 1), "float32")).shape) == (2, 8, 8, 1)


def test_keras_native_preset_from_the_hub_cache(tmp_path):
    from tests.presets._preset_support import SHA, make_hf_cache

    backbone = ConvNet(widths=(8,), input_channels=1)
    keras_ssl.save_to_preset(backbone, tmp_path / "p", preprocessing=Preprocessing(None, 8))
    files = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}
    make_hf_cache(tmp_path / "hf", "me/my-convnet", files)
    model, preprocess = keras_ssl.from_preset(
        f"hf://me/my-convnet@{SHA}", cache_dir=tmp_path / "hf", local_files_only=True
    )
    images = _images()
    np.testing.assert_array_equal(_np(model(images)), _np(backbone(images)))
    assert preprocess.crop_size == 8


def _flip_a_bit_of(path, array):
    """Flips the lowest bit of one element of ``array`` where the file stores it."""
    data = bytearray(path.read_bytes())
    stored = np.ascontiguousarray(array, "<f4").tobytes()
    at = data.find(stored)
    assert at >= 0 and data.find(stored, at + 1) < 0, "the array is stored once, contiguously"
    data[at + 4 * (array.size // 2)] ^= 1
    path.write_bytes(bytes(data))


def test_weight_files_are_checked_against_their_recorded_sha256(tmp_path):
    import hashlib

    model = _dino()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0))
    model.fit(_views(), batch_size=8, epochs=1, verbose=0)
    preset = keras_ssl.save_to_preset(model, tmp_path / "dino")
    metadata = json.loads((preset / "metadata.json").read_text())
    for name in ("model.weights.h5", "optimizer.weights.h5"):
        digest = hashlib.sha256((preset / name).read_bytes()).hexdigest()
        assert metadata["sha256"][name] == digest

    kernel = _np(model.backbone.weights[0])
    assert kernel.size > 8
    _flip_a_bit_of(preset / "model.weights.h5", kernel)
    with pytest.raises(PresetError, match=r"sha256 mismatch for .*model\.weights\.h5"):
        keras_ssl.from_preset(preset, encoder="student")
    # Without the recorded hash the flipped bit loads silently: the check is what finds it.
    unchecked = {**metadata, "sha256": {}}
    (preset / "metadata.json").write_text(json.dumps(unchecked))
    student, _ = keras_ssl.from_preset(preset, encoder="student")
    loaded = _np(student.weights[0])
    assert np.sum(loaded != kernel) == 1

    fresh = keras_ssl.save_to_preset(model, tmp_path / "fresh")
    moment = next(_np(v) for v in model.optimizer.variables if v.shape == kernel.shape)
    _flip_a_bit_of(fresh / "optimizer.weights.h5", moment)
    keras_ssl.from_preset(fresh)  # the backbone alone does not read the optimizer's file
    with pytest.raises(PresetError, match=r"sha256 mismatch for .*optimizer\.weights\.h5"):
        keras_ssl.from_preset(fresh, task="pretraining")


def _tiny_vit():
    return ViT(patch_size=4, hidden_dim=16, depth=1, num_heads=2, input_channels=1,
               pretrain_image_size=16, use_mask_token=False)  # fmt: skip


def test_a_hugging_face_snapshot_folder_loads_through_its_links(tmp_path):
    # huggingface_hub.snapshot_download() returns snapshots/<sha>/, whose files are links
    # to ../../blobs/<hash>: they leave the folder, and are the preset all the same.
    backbone = ConvNet(widths=(8,), input_channels=1)
    keras_ssl.save_to_preset(backbone, tmp_path / "p", preprocessing=Preprocessing(None, 8))
    repo = tmp_path / "hub" / "models--me--my-convnet"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted((tmp_path / "p").iterdir())):
        (repo / "blobs" / f"blob{index}").write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(f"../../blobs/blob{index}")
    model, preprocess = keras_ssl.from_preset(snapshot)
    images = _images()
    np.testing.assert_array_equal(_np(model(images)), _np(backbone(images)))
    assert preprocess.crop_size == 8
    (repo / "blobs" / "blob0").unlink()  # config.json, the first name: a broken link
    with pytest.raises(PresetError, match=r"'config.json' is a symbolic link to .*broken"):
        keras_ssl.from_preset(snapshot)


def test_misspelled_overrides_are_refused_with_a_suggestion(tmp_path):
    # keras.Model's functional constructor would swallow them: the default model, silently.
    vit = _tiny_vit()
    keras_ssl.save_to_preset(vit, tmp_path / "vit")
    with pytest.raises(PresetError, match=r"ViT has no option 'outptu' \(did you mean 'output'"):
        keras_ssl.from_preset(tmp_path / "vit", outptu="tokens")
    with pytest.raises(PresetError, match=r"Valid overrides: .*output, patch_size"):
        keras_ssl.from_preset(tmp_path / "vit", outptu="tokens")
    model = keras_ssl.DINO(_tiny_vit(), output_dim=32, hidden_dim=16, bottleneck_dim=8)
    keras_ssl.save_to_preset(model, tmp_path / "dino")
    with pytest.raises(PresetError, match=r"the teacher encoder .* has no option 'outptu'"):
        keras_ssl.from_preset(tmp_path / "dino", outptu="tokens")
    # Real options still apply, `dtype` among them.
    tokens, _ = keras_ssl.from_preset(tmp_path / "vit", output="tokens", dtype="mixed_bfloat16")
    assert tokens.output_type == "tokens" and tokens.dtype_policy.name == "mixed_bfloat16"
    cls = tokens(_images(n=2, size=16))["cls"]
    assert keras.backend.standardize_dtype(cls.dtype) == "bfloat16"
    np.testing.assert_allclose(_np(cls).astype("float32"), _np(vit(_images(n=2, size=16))),
                               rtol=0.05, atol=0.05)  # fmt: skip


def test_saving_without_preprocessing_removes_an_earlier_one(tmp_path):
    backbone = ConvNet(widths=(8,), input_channels=1)
    keras_ssl.save_to_preset(backbone, tmp_path / "p", preprocessing=Preprocessing(None, 8))
    keras_ssl.save_to_preset(backbone, tmp_path / "p")  # files of the same names replaced
    assert not (tmp_path / "p" / "preprocessing.json").exists()
    assert keras_ssl.from_preset(tmp_path / "p").preprocessing is None


def test_corrupt_preset_files_raise_preset_errors(tmp_path):
    model = _dino()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0))
    model.fit(_views(), batch_size=8, epochs=1, verbose=0)
    keras_ssl.save_to_preset(model, tmp_path / "dino", preprocessing=Preprocessing(None, 8))
    dense = keras.saving.serialize_keras_object(keras.layers.Dense(3))
    cases = [
        ("metadata.json", [1, 2], "backbone", r"metadata.json .* holds an array, not a JSON obj"),
        ("preprocessing.json", {"class_name": "Nope", "config": {}}, "backbone",
         r"preprocessing.json does not describe a keras_ssl.presets.Preprocessing .*'Nope'"),
        ("preprocessing.json", dense, "backbone",
         r"preprocessing.json does not describe .*\(it describes a Dense\)"),
        ("config.json", dense, "backbone", r"config.json describes a Dense, not a keras.Model"),
        ("optimizer.json", "{not json", "pretraining", r"optimizer.json .* not readable JSON"),
        ("optimizer.json", {"class_name": "Nope", "config": {}}, "pretraining",
         r"optimizer.json does not describe a Keras optimizer"),
    ]  # fmt: skip
    for name, content, task, message in cases:
        path = tmp_path / "dino" / name
        good = path.read_bytes()
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(PresetError, match=message):
            keras_ssl.from_preset(tmp_path / "dino", task=task)
        path.write_bytes(good)
