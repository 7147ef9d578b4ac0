"""transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` -> ``keras_ssl.backbones.ViT``.

Sources: ``facebook/dinov2-{small,base,large,giant}`` and
``facebook/dinov2-with-registers-*`` (``model.safetensors``, keys as written by
``save_pretrained``). The in-memory names of transformers >= 5 (``attention.q_proj``,
``mlp.gate_proj`` / ``up_proj`` / ``down_proj``, ...) and a ``dinov2.`` prefix (image
classification wrappers, whose ``classifier.`` keys are skipped) are accepted too.

Key map (per block ``encoder.layer.i.``):

==========================================  ============================================
checkpoint key                              Keras (``ViT``)
==========================================  ============================================
``embeddings.patch_embeddings.projection``  ``patch_embed`` (weight ``(D,3,P,P)`` -> HWIO)
``embeddings.{cls_token,mask_token}``       ``cls_token.token``, ``mask_token.token``
``embeddings.position_embeddings``          ``pos_embed.embeddings``
``embeddings.register_tokens``              ``register_tokens.tokens`` (with registers)
``attention.attention.{query,key,value}``   ``blocks_i_attn_qkv``: ``[Wq; Wk; Wv].T``
``attention.output.dense``                  ``blocks_i_attn_proj``
``layer_scale{1,2}.lambda1``                ``blocks_i_ls{1,2}.gamma``
``norm1``, ``norm2``, ``layernorm``         ``blocks_i_norm1``, ``blocks_i_norm2``, ``norm``
``mlp.fc1``, ``mlp.fc2``                    ``blocks_i_mlp_fc1``, ``blocks_i_mlp_fc2``
``mlp.weights_in``, ``mlp.weights_out``     same, ``mlp="swiglu"`` (``[x1; x2]``, ``silu(x1) * x2``)
==========================================  ============================================

Example:

```python
import json
import keras_ssl.backbones
from keras_ssl.presets.converters import transformers_dinov2
from safetensors.numpy import load_file

config = transformers_dinov2.backbone_config(json.load(open("config.json")))
backbone = keras_ssl.backbones.ViT(**config)
transformers_dinov2.convert_weights(load_file("model.safetensors"), backbone)
```
"""

from collections.abc import Mapping

import keras
import numpy as np

from keras_ssl.presets.converters import _assign

SOURCE = "transformers Dinov2Model / Dinov2WithRegistersModel"
PREFIXES = ("dinov2.", "dinov2_with_registers.", "model.")
_IGNORED = ("classifier.", "pooler.")
_INTERPOLATIONS = ("original", "transformers")
# transformers >= 5 in-memory names -> the names of the published safetensors.
_RENAMES = _assign.TRANSFORMERS_ATTENTION_RENAMES + ((r"\.mlp\.down_proj\.", ".mlp.weights_out."),)

