"""``from_preset``: a registered name, ``hf://org/repo[@revision]`` or a local directory."""

import json
import os
from typing import NamedTuple

import keras

from keras_ssl.presets import converters, native, registry
from keras_ssl.presets.errors import PresetError
from keras_ssl.presets.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from keras_ssl.presets.safetensors_io import read_safetensors, read_sharded
from keras_ssl.presets.sources import (
    HF_PREFIX,
    HubSource,
    LocalSource,
    is_repo_id,
    parse_hf_handle,
    verify_sha256,
)

_TASKS = ("backbone", "pretraining")
_ENCODERS = ("auto", "student", "teacher")
# Methods whose published encoder is the EMA teacher (DINO Sec. 3.1: the teacher performs
# better and is the one evaluated); the others publish the online / query encoder.
_TEACHER_EVALUATED = ("DINO", "DINOv2")
_CONVERTIBLE_FORMATS = ("safetensors",)


class LoadedPreset(NamedTuple):
    """What :func:`from_preset` returns: unpack as ``model, preprocessing = ...``."""

    model: keras.Model
    preprocessing: Preprocessing | None


def from_preset(
    handle,
    *,
    task="backbone",
    include_head=False,
    encoder="auto",
    revision=None,
    cache_dir=None,
    local_files_only=None,
    force_download=False,
    token=None,
    **config_overrides,
):
    """Loads a pretrained model and its evaluation preprocessing.

    ``handle`` is one of

    * a registered preset name (``keras_ssl.presets.list_presets()``), e.g.
      ``"dino_vits16"``: its card names a Hugging Face repository, the files and the
      converter, and where it pins them, a revision and the files' sha256;
    * ``"hf://org/repo"`` or ``"hf://org/repo@revision"``: a Keras-native preset
      uploaded with :func:`upload_preset`, or a timm / transformers checkpoint
      (``config.json`` + ``model.safetensors``) converted on load, with the evaluation
      preprocessing its timm ``pretrained_cfg`` or ``preprocessor_config.json`` states
      (ImageNet's resize 256 / crop 224 where it states none);
    * a local directory: a Keras-native preset (:func:`save_to_preset`,
      ``tools/convert_checkpoint.py``) or a local copy of a Hub checkpoint.

    Checkpoints are read with ``safetensors.numpy``: no torch and no unpickling at run
    time. Files come through the Hugging Face cache (``HF_HUB_CACHE``; offline with
    ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``). Sources published only as
    torch / pickle files must be converted once with ``tools/convert_checkpoint.py``.

    Args:
        handle: the preset (see above).
        task: ``"backbone"`` (the feature extractor) or ``"pretraining"`` (the whole
            method model of a Keras-native method preset, e.g. ``keras_ssl.DINO`` with
            its teacher, head, centre and optimizer state, ready to ``fit`` on).
        include_head: with ``task="backbone"``, return ``Sequential([encoder, head])``
            (the method's projection / DINO head), where the preset has one.
        encoder: which encoder of a method preset is the backbone: ``"auto"`` (the
            teacher for DINO / DINOv2, whose teacher is the published one; the online
            encoder otherwise), ``"student"`` or ``"teacher"``.
        revision: overrides the card's or the handle's revision (a commit sha is best).
            An ``hf://`` handle without ``@revision`` of a repository a card names takes
            the card's revision.
        cache_dir, local_files_only, force_download, token: passed to
            ``huggingface_hub.hf_hub_download``; None uses huggingface_hub's settings.
        **config_overrides: backbone config changes applied before the weights are
            loaded, e.g. ``output="tokens"`` for a ViT or ``pooling=None`` for a ResNet.
            For a method preset they change the selected encoder (the method's own
            options, e.g. DINO's ``output_dim``, are refused); with ``include_head`` they
            must keep the encoder's outputs the head takes. Names the backbone class
            does not take are refused.

    Returns:
        ``LoadedPreset(model, preprocessing)``: the model and a
        :class:`keras_ssl.presets.Preprocessing` layer (None when a local preset stores
        none).

    Raises:
        PresetError: unknown name (the message lists the known ones), a directory that
            does not exist, an override the backbone does not take, offline without a
            cached copy, missing files, sha256 mismatch, corrupt safetensors or
            ``.weights.h5``, weights that do not fit, a preset from a newer keras_ssl,
            or a source that needs ``tools/convert_checkpoint.py``.

    Example:

    ```python
    import numpy as np
    import keras_ssl

    model, preprocess = keras_ssl.from_preset("dino_vits16")  # downloads once
    features = model(preprocess(np.zeros((1, 256, 320, 3), "uint8")))  # (1, 384)
    ```
    """
    if task not in _TASKS:
        raise PresetError(f"`task` must be one of {_TASKS}, got {task!r}.")
    if encoder not in _ENCODERS:
        raise PresetError(f"`encoder` must be one of {_ENCODERS}, got {encoder!r}.")
    if task == "pretraining" and (include_head or config_overrides):
        raise PresetError(
            "task='pretraining' returns the whole method model as saved: do not combine it "
            "with include_head or config overrides."
        )
    hub = dict(
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        force_download=force_download,
        token=token,
    )
    options = dict(task=task, include_head=include_head, encoder=encoder)
    if not isinstance(handle, (str, os.PathLike)):
        raise PresetError(
            f"A preset handle is a name, 'hf://org/repo' or a directory, got {handle!r}."
        )
    handle_text = os.fspath(handle)
    if handle_text.startswith(HF_PREFIX):
        repo, handle_revision = parse_hf_handle(handle_text)
        card = registry.find_card_for_repo(repo)
        card_revision = None
        if card is not None:
            _check_card(card)
            card_revision = card["source"].get("revision")  # its sha256s are of that one
        source = HubSource(repo, revision or handle_revision or card_revision, **hub)
        return _load_from_source(source, card, options, config_overrides)
    if isinstance(handle, str) and registry.NAME_PATTERN.match(handle) and ".." not in handle:
        if handle in registry.list_presets() or not os.path.isdir(handle):
            card = registry.get_card(handle)  # raises, listing the known names
            return _load_card(card, revision, hub, options, config_overrides)
    if os.path.isdir(handle_text):
        return _load_from_source(LocalSource(handle_text), None, options, config_overrides)
    if os.path.exists(handle_text):
        raise PresetError(
            f"{handle_text!r} is a file; a local preset is a directory (config.json, "
            "model.weights.h5, metadata.json)."
        )
    if not isinstance(handle, str) or any(sep and sep in handle for sep in _SEPARATORS):
        raise PresetError(_no_directory_message(handle_text))
    registry.check_name(handle_text)  # not a name either: says why, with a suggestion
    raise PresetError(f"No preset, Hub handle or directory {handle_text!r}.")


