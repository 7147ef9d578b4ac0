"""The preset registry: one JSON card per preset.

The cards live in the top-level ``presets/`` folder of the repository, the single
source; the wheel ships a copy as ``keras_ssl/presets/cards/`` (``setup.py`` copies
it at build time). More card folders can be added with :func:`add_cards_dir` or the
``KERAS_SSL_PRESET_CARDS`` environment variable (folders separated by ``os.pathsep``);
a card there replaces a built-in card of the same name.

A card is a JSON object (see ``presets/README.md``)::

    {"name": "dino_vits16",
     "backbone": {"class": "ViT", "config": {...}},       # config null: from the source
     "source": {"hub": "hf", "repo": "timm/...", "revision": "<sha>" | "main",
                "format": "safetensors" | "keras_ssl" | "torch_pickle" | ...,
                "files": {"weights": "model.safetensors", "config": "config.json"},
                "sha256": {"model.safetensors": "<hex>" | null},
                "converter": "timm_vit"},
     "preprocessing": {...}, "license": ..., "paper": ..., "scores": {...}}

Example:

```python
from keras_ssl import presets

presets.list_presets()[:3]  # ['byol_resnet50', 'dino_resnet50', 'dino_vitb16']
presets.get_card("dino_vits16")["source"]["repo"]  # 'timm/vit_small_patch16_224.dino'
```
"""

import json
import os
import re
from pathlib import Path

from keras_ssl.presets.errors import PresetError, closest

ENV_VAR = "KERAS_SSL_PRESET_CARDS"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,127}$")
_REQUIRED = ("name", "backbone", "source", "preprocessing", "license")

_extra_dirs = []


def builtin_cards_dir():
    """The folder of the built-in cards: the wheel's copy, else the checkout's ``presets/``."""
    packaged = Path(__file__).parent / "cards"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "presets"


def add_cards_dir(path):
    """Registers one more folder of ``*.json`` cards (searched before the built-in ones)."""
    path = Path(path)
    if not path.is_dir():
        raise PresetError(f"Preset card folder {str(path)!r} does not exist.")
    if path not in _extra_dirs:
        _extra_dirs.insert(0, path)


def remove_cards_dir(path):
    """Undoes :func:`add_cards_dir`."""
    path = Path(path)
    if path in _extra_dirs:
        _extra_dirs.remove(path)


def cards_dirs():
    """Folders searched for cards, highest priority first."""
    env = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return [*_extra_dirs, *env, builtin_cards_dir()]


def _load(path):
    try:
        with open(path, encoding="utf-8") as file:
            card = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise PresetError(f"Preset card {str(path)!r} is not readable JSON: {error}.") from None
    validate_card(card, where=str(path))
    if card["name"] != path.stem:
        raise PresetError(
            f"Preset card {str(path)!r} is named {card['name']!r}; the file must be "
            f"{card['name']}.json."
        )
    return card


def _all_cards():
    cards = {}
    for folder in reversed(cards_dirs()):  # later folders win: highest priority last
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            cards[path.stem] = path
    return cards


def list_presets():
    """Sorted names of every registered preset."""
    return sorted(_all_cards())


def _suggestion(name):
    """`` Did you mean 'x'?`` for the registered name closest to ``name``, else ``""``."""
    guess = closest(name, list_presets()) if isinstance(name, str) else None
    return f" Did you mean {guess!r}?" if guess else ""


def check_name(name):
    """Rejects names that are not plain preset names (paths, ``..``, upper case)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise PresetError(
            f"{name!r} is not a valid preset name: names are lower-case letters, digits, '_', "
            f"'-' and '.', without '..' or path separators.{_suggestion(name)} Pass a local "
            "directory as a path that exists, or a Hub repository as 'hf://org/name'."
        )


def get_card(name):
    """The card of preset ``name`` as a dict (a fresh copy).

    Raises:
        PresetError: for an unknown name, listing the known ones.
    """
    check_name(name)
    cards = _all_cards()
    if name not in cards:
        known = ", ".join(sorted(cards)) or "(none)"
        raise PresetError(
            f"Unknown preset {name!r}.{_suggestion(name)} Known presets: {known}. Other "
            "sources: 'hf://org/repo' for a Hugging Face repository, or the path of a local "
            "preset directory."
        )
    return _load(cards[name])


def find_card_for_repo(repo):
    """The card whose source is Hub repository ``repo``, or None."""
    for name in list_presets():
        card = get_card(name)
        if card["source"].get("hub") == "hf" and card["source"].get("repo") == repo:
            return card
    return None


def validate_card(card, where="card"):
    """Checks the fields every card needs; raises PresetError naming the missing ones."""
    if not isinstance(card, dict):
        raise PresetError(f"{where}: a preset card must be a JSON object.")
    missing = [key for key in _REQUIRED if key not in card]
    if missing:
        raise PresetError(f"{where}: the preset card lacks {missing}.")
    check_name(card["name"])
    backbone, source = card["backbone"], card["source"]
    if not isinstance(backbone, dict) or "class" not in backbone:
        raise PresetError(f"{where}: 'backbone' needs a 'class' (e.g. 'ViT' or 'ResNet').")
    if not isinstance(source, dict) or "format" not in source:
        raise PresetError(f"{where}: 'source' needs a 'format'.")
    for filename in (source.get("files") or {}).values():
        if filename is not None:
            check_relative(filename, where)


def check_relative(filename, where="card"):
    """Rejects file names that could leave their directory (absolute, ``..``, drive)."""
    path = Path(str(filename))
    if (
        not filename
        or path.is_absolute()
        or "\\" in str(filename)
        or ":" in str(filename)
        or any(part in ("..", "") for part in str(filename).split("/"))
    ):
        raise PresetError(
            f"{where}: file name {filename!r} escapes its directory; preset file names must be "
            "relative paths inside the preset, without '..'."
        )