KEYS = _assign.ViTKeys(
    patch_embed="embeddings.patch_embeddings.projection",
    cls_token="embeddings.cls_token",
    pos_embed="embeddings.position_embeddings",
    register_tokens="embeddings.register_tokens",
    mask_token="embeddings.mask_token",
    block=lambda i: f"encoder.layer.{i}",
    norm1="norm1",
    qkv=("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    proj="attention.output.dense",
    ls1="layer_scale1.lambda1",
    norm2="norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
    ls2="layer_scale2.lambda1",
    norm="layernorm",
    swiglu_fc1="mlp.weights_in",
    swiglu_fc2="mlp.weights_out",
)


def _published_names(weights):
    """Rename transformers >= 5 in-memory keys to the published checkpoint names."""
    out = _assign.rename_keys(weights, _RENAMES)
    for gate in [k for k in out if ".mlp.gate_proj." in k]:
        up = gate.replace(".mlp.gate_proj.", ".mlp.up_proj.")
        if up in out:  # weights_in = [gate; up] (x1 is the gated half)
            fused = np.concatenate([out.pop(gate), out.pop(up)], axis=0)
            out[gate.replace(".mlp.gate_proj.", ".mlp.weights_in.")] = fused
    return out


def convert_weights(weights: Mapping[str, np.ndarray], backbone: keras.Model) -> None:
    """Assign a transformers DINOv2 state dict (NumPy arrays) into ``backbone``.

    Args:
        weights: arrays keyed by the transformers names (see the module docstring).
        backbone: a built ``keras_ssl.backbones.ViT`` of the same architecture
            (see :func:`backbone_config`).

    Raises:
        ValueError: naming every missing key, unexpected key and shape mismatch;
            nothing is assigned then.
    """
    weights = _published_names(_assign.strip_prefixes(dict(weights), PREFIXES))
    _assign.assign(
        _assign.vit_targets(backbone, KEYS),
        weights,
        source=SOURCE,
        ignored=lambda key: key.startswith(_IGNORED),
        fix=_assign.architecture_fix(
            "DINOv2 checkpoints need `layer_scale_init=1.0`, `use_mask_token=True`, "
            "`mlp='swiglu'` for ViT-g (`use_swiglu_ffn`) and `num_register_tokens=4` for "
            "the register models."
        ),
    )


def backbone_config(source_config: dict, *, interpolation: str = "original") -> dict:
    """``keras_ssl.backbones.ViT`` kwargs from a transformers DINOv2 ``config.json`` dict.

    Args:
        source_config: the ``config.json`` of a ``Dinov2Model`` (``model_type``
            ``"dinov2"``) or ``Dinov2WithRegistersModel`` (``"dinov2_with_registers"``).
        interpolation: position-embedding resize for inputs of another size.
            ``"original"`` (default) follows the official DINOv2 code the published
            weights were evaluated with: bicubic with ``scale_factor=(h + 0.1) / M`` and
            no antialias for the models without registers; ``size=(h, w)`` with
            ``antialias=True`` for the register models. ``"transformers"`` follows
            transformers' ``Dinov2Model`` (``size=(h, w)``, no antialias); for the
            register models both agree.

    Returns:
        A dict of ``ViT`` kwargs (LayerScale, mask token, registers, SwiGLU for ViT-g,
        the config's LayerNorm epsilon, 1e-6 for every published DINOv2).
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {_INTERPOLATIONS}, got {interpolation!r}."
        )
    c = source_config
    registers = c.get("model_type") == "dinov2_with_registers"
    swiglu = bool(c.get("use_swiglu_ffn", False))
    if not swiglu and c.get("hidden_act", "gelu") != "gelu":
        raise ValueError(
            f"hidden_act {c['hidden_act']!r} is not supported: the ViT MLP uses the exact "
            "GELU ('gelu') or SwiGLU (`use_swiglu_ffn`)."
        )
    image_size, patch_size = _assign.transformers_geometry(c, 518, 14)
    config = {
        "patch_size": patch_size,
        "hidden_dim": int(c.get("hidden_size", 768)),
        "depth": int(c.get("num_hidden_layers", 12)),
        "num_heads": int(c.get("num_attention_heads", 12)),
        "mlp_ratio": float(c.get("mlp_ratio", 4)),
        "input_channels": int(c.get("num_channels", 3)),
        "num_register_tokens": int(c.get("num_register_tokens", 4)) if registers else 0,
        "layer_scale_init": float(c.get("layerscale_value", 1.0)),
        "qkv_bias": bool(c.get("qkv_bias", True)),
        "layer_norm_epsilon": float(c.get("layer_norm_eps", 1e-6)),
        "pretrain_image_size": image_size,
        "use_mask_token": bool(c.get("use_mask_token", True)),
        "mlp": "swiglu" if swiglu else "gelu",
    }
    if registers:  # official code and transformers agree
        config.update(interpolation_offset=0.0, interpolation_antialias=True)
    elif interpolation == "original":
        config.update(interpolation_offset=0.1, interpolation_antialias=False)
    else:
        config.update(interpolation_offset=0.0, interpolation_antialias=False)
    return config
