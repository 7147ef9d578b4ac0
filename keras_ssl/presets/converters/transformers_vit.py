"""transformers ``ViTModel`` (the ``facebook/dino-vit*`` copies) -> ``keras_ssl.backbones.ViT``.

The ``facebook/dino-vit{s,b}{8,16}`` repositories hold the official DINO weights in the
transformers layout (no pooler). Their ``config.json`` says ``layer_norm_eps: 1e-12``
but the weights were trained and evaluated with 1e-6 (the official DINO code), so
:func:`backbone_config` uses 1e-6 unless told otherwise; this module only maps weights.
Keys as written by ``save_pretrained`` are expected; the transformers >= 5 in-memory
names (``layers.i.attention.q_proj``, ``layernorm_before``, ``mlp.fc1`` ...) and a
``vit.`` prefix are accepted too, ``pooler.`` / ``classifier.`` keys are skipped.

Key map (per block ``encoder.layer.i.``):

==========================================  ============================================
checkpoint key                              Keras (``ViT``)
==========================================  ============================================
``embeddings.patch_embeddings.projection``  ``patch_embed`` (weight ``(D,3,P,P)`` -> HWIO)
``embeddings.cls_token``                    ``cls_token.token``
``embeddings.position_embeddings``          ``pos_embed.embeddings``
``layernorm_before``, ``layernorm_after``   ``blocks_i_norm1``, ``blocks_i_norm2``
``attention.attention.{query,key,value}``   ``blocks_i_attn_qkv``: ``[Wq; Wk; Wv].T``
``attention.output.dense``                  ``blocks_i_attn_proj``
``intermediate.dense``, ``output.dense``    ``blocks_i_mlp_fc1``, ``blocks_i_mlp_fc2``
``layernorm``                               ``norm``
==========================================  ============================================

Example:

```python
import json
import keras_ssl.backbones
from keras_ssl.presets.converters import transformers_vit
from safetensors.numpy import load_file

config = transformers_vit.backbone_config(json.load(open("config.json")))  # eps 1e-6
backbone = keras_ssl.backbones.ViT(**config)
transformers_vit.convert_weights(load_file("model.safetensors"), backbone)
```
"""

from collections.abc import Mapping

import keras
import numpy as np

from keras_ssl.presets.converters import _assign

SOURCE = "transformers ViTModel"
PREFIXES = ("vit.",)
_IGNORED = ("pooler.", "classifier.")
_INTERPOLATIONS = ("original", "transformers")
# transformers >= 5 in-memory names -> the names of the published safetensors.
_RENAMES = _assign.TRANSFORMERS_ATTENTION_RENAMES + (
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)

KEYS = _assign.ViTKeys(
    patch_embed="embeddings.patch_embeddings.projection",
    cls_token="embeddings.cls_token",
    pos_embed="embeddings.position_embeddings",
    register_tokens="embeddings.register_tokens",
    mask_token="embeddings.mask_token",
    block=lambda i: f"encoder.layer.{i}",
    norm1="layernorm_before",
    qkv=("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    proj="attention.output.dense",
    ls1="layer_scale1.lambda1",
    norm2="layernorm_after",
    fc1="intermediate.dense",
    fc2="output.dense",
    ls2="layer_scale2.lambda1",
    norm="layernorm",
)


def _published_names(weights):
    return _assign.rename_keys(weights, _RENAMES)


def convert_weights(weights: Mapping[str, np.ndarray], backbone: keras.Model) -> None:
    """Assign a transformers ``ViTModel`` state dict (NumPy arrays) into ``backbone``.

    Args:
        weights: arrays keyed by the transformers names (see the module docstring).
        backbone: a built ``keras_ssl.backbones.ViT`` of the same architecture
            (see :func:`backbone_config`).

    Raises:
        ValueError: naming every missing key, unexpected key and shape mismatch;
            nothing is assigned then.
    """
    if backbone.mlp != "gelu" or backbone.layer_scale_init is not None:
        raise ValueError(
            "A transformers ViTModel has a GELU MLP and no LayerScale: build the backbone "
            "with `mlp='gelu'` and `layer_scale_init=None` (see `backbone_config`)."
        )
    weights = _published_names(_assign.strip_prefixes(dict(weights), PREFIXES))
    _assign.assign(
        _assign.vit_targets(backbone, KEYS),
        weights,
        source=SOURCE,
        ignored=lambda key: key.startswith(_IGNORED),
        fix=_assign.architecture_fix(
            "The facebook/dino-vit* copies have no mask token: use `use_mask_token=False`."
        ),
    )


def backbone_config(
    source_config: dict,
    *,
    layer_norm_epsilon: float | None = 1e-6,
    interpolation: str = "original",
) -> dict:
    """``keras_ssl.backbones.ViT`` kwargs from a transformers ViT ``config.json`` dict.

    Args:
        source_config: the ``config.json`` of a ``ViTModel``.
        layer_norm_epsilon: LayerNorm epsilon; the default 1e-6 is the one the DINO
            weights were trained with (their ``config.json`` says 1e-12, which shifts
            the outputs). ``None`` takes the config's ``layer_norm_eps``.
        interpolation: position-embedding resize for inputs of another size:
            ``"original"`` (default) is the official DINO code's (bicubic,
            ``scale_factor=(h + 0.1) / M``), ``"transformers"`` is ``ViTModel``'s with
            ``interpolate_pos_encoding=True`` (bicubic, ``size=(h, w)``).

    Returns:
        A dict of ``ViT`` kwargs (exact GELU, no LayerScale, no registers, no mask
        token, ``mlp_dim = intermediate_size``: the exact width, which
        ``hidden_size * mlp_ratio`` need not round back to).
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {_INTERPOLATIONS}, got {interpolation!r}."
        )
    c = source_config
    if c.get("hidden_act", "gelu") != "gelu":
        raise ValueError(
            f"hidden_act {c['hidden_act']!r} is not supported: the ViT MLP uses the exact "
            "GELU ('gelu')."
        )
    hidden = int(c.get("hidden_size", 768))
    intermediate = int(c.get("intermediate_size", 4 * hidden))
    image_size, patch_size = _assign.transformers_geometry(c, 224, 16)
    if layer_norm_epsilon is None:
        layer_norm_epsilon = c.get("layer_norm_eps", 1e-12)
    config = {
        "patch_size": patch_size,
        "hidden_dim": hidden,
        "depth": int(c.get("num_hidden_layers", 12)),
        "num_heads": int(c.get("num_attention_heads", 12)),
        "mlp_ratio": intermediate / hidden,
        "mlp_dim": intermediate,
        "input_channels": int(c.get("num_channels", 3)),
        "num_register_tokens": 0,
        "layer_scale_init": None,
        "qkv_bias": bool(c.get("qkv_bias", True)),
        "layer_norm_epsilon": float(layer_norm_epsilon),
        "pretrain_image_size": image_size,
        "use_mask_token": False,
        "mlp": "gelu",
    }
    if interpolation == "original":
        config.update(interpolation_offset=0.1, interpolation_antialias=False)
    else:
        config.update(interpolation_offset=0.0, interpolation_antialias=False)
    return config