_SEPARATORS = ("/", os.sep, os.altsep)


def _no_directory_message(path):
    message = (
        f"The directory {path!r} does not exist ({os.path.abspath(path)}). Pass an existing "
        "preset directory, a preset name (keras_ssl.presets.list_presets()) or 'hf://org/name'."
    )
    if is_repo_id(path):
        message += f" For the Hugging Face repository, pass 'hf://{path}'."
    return message


def _check_card(card):
    """Refuses a card this keras_ssl is too old for, or whose files need converting."""
    native.check_version(card.get("min_keras_ssl_version"), f"Preset card {card['name']!r}")
    if card["source"]["format"] not in (*_CONVERTIBLE_FORMATS, "keras_ssl"):
        raise PresetError(_needs_conversion_message(card))


def _load_card(card, revision, hub, options, overrides):
    _check_card(card)
    source_spec = card["source"]
    if source_spec.get("hub") != "hf" or not source_spec.get("repo"):
        raise PresetError(f"Preset card {card['name']!r} has no Hugging Face 'repo' to load.")
    source = HubSource(source_spec["repo"], revision or source_spec.get("revision"), **hub)
    return _load_from_source(source, card, options, overrides)


def _needs_conversion_message(card):
    source = card["source"]
    where = source.get("url") or source.get("repo") or "the authors' release"
    if not source.get("converter"):
        return (
            f"Preset {card['name']!r} is published only as a {source['format']} file ({where}) "
            "and keras_ssl has no converter for it yet; see the card's 'note'."
        )
    return (
        f"Preset {card['name']!r} is published only as a {source['format']} file ({where}), "
        "which keras_ssl does not unpickle at load time. Convert it once, offline: `python "
        f"tools/convert_checkpoint.py --card {card['name']} --checkpoint <downloaded file> "
        "--output <dir>` (needs torch), then load it with keras_ssl.from_preset('<dir>')."
    )


