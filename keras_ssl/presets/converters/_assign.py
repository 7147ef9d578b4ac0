"""Checked assignment of NumPy checkpoint arrays into Keras variables (shared by converters).

A converter describes the checkpoint as a list of :class:`Target` s: one Keras variable,
the checkpoint keys that fill it with the shape each key must have, and the function
combining those arrays into the variable's layout. :func:`assign` then checks the whole
checkpoint first (every missing key, every unexpected key, every shape mismatch, reported
together in one ``ValueError`` with the fix) and writes the variables only if all is well,
so a failed conversion never leaves a half-loaded backbone.
"""

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np


@dataclasses.dataclass
class Target:
    """One Keras variable and the checkpoint arrays it is made of.

    Attributes:
        variable: the ``keras.Variable`` to fill.
        sources: ``(key, expected_shape)`` pairs, in the order ``combine`` takes them.
        combine: ``combine(*arrays) -> np.ndarray`` in the variable's layout (default:
            the single array unchanged).
        label: the Keras name shown in error messages (default: the variable's path).
    """

    variable: object
    sources: Sequence[tuple[str, tuple[int, ...]]]
    combine: Callable[..., np.ndarray] | None = None
    label: str | None = None


def _shape(shape):
    return tuple(int(d) for d in shape)


def _path(variable):
    return getattr(variable, "path", None) or getattr(variable, "name", "?")


def identity(variable, key, label=None):
    """A variable stored with the same shape under ``key`` (tokens, LayerNorm, biases)."""
    return Target(variable, [(key, _shape(variable.shape))], None, label)


def linear_kernel(variable, key, label=None):
    """A ``Dense`` kernel ``(in, out)`` from a torch ``Linear.weight`` ``(out, in)``."""
    shape = _shape(variable.shape)
    return Target(variable, [(key, shape[::-1])], lambda w: np.transpose(w), label)


def conv_kernel(variable, key, label=None):
    """A ``Conv2D`` kernel ``(kh, kw, in, out)`` from a torch weight ``(out, in, kh, kw)``."""
    kh, kw, cin, cout = _shape(variable.shape)
    return Target(
        variable,
        [(key, (cout, cin, kh, kw))],
        lambda w: np.transpose(w, (2, 3, 1, 0)),
        label,
    )


def dense(layer, prefix, label=None):
    """``[kernel, bias]`` targets of a ``keras.layers.Dense`` from ``{prefix}.weight/bias``."""
    label = label or layer.name
    targets = [linear_kernel(layer.kernel, f"{prefix}.weight", f"{label}.kernel")]
    if layer.bias is not None:
        targets.append(identity(layer.bias, f"{prefix}.bias", f"{label}.bias"))
    return targets


def layer_norm(layer, prefix, label=None):
    """``[gamma, beta]`` targets of a ``LayerNormalization`` from ``{prefix}.weight/bias``."""
    label = label or layer.name
    return [
        identity(layer.gamma, f"{prefix}.weight", f"{label}.gamma"),
        identity(layer.beta, f"{prefix}.bias", f"{label}.beta"),
    ]


def rename_keys(weights, renames):
    """``weights`` with every key rewritten by the ``(pattern, replacement)`` regexes, in order."""
    out = {}
    for key, value in weights.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def strip_prefixes(weights, prefixes):
    """Remove the first matching prefix from every key; keys without one are kept as is."""
    out = {}
    for key, value in weights.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def assign(
    targets: Iterable[Target],
    weights: Mapping[str, np.ndarray],
    *,
    source: str,
    ignored: Callable[[str], bool] = lambda key: False,
    fix: str = "",
) -> None:
    """Check ``weights`` against ``targets`` completely, then write every variable.

    Args:
        targets: the :class:`Target` s of the backbone.
        weights: checkpoint arrays by key (NumPy, any float dtype).
        source: the checkpoint format, named in the error (e.g. ``"timm ViT"``).
        ignored: keys the converter skips on purpose (heads, poolers, buffers).
        fix: a sentence appended to the error telling the user what to change.

    Raises:
        ValueError: naming every missing key, every unexpected key and every shape
            mismatch (key, expected shape, shape found) at once; nothing is assigned.
    """
    targets = list(targets)
    used = set()
    missing, mismatched = [], []
    for target in targets:
        label = target.label or _path(target.variable)
        for key, expected in target.sources:
            used.add(key)
            if key not in weights:
                missing.append(f"  {key} (for {label}, shape {expected})")
                continue
            got = _shape(np.shape(weights[key]))
            if got != _shape(expected):
                mismatched.append(f"  {key}: expected {_shape(expected)} (for {label}), got {got}")
    unexpected = sorted(k for k in weights if k not in used and not ignored(k))
    if missing or mismatched or unexpected:
        parts = [f"The checkpoint does not match this backbone as a {source} checkpoint."]
        if missing:
            parts.append(f"Missing keys ({len(missing)}):\n" + "\n".join(missing))
        if unexpected:
            parts.append(
                f"Unexpected keys ({len(unexpected)}):\n"
                + "\n".join(f"  {k} {_shape(np.shape(weights[k]))}" for k in unexpected)
            )
        if mismatched:
            parts.append(f"Shape mismatches ({len(mismatched)}):\n" + "\n".join(mismatched))
        if fix:
            parts.append(fix)
        raise ValueError("\n".join(parts))
    for target in targets:
        arrays = [np.asarray(weights[key]) for key, _ in target.sources]
        value = target.combine(*arrays) if target.combine else arrays[0]
        value = np.asarray(value)
        if _shape(value.shape) != _shape(target.variable.shape):  # a converter bug
            raise AssertionError(
                f"{target.label or _path(target.variable)}: combined shape "
                f"{value.shape} != variable shape {tuple(target.variable.shape)}"
            )
        target.variable.assign(value.astype(target.variable.dtype))


