"""What a saved method carries besides its weights: random-generator states and a version.

- Keras saves layers' variables but not their `SeedGenerator` states, so a reloaded
  model would restart its augmentation (and mask) randomness from the seed: a resumed
  run would see other crops than the run it continues. The trainer saves the state of
  every seed generator of the model (augmenter, DINOv2's mask sampler, dropout) with its
  own variables, in a fixed order, and restores it on load.
- Method configs record the keras_ssl version that wrote them; a config from a newer
  major version is refused with an error naming the fix, not half-understood.
"""

import contextlib
import os
import warnings
import zipfile

import keras

SEED_STATE_PREFIX = "seed_state_"
BATCH_COUNTER_KEY = "batches_trained"
VERSION_KEY = "keras_ssl_version"


def seed_states(model):
    """The state variables of all seed generators in `model`, in a fixed order."""
    states, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", ()):
            if id(generator.state) not in seen:
                seen.add(id(generator.state))
                states.append(generator.state)
    return states


def save_seed_states(model, store):
    for index, state in enumerate(seed_states(model)):
        store[f"{SEED_STATE_PREFIX}{index}"] = keras.ops.convert_to_numpy(state)


def split_seed_states(store):
    """`(own variables, seed states)`: the saved model's own entries split in two dicts."""
    own, seeds = {}, {}
    for key in store.keys():
        if key.startswith(SEED_STATE_PREFIX):
            seeds[int(key[len(SEED_STATE_PREFIX) :])] = store[key]
        else:
            own[key] = store[key]
    return own, [seeds[i] for i in sorted(seeds)]


def load_seed_states(model, saved):
    states = seed_states(model)
    if not saved:
        return  # written before seed states were saved: the generators restart from their seeds
    if len(saved) != len(states):
        warnings.warn(
            f"The file holds {len(saved)} random-generator states but {model.name} has "
            f"{len(states)} (a different augmenter?): the augmentation randomness restarts "
            "from its seeds.",
            stacklevel=3,
        )
        return
    for state, value in zip(states, saved, strict=True):
        state.assign(value)


def current_version():
    import keras_ssl

    return keras_ssl.__version__


def _major(version):
    return int(str(version).split(".")[0])


def check_config_version(config, class_name):
    """Pops the version from a method config; refuses configs of a newer major version."""
    saved = config.pop(VERSION_KEY, None)
    if saved is None:
        return None
    installed = current_version()
    try:
        newer_major = _major(saved) > _major(installed)
    except ValueError:
        raise ValueError(
            f"This {class_name} config has an unreadable {VERSION_KEY}={saved!r}: it was not "
            "written by keras_ssl, or it was edited. Re-save the model with keras_ssl."
        ) from None
    if newer_major:
        raise ValueError(
            f"This {class_name} was saved by keras_ssl {saved}, a newer major version than "
            f"the installed {installed}, whose format this version cannot read. Upgrade: "
            "`pip install -U keras-ssl`."
        )
    return saved


@contextlib.contextmanager
def reraise_corrupt_file_errors(filepath):
    """Turns h5py's and zipfile's errors on a damaged file into one that names the fix."""
    try:
        yield
    except (OSError, RuntimeError, zipfile.BadZipFile, ValueError) as error:
        path = os.fspath(filepath)
        if not os.path.isfile(path) or isinstance(error, ValueError) and not _is_unreadable(path):
            raise
        raise ValueError(
            f"{path} is truncated or corrupt and cannot be read ({type(error).__name__}: "
            f"{error}). Re-download it (a preset: delete it from the cache), or load an "
            "earlier checkpoint; a file written by a run that was killed while saving is "
            "incomplete."
        ) from error


def _is_unreadable(path):
    """Whether `path` is neither an HDF5 file nor a zip archive that opens."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return archive.testzip() is not None
        except zipfile.BadZipFile:
            return True
    with open(path, "rb") as f:
        return f.read(8) != b"\x89HDF\r\n\x1a\n"
