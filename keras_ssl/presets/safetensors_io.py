"""Reading safetensors checkpoints into NumPy (no torch, no pickle)."""

import json

from keras_ssl.presets.errors import PresetError
from keras_ssl.presets.registry import check_relative


def read_safetensors(path):
    """``{name: np.ndarray}`` from one ``.safetensors`` file.

    Raises:
        PresetError: when the file is truncated, corrupt or not safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise PresetError(
            f"{path} is not a readable safetensors file ({error}): it is corrupt or truncated "
            "(an interrupted download?). Delete it (or pass force_download=True) and load again."
        ) from None


def read_sharded(index_path, get_file):
    """Reads a sharded checkpoint from its ``*.safetensors.index.json``.

    Args:
        index_path: local path of the index.
        get_file: ``filename -> local path`` for the shards (same source as the index).
    """
    try:
        with open(index_path, encoding="utf-8") as file:
            weight_map = json.load(file)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PresetError(f"{index_path} is not a safetensors index ({error}).") from None
    weights = {}
    for shard in sorted(set(weight_map.values())):
        check_relative(shard, str(index_path))
        weights.update(read_safetensors(get_file(shard)))
    return weights
