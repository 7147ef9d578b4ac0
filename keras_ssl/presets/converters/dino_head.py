"""Official DINO ``DINOHead`` weights -> :class:`keras_ssl.layers.DINOHead`.

The official head (``facebookresearch/dino`` ``vision_transformer.DINOHead``) is
``mlp`` = ``nn.Sequential`` of Linear layers (with BatchNorm1d after each hidden one
when ``use_bn_in_head``) and GELUs (``mlp.0`` Linear, ``mlp.1`` BatchNorm1d, ``mlp.2`` GELU,
``mlp.3`` Linear, ...), or with ``nlayers=1`` a single ``nn.Linear`` (keys ``mlp.weight``,
``mlp.bias``), then ``last_layer``, a weight-normalised
``nn.Linear(bottleneck_dim, out_dim, bias=False)`` stored as ``weight_g``
``(out_dim, 1)`` and ``weight_v`` ``(out_dim, bottleneck_dim)`` (or, with torch's newer
parametrisation, ``parametrizations.weight.original0`` / ``original1``).

Mapping: the ``k``-th Linear of ``mlp`` -> ``linear_k`` (kernel = weight.T), the
``k``-th BatchNorm -> ``bn_k`` (gamma, beta, moving mean, moving variance), ``weight_v.T``
-> ``last_layer_v`` ``(bottleneck_dim, out_dim)`` and ``weight_g[:, 0]`` ->
``last_layer_g``: both normalise ``V`` over the input axis, one norm per output unit.

Example:

```python
from keras_ssl.layers import DINOHead
from keras_ssl.presets.converters import dino_head

head = DINOHead(output_dim=64, hidden_dim=32, bottleneck_dim=16)
head.build((None, 24))
# dino_head.convert_weights({k[5:]: v for k, v in student.items() if k.startswith("head.")}, head)
```
"""

import re

import keras
import numpy as np


def _mlp_modules(weights):
    """``[(prefix, kind)]`` of the ``mlp`` modules holding weights, in order: ``mlp`` itself
    when it is one ``nn.Linear`` (the official head with ``nlayers=1``)."""
    if "mlp.weight" in weights:
        return [("mlp", "linear")]
    indices = sorted({int(m.group(1)) for k in weights if (m := re.match(r"mlp\.(\d+)\.", k))})
    modules = []
    for index in indices:
        kind = "bn" if f"mlp.{index}.running_mean" in weights else "linear"
        modules.append((f"mlp.{index}", kind))
    return modules


def _last_layer_keys(weights):
    """``(g, v)`` keys of the weight-normalised last layer (old or parametrised names)."""
    if "last_layer.weight_g" not in weights and (
        "last_layer.parametrizations.weight.original0" in weights
    ):
        return (
            "last_layer.parametrizations.weight.original0",
            "last_layer.parametrizations.weight.original1",
        )
    return "last_layer.weight_g", "last_layer.weight_v"


def head_config(weights):
    """:class:`keras_ssl.layers.DINOHead` arguments read from the shapes of an official head
    ``state_dict`` (keys ``mlp.*``, ``last_layer.*``, no ``head.`` prefix).

    Returns:
        ``output_dim``, ``bottleneck_dim``, ``num_layers`` (the number of Linear layers of
        ``mlp``, the official ``nlayers``), ``use_bn`` and, with more than one layer,
        ``hidden_dim``. ``norm_last_layer`` is not in the weights (DINO's ``args``).

    Raises:
        ValueError: when the keys are not an official DINO head's.
    """
    linears = [prefix for prefix, kind in _mlp_modules(weights) if kind == "linear"]
    v_key = _last_layer_keys(weights)[1]
    if not linears or v_key not in weights:
        raise ValueError(
            "Not an official DINO head state_dict (no mlp Linear or no weight-normalised "
            f"last_layer): keys {sorted(weights)[:10]}."
        )
    output_dim, bottleneck_dim = np.shape(weights[v_key])
    config = {
        "output_dim": int(output_dim),
        "bottleneck_dim": int(bottleneck_dim),
        "num_layers": len(linears),
        "use_bn": any(kind == "bn" for _, kind in _mlp_modules(weights)),
    }
    if len(linears) > 1:
        config["hidden_dim"] = int(np.shape(weights[f"{linears[0]}.weight"])[0])
    return config


def convert_weights(weights, head):
    """Copies an official DINO head ``state_dict`` (keys ``mlp.*``, ``last_layer.*``, no
    ``head.`` prefix) into a built ``keras_ssl.layers.DINOHead``.

    Raises:
        ValueError: naming missing / unexpected keys and shape mismatches.
    """
    weights = {
        k: np.asarray(v) for k, v in weights.items() if not k.endswith("num_batches_tracked")
    }
    dense = [b for b in head.mlp if isinstance(b, keras.layers.Dense)]
    norms = [b for b in head.mlp if isinstance(b, keras.layers.BatchNormalization)]
    modules = _mlp_modules(weights)
    linears = [i for i, kind in modules if kind == "linear"]
    bns = [i for i, kind in modules if kind == "bn"]
    if len(linears) != len(dense) or len(bns) != len(norms):
        raise ValueError(
            f"The checkpoint head has {len(linears)} linear and {len(bns)} batch-norm layers, "
            f"the Keras DINOHead {len(dense)} and {len(norms)}: check num_layers and use_bn."
        )
    used, assignments, problems = set(), [], []

    def take(key):
        if key not in weights:
            problems.append(f"missing key {key!r}")
            return None
        used.add(key)
        return weights[key].astype("float32")

    for layer, prefix in zip(dense, linears, strict=True):
        w, b = take(f"{prefix}.weight"), take(f"{prefix}.bias")
        if w is not None and b is not None:
            assignments.append((layer, [w.T, b]))
    for layer, prefix in zip(norms, bns, strict=True):
        arrays = [take(f"{prefix}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
        if all(a is not None for a in arrays):
            assignments.append((layer, arrays))
    g, v = (take(key) for key in _last_layer_keys(weights))
    unexpected = sorted(set(weights) - used)
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}")
    for layer, arrays in assignments:
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [a.shape for a in arrays]:
            problems.append(
                f"{layer.name}: checkpoint {[a.shape for a in arrays]} vs Keras {expected}"
            )
    if v is not None and v.T.shape != tuple(head.last_layer_v.shape):
        problems.append(f"last_layer: checkpoint {v.T.shape} vs Keras {head.last_layer_v.shape}")
    if problems:
        raise ValueError("The DINO head checkpoint does not fit: " + "; ".join(problems) + ".")
    for layer, arrays in assignments:
        layer.set_weights(arrays)
    head.last_layer_v.assign(v.T)
    head.last_layer_g.assign(g.reshape(-1))
