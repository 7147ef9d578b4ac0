"""timm / official DINO (and official DINOv2) ViT state dicts -> ``keras_ssl.backbones.ViT``.

Sources: timm's ``VisionTransformer`` (e.g. ``timm/vit_small_patch16_224.dino``, the
official DINO weights with their original key names), the official DINO
``vision_transformer.py`` backbones (``dino_deitsmall16_pretrain.pth`` ...) and DINO
full checkpoints (``student`` keys under ``module.backbone.``, ``teacher`` keys under
``backbone.``; the ``head.`` keys are skipped), and the official DINOv2 backbones
(``register_tokens``, ``mask_token``, ``ls1.gamma``, SwiGLU ``mlp.w12`` / ``mlp.w3``).

Key map (``D`` the width, ``P`` the patch, ``M`` the pretrain grid side):

==================================  =====================================================
checkpoint key                      Keras (``ViT``)
==================================  =====================================================
``patch_embed.proj.weight``         ``patch_embed.kernel`` ``(D, 3, P, P)`` -> ``(P, P, 3, D)``
``cls_token`` / ``pos_embed``       ``cls_token.token`` / ``pos_embed.embeddings``
``register_tokens``, ``mask_token`` ``register_tokens.tokens``, ``mask_token.token``
``blocks.i.attn.qkv``               ``blocks_i_attn_qkv`` (kernel = weight.T, same q/k/v order)
``blocks.i.{attn.proj,mlp.fc*}``    ``blocks_i_{attn_proj,mlp_fc*}`` (kernel = weight.T)
``blocks.i.mlp.{w12,w3}``           ``blocks_i_mlp_{fc1,fc2}`` (SwiGLU, ``mlp="swiglu"``)
``blocks.i.{norm1,norm2}``, norm    LayerNorms (gamma = weight, beta = bias)
``blocks.i.{ls1,ls2}.gamma``        ``blocks_i_{ls1,ls2}.gamma`` (LayerScale)
==================================  =====================================================

Example:

```python
import keras_ssl.backbones
from keras_ssl.presets.converters import timm_vit
from safetensors.numpy import load_file

config = timm_vit.backbone_config({"architecture": "vit_small_patch16_224"})
backbone = keras_ssl.backbones.ViT(**config)
timm_vit.convert_weights(load_file("model.safetensors"), backbone)
```
"""

import re
from collections.abc import Mapping

import keras
import numpy as np

from keras_ssl.presets.converters import _assign