@dataclasses.dataclass
class ViTKeys:
    """Checkpoint key names of one ViT layout, relative to the block prefix where per block.

    ``qkv`` is one key prefix (fused ``qkv`` Linear, rows ordered ``(3, heads,
    head_dim)``) or a ``(query, key, value)`` triple of Linear prefixes, concatenated
    along the output axis into the fused layout. ``ls1`` / ``ls2`` name the full
    LayerScale parameter. ``fc1`` / ``fc2`` are the MLP Linear prefixes (for a SwiGLU
    backbone: the fused ``[x1; x2]`` input projection and the output projection).
    """

    patch_embed: str
    cls_token: str
    pos_embed: str
    register_tokens: str
    mask_token: str
    block: Callable[[int], str]
    norm1: str
    qkv: str | tuple[str, str, str]
    proj: str
    ls1: str
    norm2: str
    fc1: str
    fc2: str
    ls2: str
    norm: str
    swiglu_fc1: str | None = None
    swiglu_fc2: str | None = None


def vit_targets(backbone, keys: ViTKeys):
    """The :class:`Target` s of a ``keras_ssl.backbones.ViT`` for the layout ``keys``."""
    from keras_ssl.backbones.vit import ViT

    if not isinstance(backbone, ViT):
        raise TypeError(
            f"Expected a keras_ssl.backbones.ViT, got {type(backbone).__name__}: build the "
            "backbone with `keras_ssl.backbones.ViT(**backbone_config(source_config))`."
        )
    get = backbone.get_layer
    patch = get("patch_embed")
    targets = [
        conv_kernel(patch.kernel, f"{keys.patch_embed}.weight", "patch_embed.kernel"),
        identity(patch.bias, f"{keys.patch_embed}.bias", "patch_embed.bias"),
        identity(get("cls_token").token, keys.cls_token, "cls_token.token"),
        identity(get("pos_embed").embeddings, keys.pos_embed, "pos_embed.embeddings"),
    ]
    if backbone.num_register_tokens:
        tokens = get("register_tokens").tokens
        targets.append(identity(tokens, keys.register_tokens, "register_tokens.tokens"))
    if backbone.use_mask_token:
        targets.append(identity(get("mask_token").token, keys.mask_token, "mask_token.token"))
    swiglu = backbone.mlp == "swiglu"
    for i in range(backbone.depth):
        p, b = f"blocks_{i}", keys.block(i)
        targets += layer_norm(get(f"{p}_norm1"), f"{b}.{keys.norm1}")
        qkv = get(f"{p}_attn_qkv")
        if isinstance(keys.qkv, str):
            targets += dense(qkv, f"{b}.{keys.qkv}")
        else:
            dim = backbone.hidden_dim
            targets.append(
                Target(
                    qkv.kernel,
                    [(f"{b}.{name}.weight", (dim, dim)) for name in keys.qkv],
                    lambda q, k, v: np.concatenate([q, k, v], axis=0).T,
                    f"{p}_attn_qkv.kernel",
                )
            )
            if qkv.bias is not None:
                targets.append(
                    Target(
                        qkv.bias,
                        [(f"{b}.{name}.bias", (dim,)) for name in keys.qkv],
                        lambda q, k, v: np.concatenate([q, k, v], axis=0),
                        f"{p}_attn_qkv.bias",
                    )
                )
        targets += dense(get(f"{p}_attn_proj"), f"{b}.{keys.proj}")
        targets += layer_norm(get(f"{p}_norm2"), f"{b}.{keys.norm2}")
        fc1 = keys.swiglu_fc1 if swiglu else keys.fc1
        fc2 = keys.swiglu_fc2 if swiglu else keys.fc2
        targets += dense(get(f"{p}_mlp_fc1"), f"{b}.{fc1}")
        targets += dense(get(f"{p}_mlp_fc2"), f"{b}.{fc2}")
        if backbone.layer_scale_init is not None:
            targets.append(identity(get(f"{p}_ls1").gamma, f"{b}.{keys.ls1}", f"{p}_ls1.gamma"))
            targets.append(identity(get(f"{p}_ls2").gamma, f"{b}.{keys.ls2}", f"{p}_ls2.gamma"))
    targets += layer_norm(get("norm"), keys.norm)
    return targets


def architecture_fix(extra=""):
    """The standard advice appended to converter errors."""
    return (
        "Fix: build the backbone from the checkpoint's own configuration, "
        "`keras_ssl.backbones.ViT(**backbone_config(source_config))` (hidden_dim, depth, "
        "patch_size, pretrain_image_size, num_register_tokens, layer_scale_init, mlp and "
        "use_mask_token must all match the checkpoint), and pass the state dict of the "
        "backbone itself." + (" " + extra if extra else "")
    )


def vit_arguments():
    """Names of the ``keras_ssl.backbones.ViT`` constructor arguments."""
    import inspect

    from keras_ssl.backbones.vit import ViT

    parameters = inspect.signature(ViT.__init__).parameters
    return {k for k, p in parameters.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


# transformers >= 5 in-memory attention names -> those of the published ViT / DINOv2 safetensors.
TRANSFORMERS_ATTENTION_RENAMES = (
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
)


def transformers_geometry(config, default_image_size, default_patch_size):
    """`(image_size, patch_size)` of a transformers vision `config.json` dict, each given
    as an int or as a `[h, w]` pair (the first side is taken)."""
    sizes = []
    for key, default in (("image_size", default_image_size), ("patch_size", default_patch_size)):
        value = config.get(key, default)
        sizes.append(int(value[0] if isinstance(value, list | tuple) else value))
    return tuple(sizes)
