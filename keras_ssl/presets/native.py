"""Keras-native presets: a directory with ``config.json``, ``model.weights.h5`` and
``metadata.json`` (plus ``preprocessing.json`` and, for a compiled method model, the
optimizer's config and variables so pretraining can continue). ``metadata.json`` records
the sha256 of the weight files, checked at load: HDF5 has no checksums of its own, so a
flipped bit in a weight would otherwise load silently."""

import datetime
import inspect
import json
import os
import re
from pathlib import Path

import keras
import numpy as np

from keras_ssl.presets.errors import PresetError, closest
from keras_ssl.presets.sources import (
    HF_PREFIX,
    LocalSource,
    parse_hf_handle,
    sha256_of,
    verify_sha256,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
PREPROCESSING_FILE = "preprocessing.json"
OPTIMIZER_CONFIG_FILE = "optimizer.json"
OPTIMIZER_WEIGHTS_FILE = "optimizer.weights.h5"
_HASHED_FILES = (WEIGHTS_FILE, OPTIMIZER_WEIGHTS_FILE)
_DAMAGE_ADVICE = (
    "The file is corrupt or truncated, or was replaced after save_to_preset recorded its hash "
    "in metadata.json. Copy or download the preset again (an hf:// preset: "
    "force_download=True); if you changed the weights on purpose, save the model with "
    "keras_ssl.save_to_preset, which records the new hash."
)


def _version():
    import keras_ssl

    return keras_ssl.__version__


def _version_tuple(version):
    """The release numbers of a version: "0.1.0rc1" -> (0, 1, 0) (a pre-release is not
    newer than its release), "1.2.dev3" -> (1, 2)."""
    parts = []
    for piece in str(version).split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):  # "0rc1": the release numbers end here
            break
    return tuple(parts)


def check_version(saved_version, what):
    """Refuses a preset written by a newer keras_ssl than the one installed."""
    if saved_version and _version_tuple(saved_version) > _version_tuple(_version()):
        raise PresetError(
            f"{what} was written by keras_ssl {saved_version}, newer than the installed "
            f"{_version()}: its config may use options this version lacks. Upgrade with "
            "`pip install -U keras-ssl`."
        )


def _is_trainer(model):
    from keras_ssl.trainer import ContrastiveTrainer

    return isinstance(model, ContrastiveTrainer)


def _to_json(value, what):
    try:
        return json.dumps(value, indent=2, sort_keys=True)
    except TypeError as error:
        raise PresetError(f"{what} must be JSON-serialisable: {error}.") from None