def _load_from_source(source, card, options, overrides):
    fmt = card["source"]["format"] if card else None
    source_config = None
    config_name = ((card or {}).get("source", {}).get("files") or {}).get("config", "config.json")
    backbone_spec = (card or {}).get("backbone", {})
    derived = backbone_spec.get("config") is None and backbone_spec.get("source_config") is None
    if fmt != "safetensors" or derived:
        path = source.get(config_name, required=fmt is not None)
        if path is None:
            raise PresetError(
                f"{source.description} has no {config_name}: it is neither a keras_ssl preset "
                "nor a timm / transformers checkpoint."
            )
        source_config = native.read_json(path, f"{source.description}: {config_name}")
    if fmt == "keras_ssl" or (fmt is None and native.is_native_config(source_config)):
        model, metadata, preprocessing = native.load_native(
            source, overrides if options["task"] == "backbone" else None
        )
        if preprocessing is None and card is not None:
            preprocessing = Preprocessing.from_card(card["preprocessing"])
        return _select(model, preprocessing, options, source, overrides)
    if card is None:
        card = _card_from_source_config(source, source_config)
    if options["task"] == "pretraining" or options["include_head"]:
        raise PresetError(_no_head_message(card, options))
    backbone = _convert(source, card, source_config, overrides)
    return LoadedPreset(backbone, Preprocessing.from_card(card["preprocessing"]))


def _no_head_message(card, options):
    what = "pretraining model" if options["task"] == "pretraining" else "head"
    full = card.get("full_checkpoint")
    if full:
        command = full.get("convert_with") or "tools/convert_checkpoint.py"
        return (
            f"Preset {card['name']!r} holds the backbone only; the {what} comes with the full "
            f"checkpoint ({full.get('url')}). Convert it with `python {command} "
            f"--card {card['name']} --checkpoint <downloaded full checkpoint> --output <dir>` and "
            "load <dir>."
        )
    return f"Preset {card['name']!r} holds the backbone only; it has no {what}."


def _card_from_source_config(source, source_config):
    name = converters.detect(source_config)
    if name is None:
        raise PresetError(
            f"{source.description}: config.json is neither a keras_ssl preset nor a known "
            "checkpoint format (transformers model_type dinov2 / dinov2_with_registers / vit, or "
            f"timm vit_* / resnet*); got keys {sorted(source_config)[:12]}."
        )
    pretrained = source_config.get("pretrained_cfg") or {}
    return {
        "name": source.description,
        "backbone": {"class": converters.backbone_class(name), "config": None},
        "source": {
            "format": "safetensors",
            "converter": name,
            "files": {"config": "config.json"},  # weights: one file, or split with an index
            "sha256": {},
        },
        "preprocessing": _source_preprocessing(source, pretrained),
        "license": pretrained.get("license"),
    }


