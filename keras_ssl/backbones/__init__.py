"""Backbones: image encoders mapping ``(batch, H, W, C)`` images to feature vectors.

All backbones are functional ``keras.Model`` subclasses (channels_last, any input
size) exposing ``output_dim``; they return the global-average-pooled features by
default (``pooling="avg"``) and the last feature map with ``pooling=None``.

Example:

```python
from keras_ssl import backbones

encoder = backbones.get("resnet18_cifar")
encoder.output_dim  # 512
```
"""

import functools

from keras_ssl.backbones.convnet import ConvNet
from keras_ssl.backbones.resnet import ResNet, ResNet18, ResNet50
from keras_ssl.backbones.vit import ViT, ViTBase, ViTSmall, ViTTiny

_REGISTRY = {
    "convnet": ConvNet,
    "resnet18": functools.partial(ResNet18, stem="imagenet"),
    "resnet18_cifar": functools.partial(ResNet18, stem="cifar"),
    "resnet50": functools.partial(ResNet50, stem="imagenet"),
    "resnet50_cifar": functools.partial(ResNet50, stem="cifar"),
    "vit_tiny": ViTTiny,
    "vit_small": ViTSmall,
    "vit_base": ViTBase,
}


def names():
    """Sorted names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def _registry_key(name):
    """The :func:`get` name ``name`` stands for (case-insensitive, ``-`` for ``_``), or None."""
    key = name.strip().lower().replace("-", "_")
    return key if key in _REGISTRY else None


def get(name, **kwargs):
    """Build a backbone from its name.

    Args:
        name: one of ``"convnet"``, ``"resnet18"``, ``"resnet18_cifar"``,
            ``"resnet50"``, ``"resnet50_cifar"``, ``"vit_tiny"``, ``"vit_small"``,
            ``"vit_base"`` (patch 16 by default; case-insensitive; ``-`` is
            accepted for ``_``). The ``_cifar`` variants use the 3x3 stride-1 stem
            without max-pool. A ``keras.Model`` instance is returned unchanged
            (``kwargs`` must then be empty).
        **kwargs: constructor arguments, e.g. ``input_channels=1``,
            ``pooling=None``, ``widths=(16, 32)`` for ``"convnet"`` or
            ``patch_size=8`` for the ViTs. For the
            ``_cifar`` names, ``stem`` may not be passed.

    Returns:
        A new backbone model.

    Raises:
        ValueError: for an unknown name; the message lists the known names.

    Example:

    ```python
    from keras_ssl import backbones

    model = backbones.get("convnet", input_channels=1)
    ```
    """
    if not isinstance(name, str):
        import keras

        if isinstance(name, keras.Model) and not kwargs:
            return name
        raise ValueError(
            f"Expected a backbone name (one of {names()}) or a keras.Model without "
            f"kwargs, got {name!r}."
        )
    key = _registry_key(name)
    if key is None:
        raise ValueError(f"Unknown backbone {name!r}. Known backbones: {', '.join(names())}.")
    if key.endswith("_cifar") and "stem" in kwargs:
        raise ValueError(f"Backbone {name!r} fixes stem='cifar'; do not pass `stem`.")
    return _REGISTRY[key](**kwargs)


__all__ = [
    "ConvNet",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "ViT",
    "ViTBase",
    "ViTSmall",
    "ViTTiny",
    "get",
    "names",
]