def save_to_preset(model, preset_dir, metadata=None, preprocessing=None):
    """Saves a backbone or a whole method model as a Keras-native preset directory.

    Writes ``config.json`` (the Keras config), ``model.weights.h5``, ``metadata.json``
    and, when given, ``preprocessing.json``. For a compiled method model (e.g.
    ``keras_ssl.DINO`` after ``fit``) the optimizer's config and variables (step
    counter included) go to ``optimizer.json`` / ``optimizer.weights.h5``, so
    ``from_preset(dir, task="pretraining")`` continues the run: teacher, centre,
    queue and schedules included.

    Args:
        model: a ``keras_ssl`` backbone or method model (any serialisable
            ``keras.Model``), built.
        preset_dir: directory to write (created; files of the same names are replaced).
        metadata: dict merged into ``metadata.json``, e.g. ``{"method": "DINO",
            "epochs": 100, "data": "ImageNet-1k train", "scores": {"imagenet_knn_top1":
            74.5}, "license": "Apache-2.0"}``. Must be JSON-serialisable.
        preprocessing: a :class:`keras_ssl.presets.Preprocessing` (or its config dict)
            to store with the weights.

    Returns:
        The directory, as a ``pathlib.Path``.

    Example:

    ```python
    import keras_ssl
    backbone = keras_ssl.backbones.ResNet18(stem="cifar")
    keras_ssl.save_to_preset(backbone, "/tmp/my_resnet", metadata={"license": "MIT"})
    model, preprocess = keras_ssl.from_preset("/tmp/my_resnet")
    ```
    """
    if not isinstance(model, keras.Model):
        raise PresetError(f"save_to_preset takes a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise PresetError(
            f"Model {model.name!r} is not built: call it on a batch (or build it) before saving."
        )
    preset_dir = Path(preset_dir)
    preset_dir.mkdir(parents=True, exist_ok=True)
    trainer = _is_trainer(model)
    info = {
        "keras_ssl_version": _version(),
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "class_name": type(model).__name__,
        "task": "pretraining" if trainer else "backbone",
        "method": type(model).__name__ if trainer else None,
        "epochs": None,
        "data": None,
        "scores": {},
        "license": None,
        "parameters": int(model.count_params()),
    }
    info.update(metadata or {})
    config = keras.saving.serialize_keras_object(model)
    config_text = _to_json(config, "The model config")
    if preprocessing is not None and not isinstance(preprocessing, dict):
        preprocessing = keras.saving.serialize_keras_object(preprocessing)
    _to_json(info, "metadata")  # fails before anything is written
    (preset_dir / CONFIG_FILE).write_text(config_text, encoding="utf-8")
    if preprocessing is not None:
        text = _to_json(preprocessing, "preprocessing")
        (preset_dir / PREPROCESSING_FILE).write_text(text, encoding="utf-8")
    else:  # an earlier save's file would pair these weights with its preprocessing
        (preset_dir / PREPROCESSING_FILE).unlink(missing_ok=True)
    model.save_weights(str(preset_dir / WEIGHTS_FILE), overwrite=True)
    optimizer = getattr(model, "optimizer", None)
    if trainer and optimizer is not None and optimizer.built:
        _save_optimizer(optimizer, preset_dir)
    else:
        for name in (OPTIMIZER_CONFIG_FILE, OPTIMIZER_WEIGHTS_FILE):
            (preset_dir / name).unlink(missing_ok=True)
    info["sha256"] = {
        name: sha256_of(preset_dir / name) for name in _HASHED_FILES if (preset_dir / name).exists()
    }
    (preset_dir / METADATA_FILE).write_text(_to_json(info, "metadata"), encoding="utf-8")
    return preset_dir


def _save_optimizer(optimizer, preset_dir):
    import h5py

    config = keras.optimizers.serialize(optimizer)
    (preset_dir / OPTIMIZER_CONFIG_FILE).write_text(
        _to_json(config, "The optimizer config"), encoding="utf-8"
    )
    with h5py.File(preset_dir / OPTIMIZER_WEIGHTS_FILE, "w") as file:
        for index, variable in enumerate(optimizer.variables):
            data = file.create_dataset(str(index), data=keras.ops.convert_to_numpy(variable))
            data.attrs["path"] = variable.path
        file.attrs["count"] = len(optimizer.variables)


def _restore_optimizer(model, source):
    import h5py

    config_path = source.get(OPTIMIZER_CONFIG_FILE, required=False)
    weights_path = _verified_file(source, OPTIMIZER_WEIGHTS_FILE, required=False)
    if config_path is None or weights_path is None:
        return False
    config = read_json(config_path, f"{source.description}: {OPTIMIZER_CONFIG_FILE}")
    fix = (
        f"Save the preset again with save_to_preset, or delete {OPTIMIZER_CONFIG_FILE} and "
        f"{OPTIMIZER_WEIGHTS_FILE} and compile the model with a fresh optimizer."
    )
    what = "Keras optimizer"
    try:
        optimizer = keras.optimizers.deserialize(config)
    except (TypeError, ValueError) as error:
        raise PresetError(_not_a(source, OPTIMIZER_CONFIG_FILE, what, error, fix)) from None
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        reason = f"it gives {optimizer!r}"
        raise PresetError(_not_a(source, OPTIMIZER_CONFIG_FILE, what, reason, fix))
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    try:
        with h5py.File(weights_path, "r") as file:
            count = int(file.attrs["count"])
            values = [np.asarray(file[str(i)]) for i in range(count)]
    except (OSError, KeyError) as error:
        raise PresetError(
            f"{weights_path} is not a readable optimizer state ({error}): corrupt or truncated."
        ) from None
    if len(values) != len(optimizer.variables):
        raise PresetError(
            f"The saved optimizer has {len(values)} variables, the rebuilt one "
            f"{len(optimizer.variables)}: the preset's optimizer does not fit this model."
        )
    for variable, value in zip(optimizer.variables, values, strict=True):
        if tuple(variable.shape) != value.shape:
            raise PresetError(
                f"Optimizer variable {variable.path} has shape {tuple(variable.shape)}, the "
                f"preset {value.shape}: the preset's optimizer does not fit this model."
            )
        variable.assign(value)
    return True