_PIL_RESAMPLING = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _source_preprocessing(source, pretrained):
    """The evaluation preprocessing a checkpoint without a card states: timm's
    `pretrained_cfg`, else transformers' `preprocessor_config.json`, else ImageNet's
    resize 256 / crop 224 (bicubic)."""
    if not pretrained:
        spec = _transformers_preprocessing(source)
        if spec:
            return spec
    crop = int((pretrained.get("input_size") or (3, 224, 224))[-1])
    crop_pct = float(pretrained.get("crop_pct") or 0.875)
    return {
        "resize_size": int(crop / crop_pct),
        "crop_size": crop,
        "interpolation": pretrained.get("interpolation") or "bicubic",
        "mean": list(pretrained.get("mean") or IMAGENET_MEAN),
        "std": list(pretrained.get("std") or IMAGENET_STD),
    }


def _side(size, key):
    """One side from a transformers size entry (an int or a dict), or None."""
    if isinstance(size, dict):
        size = size.get(key)
    return None if size is None else int(size)


# transformers' image processors that resize the shorter side and centre-crop by default
# (`default_to_square = False`, `do_center_crop = True`, 224 px both); for the others,
# ViTImageProcessor among them, an int `size` is a square height x width and nothing is
# cropped unless the config says so.
_SHORTER_SIDE_PROCESSORS = ("Bit", "CLIP")


def _transformers_preprocessing(source):
    """`preprocessor_config.json` (ViTImageProcessor, BitImageProcessor) as a card's
    preprocessing; {} when the checkpoint has none. `size` is either the shorter side
    (`shortest_edge`) or the output's `height` and `width`, resized to exactly."""
    path = source.get("preprocessor_config.json", required=False)
    if path is None:
        return {}
    config = native.read_json(path, f"{source.description}: preprocessor_config.json")
    kind = config.get("image_processor_type") or config.get("feature_extractor_type") or ""
    by_shorter_side = kind.startswith(_SHORTER_SIDE_PROCESSORS)
    size = config.get("size", 224) if config.get("do_resize", True) else None
    if isinstance(size, int):  # the older configs' form, or the processor's default
        size = {"shortest_edge": size} if by_shorter_side else {"height": size, "width": size}
    shortest = _side(size, "shortest_edge")
    height, width = _side(size, "height"), _side(size, "width")
    crop = None
    if config.get("do_center_crop", by_shorter_side):
        crop_size = config.get("crop_size", 224)
        crop, crop_width = _side(crop_size, "height"), _side(crop_size, "width")
        if crop_width not in (None, crop):
            raise PresetError(
                f"{source.description}: preprocessor_config.json crops to "
                f"{crop}x{crop_width}; keras_ssl's Preprocessing cuts square centre crops only."
            )
    return {
        "resize_size": shortest or ((height, width or height) if height else None),
        "crop_size": crop,
        "interpolation": _PIL_RESAMPLING.get(config.get("resample"), "bicubic"),
        "mean": list(config.get("image_mean") or IMAGENET_MEAN),
        "std": list(config.get("image_std") or IMAGENET_STD),
    }


def _read_weights(source, card):
    files = card["source"].get("files") or {}
    hashes = card["source"].get("sha256") or {}
    filename = files.get("weights") or "model.safetensors"
    if filename.endswith(".index.json"):
        index = source.get(filename)
        verify_sha256(index, hashes.get(filename), f"{source.description}/{filename}")

        def get_shard(shard):
            path = source.get(shard)
            verify_sha256(path, hashes.get(shard), f"{source.description}/{shard}")
            return path

        return read_sharded(index, get_shard)
    path = source.get(filename, required="weights" in files)
    if path is None:  # a checkpoint without a card may be split, with an index
        index = source.get(filename + ".index.json", required=False)
        if index is None:
            raise PresetError(
                f"{source.description} has neither {filename} nor {filename}.index.json: "
                "it holds no safetensors weights."
            )
        return read_sharded(index, source.get)
    verify_sha256(path, hashes.get(filename), f"{source.description}/{filename}")
    return read_safetensors(path)