SOURCE = "timm / official DINO ViT"
# DINO full checkpoints: student under module.backbone., teacher under backbone.
PREFIXES = ("module.backbone.", "backbone.", "module.")
_IGNORED = ("head.", "module.head.")
_SIZES = {  # timm name -> (embed_dim, depth, num_heads)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
_INTERPOLATIONS = ("original", "timm")

KEYS = _assign.ViTKeys(
    patch_embed="patch_embed.proj",
    cls_token="cls_token",
    pos_embed="pos_embed",
    register_tokens="register_tokens",
    mask_token="mask_token",
    block=lambda i: f"blocks.{i}",
    norm1="norm1",
    qkv="attn.qkv",
    proj="attn.proj",
    ls1="ls1.gamma",
    norm2="norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
    ls2="ls2.gamma",
    norm="norm",
    swiglu_fc1="mlp.w12",
    swiglu_fc2="mlp.w3",
)


def convert_weights(weights: Mapping[str, np.ndarray], backbone: keras.Model) -> None:
    """Assign a timm / official DINO ViT state dict (NumPy arrays) into ``backbone``.

    Args:
        weights: arrays keyed by the original names, optionally prefixed by
            ``module.backbone.`` / ``backbone.`` / ``module.`` (DINO full checkpoints;
            their ``head.`` keys are skipped).
        backbone: a built ``keras_ssl.backbones.ViT`` of the same architecture
            (see :func:`backbone_config`).

    Raises:
        ValueError: naming every missing key, unexpected key and shape mismatch;
            nothing is assigned then.
    """
    ignored = {k for k in weights if k.startswith(_IGNORED)}
    kept = {k: v for k, v in weights.items() if k not in ignored}
    weights = _assign.strip_prefixes(kept, PREFIXES)
    _assign.assign(
        _assign.vit_targets(backbone, KEYS),
        weights,
        source=SOURCE,
        fix=_assign.architecture_fix(
            "A DINO v1 checkpoint has no `mask_token`: use `use_mask_token=False`. timm "
            "register models (`reg_token`, class token without position embedding) are "
            "not supported."
        ),
    )


def backbone_config(source_config: dict, *, interpolation: str = "original") -> dict:
    """``keras_ssl.backbones.ViT`` kwargs for a timm / DINO checkpoint.

    Args:
        source_config: timm's ``config.json`` (``architecture``, optional
            ``model_args`` and ``pretrained_cfg``), a bare ``pretrained_cfg`` or a preset
            card's fields. The architecture comes from ``architecture``
            (``vit_{tiny,small,base,large,huge}_patch{P}_{size}``), then timm
            ``model_args`` (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``,
            ``img_size``, ``mlp_ratio``, ``qkv_bias``, ``init_values``), then any
            ``keras_ssl.backbones.ViT`` argument given at the top level.
        interpolation: ``"original"`` (default) reproduces the position-embedding
            resize of the official DINO code that the published weights were evaluated
            with (bicubic, ``scale_factor=(h + 0.1) / M``, no antialias); ``"timm"``
            reproduces timm's ``dynamic_img_size`` resize (``size=(h, w)``, bicubic,
            ``antialias=True``).

    Returns:
        A dict of ``ViT`` kwargs: LayerNorm epsilon 1e-6, exact GELU MLP, no mask token,
        no LayerScale unless ``init_values`` is set.
    """
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {_INTERPOLATIONS}, got {interpolation!r}."
        )
    config = {
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "layer_scale_init": None,
        "num_register_tokens": 0,
        "use_mask_token": False,
        "layer_norm_epsilon": 1e-6,
        "mlp": "gelu",
    }
    pretrained = source_config.get("pretrained_cfg") or {}
    architecture = source_config.get("architecture") or pretrained.get("architecture")
    match = None
    if architecture:
        match = re.match(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)", architecture)
        if not match and not source_config.get("model_args"):
            raise ValueError(
                f"Unsupported timm architecture {architecture!r}: expected "
                "`vit_{tiny,small,base,large,huge}_patch{P}_{size}`, or give `model_args` "
                "(embed_dim, depth, num_heads, patch_size, img_size)."
            )
    if match:
        width, depth, heads = _SIZES[match.group(1)]
        config.update(
            hidden_dim=width,
            depth=depth,
            num_heads=heads,
            patch_size=int(match.group(2)),
            pretrain_image_size=int(match.group(3)),
        )
    input_size = pretrained.get("input_size") or source_config.get("input_size")
    if input_size and "pretrain_image_size" not in config:
        config["pretrain_image_size"] = int(input_size[-1])
    renames = {
        "embed_dim": "hidden_dim",
        "depth": "depth",
        "num_heads": "num_heads",
        "patch_size": "patch_size",
        "img_size": "pretrain_image_size",
        "mlp_ratio": "mlp_ratio",
        "qkv_bias": "qkv_bias",
        "init_values": "layer_scale_init",
        "in_chans": "input_channels",
    }
    for key, value in (source_config.get("model_args") or {}).items():
        if key in renames:
            config[renames[key]] = value
    config.update({k: v for k, v in source_config.items() if k in _assign.vit_arguments()})
    missing = [k for k in ("hidden_dim", "depth", "num_heads", "patch_size") if k not in config]
    if missing:
        raise ValueError(
            f"Cannot tell the ViT architecture from the config: {missing} unknown. Give "
            "`architecture` (e.g. 'vit_small_patch16_224') or timm `model_args`."
        )
    config.setdefault("pretrain_image_size", 224)
    if interpolation == "original":
        config.update(interpolation_offset=0.1, interpolation_antialias=False)
    else:
        config.update(interpolation_offset=0.0, interpolation_antialias=True)
    return config