def read_json(path, what):
    """The JSON object (a dict) in file ``path``; ``what`` names the file in errors."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PresetError(f"{what} ({path}) is not readable JSON: {error}.") from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        raise PresetError(
            f"{what} ({path}) holds {kind.get(type(value), 'a number')}, not a JSON object: "
            "the file is damaged, or is not the file keras_ssl expects under that name. Copy "
            "or download the preset again."
        )
    return value


def _verified_file(source, name, required=True, metadata=None):
    """The local path of a preset file, checked against the sha256 that ``metadata.json``
    records for it (presets saved before keras_ssl recorded hashes are not checked)."""
    path = source.get(name, required=required)
    if path is not None:
        if metadata is None:
            what = f"{source.description}: {METADATA_FILE}"
            metadata = read_json(source.get(METADATA_FILE), what)
        expected = (metadata.get("sha256") or {}).get(name)
        verify_sha256(path, expected, f"{source.description}/{name}", _DAMAGE_ADVICE)
    return path


def _with_overrides(overrides):
    return f" with the overrides {overrides}" if overrides else ""


def _count_arrays(weights_path):
    """Number of arrays in a `.weights.h5` file."""
    import h5py

    count = 0

    def visit(_, item):
        nonlocal count
        count += isinstance(item, h5py.Dataset)

    with h5py.File(weights_path, "r") as file:
        file.visititems(visit)
    return count


def is_native_config(config):
    return isinstance(config, dict) and "class_name" in config and "config" in config


def is_method_config(config):
    """Whether a Keras-native ``config.json`` holds a method model (a ``ContrastiveTrainer``
    such as ``keras_ssl.DINO``) rather than a backbone."""
    from keras_ssl.trainer import ContrastiveTrainer

    cls = keras.saving.get_registered_object(config.get("registered_name") or "")
    return isinstance(cls, type) and issubclass(cls, ContrastiveTrainer)


def _method_options(method):
    """The keyword arguments ``type(method)`` takes (``DINO``: ``output_dim``, ...)."""
    return _named_parameters(type(method))


def _named_parameters(cls):
    """The named arguments of ``cls``'s constructor (not ``*args`` / ``**kwargs``)."""
    parameters = inspect.signature(cls).parameters.values()
    return {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


# What keras.Model's functional constructor takes besides a class's own arguments; it
# ignores every other keyword without a word.
_MODEL_ARGUMENTS = ("name", "trainable")


def check_overrides(cls, overrides, where, config=()):
    """Refuses ``from_preset`` overrides that are not options of model class ``cls``.

    A functional ``keras.Model`` swallows keyword arguments it does not know, so a
    misspelled override (``outptu="tokens"``) would load the default model silently.

    Args:
        cls: the class the overrides go to (e.g. ``ViT``).
        overrides: the override names and values.
        where: the preset's description for the message.
        config: the saved config's keys, valid too (``name``, ``trainable``).

    Raises:
        PresetError: naming each unknown override, the closest valid name and the
            valid ones.
    """
    valid = _named_parameters(cls) | set(_MODEL_ARGUMENTS) | set(config)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        named = []
        for name in unknown:
            guess = closest(name, valid)
            named.append(f"{name!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
        raise PresetError(
            f"{where}: {cls.__name__} has no option {', '.join(named)}. Valid overrides: "
            f"{', '.join(sorted(valid))}."
        )


def rebuild_with_overrides(model, overrides, where, method=None):
    """``model`` rebuilt from ``{**model.get_config(), **overrides}``, with its weights.

    What :func:`load_native` does to a backbone preset, for the encoder taken out of a
    method preset: the rebuilt model must hold as many arrays, of the same shapes, as
    ``model`` (an override that changes the architecture is refused, not half loaded).

    Args:
        model: the built backbone (e.g. ``dino.teacher_backbone``).
        overrides: its config changes, e.g. ``{"output": "tokens"}``.
        where: the model's description for the error messages.
        method: the method model ``model`` comes from; overrides that are options of the
            method and not of the backbone are refused with a message saying so.

    Returns:
        The rebuilt model.
    """
    own = model.get_config()
    cls_name = type(model).__name__
    if method is not None:
        misplaced = sorted(k for k in overrides if k in _method_options(method) and k not in own)
        if misplaced:
            raise PresetError(
                f"{misplaced} {'is an option' if len(misplaced) == 1 else 'are options'} of "
                f"{type(method).__name__}, not of its {cls_name} backbone: from_preset "
                f"returns {where} (task='backbone'), and its overrides change that backbone's "
                f"config ({', '.join(sorted(own))}). The method itself loads as saved with "
                "task='pretraining', which takes no overrides."
            )
    check_overrides(type(model), overrides, where, own)
    config = keras.saving.serialize_keras_object(model)
    config["config"] = {**own, **overrides}
    try:
        rebuilt = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except (TypeError, ValueError) as error:
        raise PresetError(
            f"Cannot rebuild {where} ({cls_name}) with the overrides {overrides}: {error}. "
            f"The overrides change the backbone's config ({', '.join(sorted(own))})."
        ) from None
    if len(rebuilt.weights) != len(model.weights):
        raise PresetError(
            f"The {cls_name} built with the overrides {overrides} has {len(rebuilt.weights)} "
            f"arrays but {where} holds {len(model.weights)}: the overrides change the "
            "architecture. Pass only options that keep the weights (e.g. output=), or build "
            "the model yourself and load what fits."
        )
    for new, old in zip(rebuilt.weights, model.weights, strict=True):
        if tuple(new.shape) != tuple(old.shape):
            raise PresetError(
                f"{old.path} of {where} has shape {tuple(old.shape)}, {tuple(new.shape)} in the "
                f"{cls_name} built with the overrides {overrides}: the overrides change the "
                "architecture. Pass only options that keep the weights (e.g. output=)."
            )
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def load_native(source, overrides=None):
    """``(model, metadata, preprocessing or None)`` from a Keras-native preset source.

    ``overrides`` update a backbone preset's config (e.g. ``{"output": "tokens"}``)
    before it is built; the weights must still fit. A method preset (e.g. a saved
    ``keras_ssl.DINO``) is built as saved: its overrides are for the encoder the caller
    takes out of it, which :func:`rebuild_with_overrides` applies them to.
    """
    import keras_ssl  # noqa: F401  (registers the serialisable classes)
    from keras_ssl.presets.preprocessing import Preprocessing

    metadata = read_json(source.get(METADATA_FILE), f"{source.description}: {METADATA_FILE}")
    check_version(metadata.get("keras_ssl_version"), f"The preset {source.description}")
    config = read_json(source.get(CONFIG_FILE), f"{source.description}: {CONFIG_FILE}")
    if not is_native_config(config) or not isinstance(config["config"], dict):
        raise PresetError(f"{source.description}: {CONFIG_FILE} is not a Keras model config.")
    if overrides and is_method_config(config):
        overrides = None  # the method's config is not the backbone's: see the docstring
    if overrides:
        cls = keras.saving.get_registered_object(config.get("registered_name") or "")
        if isinstance(cls, type):  # else the class is unknown: deserialising says so
            check_overrides(cls, overrides, f"The preset {source.description}", config["config"])
        config = json.loads(json.dumps(config))
        config["config"].update(overrides)
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except (TypeError, ValueError) as error:
        raise PresetError(
            f"Cannot rebuild the model of {source.description} from {CONFIG_FILE}: {error}. If "
            "the preset comes from another keras_ssl version, upgrade keras_ssl; if you passed "
            "config overrides, check their names."
        ) from None
    if not isinstance(model, keras.Model):
        raise PresetError(
            f"{source.description}: {CONFIG_FILE} describes a {type(model).__name__}, not a "
            "keras.Model: it is not a preset's config. Save the model with "
            "keras_ssl.save_to_preset, which writes the model's config."
        )
    weights = _verified_file(source, WEIGHTS_FILE, metadata=metadata)
    try:
        model.load_weights(weights)
    except OSError as error:
        raise PresetError(
            f"{weights} is not a readable .weights.h5 file ({error}): it is corrupt or "
            "truncated. Download or save the preset again."
        ) from None
    except ValueError as error:
        raise PresetError(
            f"The weights of {source.description} do not fit the model its {CONFIG_FILE} "
            f"describes{_with_overrides(overrides)}: {error}"
        ) from None
    # Keras loads a file with more arrays than the model has without a word: a smaller
    # override (depth=2 of a depth-4 ViT) would leave part of the network behind.
    arrays = _count_arrays(weights) if overrides else len(model.weights)
    if arrays != len(model.weights):
        raise PresetError(
            f"The weights of {source.description} hold {arrays} arrays but "
            f"the model built{_with_overrides(overrides)} has {len(model.weights)}: the "
            "overrides change the architecture. Pass only options that keep the weights (e.g. "
            "output=), or build the model yourself and load what fits."
        )
    preprocessing = None
    path = source.get(PREPROCESSING_FILE, required=False)
    if path is not None:
        spec = read_json(path, f"{source.description}: {PREPROCESSING_FILE}")
        fix = (
            "Save the preset again with save_to_preset(..., preprocessing=Preprocessing(...)), "
            f"or delete {PREPROCESSING_FILE} to load the model without its preprocessing."
        )
        what = "keras_ssl.presets.Preprocessing"
        try:
            preprocessing = keras.saving.deserialize_keras_object(
                spec, custom_objects={"Preprocessing": Preprocessing}, safe_mode=True
            )
        except (TypeError, ValueError) as error:
            raise PresetError(_not_a(source, PREPROCESSING_FILE, what, error, fix)) from None
        if not isinstance(preprocessing, Preprocessing):
            reason = f"it describes a {type(preprocessing).__name__}"
            raise PresetError(_not_a(source, PREPROCESSING_FILE, what, reason, fix))
    return model, metadata, preprocessing


def _not_a(source, filename, what, reason, fix):
    """The message for a preset file that does not describe the object it stands for."""
    return f"{source.description}: {filename} does not describe a {what} ({reason}). {fix}"


def upload_preset(uri, preset_dir, token=None, private=None, commit_message=None, revision=None):
    """Uploads a Keras-native preset directory to the Hugging Face Hub.

    Creates the repository if needed (``HfApi.create_repo(exist_ok=True)``) and uploads
    the folder with ``HfApi.upload_folder``. Needs network access and a token with write
    access (``hf auth login`` or ``token=``).

    Args:
        uri: ``"hf://org/name"`` (``"hf://org/name@branch"`` uploads to that branch).
        preset_dir: a directory written by :func:`save_to_preset`.
        token, private: passed to ``huggingface_hub``.
        commit_message: defaults to "Upload keras_ssl preset <name>".
        revision: the branch to commit to (overrides the ``@branch`` of ``uri``).

    Returns:
        ``huggingface_hub``'s ``CommitInfo``.

    Example:

    ```python
    import keras_ssl
    # keras_ssl.save_to_preset(model, "my_dino")
    # keras_ssl.upload_preset("hf://my-org/my-dino", "my_dino")
    ```
    """
    if not isinstance(uri, str) or not uri.startswith(HF_PREFIX):
        raise PresetError(
            f"upload_preset uploads to the Hugging Face Hub: pass 'hf://org/name', got {uri!r}."
        )
    repo, handle_revision = parse_hf_handle(uri)
    revision = revision or handle_revision
    local = LocalSource(preset_dir)
    if not Path(preset_dir).is_dir():
        raise PresetError(f"Preset directory {str(preset_dir)!r} does not exist.")
    for name in (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE):
        local.get(name)  # raises a clear error when a file is missing
    metadata = read_json(local.get(METADATA_FILE), METADATA_FILE)
    if not is_native_config(read_json(local.get(CONFIG_FILE), CONFIG_FILE)):
        raise PresetError(f"{preset_dir}: {CONFIG_FILE} is not a Keras model config.")
    for entry in os.scandir(preset_dir):
        if entry.is_symlink():
            raise PresetError(f"{entry.path} is a symbolic link: upload only plain files.")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    message = commit_message or (
        f"Upload keras_ssl preset {Path(preset_dir).name} "
        f"({metadata.get('class_name')}, keras_ssl {metadata.get('keras_ssl_version')})"
    )
    return api.upload_folder(
        repo_id=repo,
        folder_path=str(preset_dir),
        repo_type="model",
        revision=revision,
        commit_message=message,
    )
