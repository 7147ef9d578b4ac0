"""torchvision ResNet ``state_dict`` -> :class:`keras_ssl.backbones.ResNet`.

The Keras ResNet names every layer after its torchvision module with dots turned
into underscores (``layer2.0.downsample.1`` -> ``layer2_0_downsample_1``), so the
mapping is by name, never by position:

* ``Conv2D`` kernel ``(kh, kw, in, out)`` = torch ``weight`` ``(out, in, kh, kw)``
  transposed by ``(2, 3, 1, 0)`` (no biases: torchvision's convs have none);
* ``BatchNormalization`` ``[gamma, beta, moving_mean, moving_variance]`` = torch
  ``[weight, bias, running_mean, running_var]`` (``num_batches_tracked`` is dropped).

The classifier ``fc.*`` is not part of the backbone and is skipped. Checkpoints of
the self-supervised methods wrap the same keys in a prefix, found automatically:
MoCo's ``module.encoder_q.`` (its momentum encoder ``module.encoder_k.`` and queue
are ignored), DINO's ``module.backbone.`` / ``backbone.`` (student / teacher), or a
plain DDP ``module.``.

Example:

```python
import numpy as np
from keras_ssl.backbones import ResNet
from keras_ssl.presets.converters import torchvision_resnet

backbone = ResNet(**torchvision_resnet.backbone_config({"depth": 18}))
# state = {k: v.numpy() for k, v in torchvision.models.resnet18().state_dict().items()}
# torchvision_resnet.convert_weights(state, backbone)
```
"""

import re

import keras
import numpy as np

_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

# Longest first: "module.encoder_q." must win over "module.".
PREFIXES = (
    "module.encoder_q.",
    "module.backbone.",
    "encoder_q.",
    "backbone.",
    "module.",
    "",
)

_SKIPPED = re.compile(r"^fc\.|\.num_batches_tracked$|^num_batches_tracked$")


def backbone_config(source_config):
    """``keras_ssl.backbones.ResNet`` kwargs for a torchvision / timm ResNet.

    Args:
        source_config: ``{"depth": 50}``, ``{"architecture": "resnet50"}`` (timm's
            ``config.json``) or ``{"arch": "resnet50"}`` (MoCo / DINO ``args``).
            Only the plain ResNets 18/34/50/101/152 with the 7x7 stem are supported.

    Returns:
        ``{"block_type", "stackwise_num_blocks", "stem": "imagenet", "input_channels"}``.
    """
    depth = source_config.get("depth")
    name = source_config.get("architecture", source_config.get("arch"))
    if depth is None and isinstance(name, str):
        match = re.fullmatch(r"(?:torchvision\.)?resnet(\d+)", name.strip().lower())
        depth = int(match.group(1)) if match else None
    if depth is None or int(depth) not in _DEPTHS:
        raise ValueError(
            f"Cannot build a torchvision-style ResNet from {source_config!r}: expected "
            f"'depth' in {sorted(_DEPTHS)} or an 'architecture' such as 'resnet50' (variants "
            "like resnet50d or wide_resnet50_2 have another layout and are not supported)."
        )
    block_type, blocks = _DEPTHS[int(depth)]
    return {
        "block_type": block_type,
        "stackwise_num_blocks": list(blocks),
        "stem": "imagenet",
        "input_channels": int(source_config.get("input_channels", 3)),
    }


def find_prefix(weights):
    """The key prefix in front of the torchvision names (``""`` for a plain state_dict)."""
    for prefix in PREFIXES:
        if f"{prefix}conv1.weight" in weights:
            return prefix
    sample = sorted(weights)[:8]
    raise ValueError(
        "No torchvision ResNet weights found: expected a key 'conv1.weight', optionally "
        f"behind one of the prefixes {[p for p in PREFIXES if p]}. First keys: {sample}."
    )


def _torch_key(layer_name):
    return layer_name.replace("_", ".")


def _targets(backbone):
    """``{torch module name: keras layer}`` for every layer holding weights."""
    targets = {}
    for layer in backbone.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization)):
            targets[_torch_key(layer.name)] = layer
        elif layer.weights:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) of {backbone.name!r} has weights "
                "but no torchvision counterpart: is this a keras_ssl ResNet?"
            )
    return targets


def convert_weights(weights, backbone):
    """Copies a torchvision ResNet ``state_dict`` into a built ``keras_ssl`` ResNet.

    Args:
        weights: mapping of torch keys to NumPy arrays (a plain torchvision state_dict
            or a MoCo / DINO checkpoint's, see the module docstring for the prefixes).
        backbone: a :class:`keras_ssl.backbones.ResNet` with the matching depth.

    Raises:
        ValueError: listing the missing keys, the unexpected keys and every shape
            mismatch; nothing is assigned unless every weight fits.
    """
    prefix = find_prefix(weights)
    state = {
        key[len(prefix) :]: value
        for key, value in weights.items()
        if key.startswith(prefix) and not _SKIPPED.search(key[len(prefix) :])
    }
    targets = _targets(backbone)
    assignments, missing, mismatched, expected_keys = [], [], [], set()
    for module, layer in targets.items():
        if isinstance(layer, keras.layers.Conv2D):
            names = ("weight",)
        else:
            names = ("weight", "bias", "running_mean", "running_var")
        arrays = []
        for name in names:
            key = f"{module}.{name}"
            expected_keys.add(key)
            if key not in state:
                missing.append(prefix + key)
                continue
            array = np.asarray(state[key], dtype="float32")
            if array.ndim == 4:  # (out, in, kh, kw) -> (kh, kw, in, out)
                array = np.transpose(array, (2, 3, 1, 0))
            arrays.append(array)
        if len(arrays) != len(names):
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays]
        if expected != got:
            mismatched.append(f"{prefix}{module}: checkpoint {got} vs Keras {expected}")
            continue
        assignments.append((layer, arrays))
    unexpected = sorted(prefix + key for key in set(state) - expected_keys)
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched[:10]))
    if problems:
        raise ValueError(
            f"The checkpoint does not fit {backbone.name!r} ({len(targets)} conv / batch-norm "
            f"layers): {'; '.join(problems)}. Check the depth (backbone_config) and that this is "
            "a torchvision-layout ResNet."
        )
    for layer, arrays in assignments:
        layer.set_weights(arrays)
