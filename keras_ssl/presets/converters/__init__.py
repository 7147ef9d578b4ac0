"""Checkpoint converters: a name -> module table, each module imported on first use.

Every converter module offers the same two functions:

* ``backbone_config(source_config: dict) -> dict``: keyword arguments for the
  keras_ssl backbone class named in the table, from the source's own
  ``config.json`` (transformers / timm) or a small dict such as ``{"depth": 50}``.
* ``convert_weights(weights: Mapping[str, np.ndarray], backbone) -> None``: copies a
  source ``state_dict`` (NumPy arrays, as read from safetensors) into a built
  backbone; raises ``ValueError`` naming missing keys, unexpected keys and shape
  mismatches.

Example:

```python
from keras_ssl.presets import converters

converters.names()  # ['timm_vit', 'torchvision_resnet', 'transformers_dinov2', ...]
converters.backbone_class("torchvision_resnet")  # 'ResNet'
```
"""

import importlib

# name -> (module inside this package, keras_ssl.backbones class the config is for)
_TABLE = {
    "timm_vit": ("timm_vit", "ViT"),
    "transformers_dinov2": ("transformers_dinov2", "ViT"),
    "transformers_vit": ("transformers_vit", "ViT"),
    "torchvision_resnet": ("torchvision_resnet", "ResNet"),
}

_TIMM_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def names():
    """Sorted converter names."""
    return sorted(_TABLE)


def _check(name):
    if name not in _TABLE:
        raise ValueError(f"Unknown converter {name!r}. Known converters: {', '.join(names())}.")


def get(name):
    """The converter module ``name`` (imported now, once)."""
    _check(name)
    module = _TABLE[name][0]
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as error:
        if error.name == f"{__name__}.{module}":
            raise ValueError(
                f"The converter {name!r} is not available in this installation of keras_ssl "
                f"(module {error.name} is missing). Upgrade keras_ssl."
            ) from None
        raise


def backbone_class(name):
    """Name of the ``keras_ssl.backbones`` class that converter ``name`` fills."""
    _check(name)
    return _TABLE[name][1]


def detect(source_config):
    """The converter for a Hub repo's ``config.json`` (transformers or timm), or None."""
    if not isinstance(source_config, dict):
        return None
    model_type = source_config.get("model_type")
    if model_type in ("dinov2", "dinov2_with_registers"):
        return "transformers_dinov2"
    if model_type == "vit":
        return "transformers_vit"
    architecture = str(source_config.get("architecture", ""))
    if architecture.startswith("vit_"):
        return "timm_vit"
    if architecture in _TIMM_RESNETS:  # timm's plain ResNets keep torchvision's keys
        return "torchvision_resnet"
    return None
