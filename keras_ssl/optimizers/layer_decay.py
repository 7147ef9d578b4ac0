"""Layer-wise learning-rate decay for ViTs (BEiT, iBOT, DINOv2)."""

import re

_EMBEDDING_LAYERS = ("patch_embed", "cls_token", "pos_embed", "mask_token", "register_tokens")
_BLOCK = re.compile(r"^blocks_(\d+)_")


def vit_layer_decay(vit, decay=0.9, patch_embed_multiplier=1.0):
    """Learning-rate multipliers of a `keras_ssl.backbones.ViT`'s trainable weights for
    layer-wise decay (Bao et al. 2022, BEiT; Oquab et al. 2023, DINOv2 Sec. 5).

    With `L` blocks, the weights of layer `l` (0 for the patch embedding, class and mask
    tokens, position embeddings and registers; `i + 1` for block `i`; `L + 1` for the
    final norm) train at `decay ** (L + 1 - l)` times the base rate, so the layers near
    the input move least. The patch embedding's multiplier is further scaled by
    `patch_embed_multiplier` (0.2 in DINOv2, for stability).

    Args:
        vit: a built `keras_ssl.backbones.ViT`.
        decay: the per-layer factor (0.9 in DINOv2; 1.0 for none).
        patch_embed_multiplier: extra factor on the patch embedding.

    Returns:
        A list of `(variable, multiplier)` pairs, one per trainable weight of `vit`.

    Example:

    ```python
    import keras_ssl
    vit = keras_ssl.backbones.ViT(patch_size=4, hidden_dim=32, depth=2, num_heads=2,
                                  pretrain_image_size=16)
    multipliers = keras_ssl.optimizers.vit_layer_decay(vit, 0.9, 0.2)
    ```
    """
    depth = int(vit.depth)
    pairs = []
    for layer in vit.layers:
        match = _BLOCK.match(layer.name)
        if layer.name in _EMBEDDING_LAYERS:
            layer_id = 0
        elif match:
            layer_id = int(match.group(1)) + 1
        else:
            layer_id = depth + 1
        multiplier = float(decay) ** (depth + 1 - layer_id)
        if layer.name == "patch_embed":
            multiplier *= float(patch_embed_multiplier)
        pairs.extend((variable, multiplier) for variable in layer.trainable_weights)
    return pairs