def _convert(source, card, source_config, overrides):
    from keras_ssl import backbones

    converter_name = card["source"].get("converter")
    try:
        converter = converters.get(converter_name)
    except ValueError as error:
        raise PresetError(f"Preset {card['name']!r}: {error}") from None
    config = card["backbone"].get("config")
    if config is None:
        try:
            config = converter.backbone_config(
                card["backbone"].get("source_config") or source_config
            )
        except (KeyError, ValueError) as error:
            raise PresetError(
                f"{source.description}: cannot derive the backbone config from its "
                f"config.json with {converter_name!r}: {error}"
            ) from None
    config = {**config, **overrides}
    class_name = card["backbone"]["class"]
    cls = getattr(backbones, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, keras.Model):
        raise PresetError(f"Preset {card['name']!r}: unknown backbone class {class_name!r}.")
    native.check_overrides(cls, overrides, f"Preset {card['name']!r}")
    weights = _read_weights(source, card)  # fetched and verified before the (slow) build
    try:
        backbone = cls(**config)
    except (TypeError, ValueError) as error:
        raise PresetError(
            f"Preset {card['name']!r}: cannot build {class_name}(**{json.dumps(config)}): {error}"
        ) from None
    try:
        converter.convert_weights(weights, backbone)
    except ValueError as error:
        raise PresetError(
            f"The weights of {source.description} do not fit the {class_name} built for preset "
            f"{card['name']!r} (converter {converter_name!r}): {error}"
        ) from None
    return backbone


def _output_shapes(model):
    return [tuple(output.shape) for output in getattr(model, "outputs", None) or ()]


def _select(model, preprocessing, options, source, overrides):
    """The model ``options`` ask for out of a Keras-native preset's ``model``; a method's
    encoder is rebuilt with ``overrides`` (a backbone preset's were applied at load)."""
    from keras_ssl.trainer import ContrastiveTrainer

    where = source.description

    if not isinstance(model, ContrastiveTrainer):
        if options["task"] == "pretraining":
            raise PresetError(
                f"{where} holds a {type(model).__name__} backbone, not a method model: "
                "task='pretraining' needs a preset saved from e.g. keras_ssl.DINO."
            )
        if options["include_head"]:
            raise PresetError(f"{where} holds a backbone only; it has no head.")
        return LoadedPreset(model, preprocessing)
    if options["task"] == "pretraining":
        native._restore_optimizer(model, source)
        return LoadedPreset(model, preprocessing)
    method = type(model).__name__
    choice = options["encoder"]
    if choice == "auto":
        choice = "teacher" if method in _TEACHER_EVALUATED else "student"
    prefix = "teacher_" if choice == "teacher" else ""
    saved = getattr(model, f"{prefix}backbone", None)
    if saved is None:
        raise PresetError(f"{where}: {method} has no {choice} encoder.")
    encoder = saved
    if overrides:
        what = f"the {choice} encoder of the {method} preset {where}"
        encoder = native.rebuild_with_overrides(saved, overrides, what, method=model)
    if not options["include_head"]:
        return LoadedPreset(encoder, preprocessing)
    head_names = ("teacher_head",) if choice == "teacher" else ("head", "projection_head")
    head = next((getattr(model, n) for n in head_names if getattr(model, n, None)), None)
    if head is None:
        raise PresetError(f"{where}: {method} has no {choice} head.")
    if _output_shapes(encoder) != _output_shapes(saved):
        raise PresetError(
            f"The overrides {overrides} change the {choice} encoder's outputs from "
            f"{_output_shapes(saved)} to {_output_shapes(encoder)}, which the {method} head "
            "cannot take: drop include_head=True to get the encoder alone, or drop those "
            "overrides."
        )
    return LoadedPreset(keras.Sequential([encoder, head], name=f"{method}_{choice}"), preprocessing)
