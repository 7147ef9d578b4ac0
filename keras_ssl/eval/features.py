"""Frozen features of the linear-evaluation protocols (DINO's ViT variants, pooled CNNs)."""

from __future__ import annotations

import keras
from keras import ops

from keras_ssl.eval.linear import extract_features, linear_probe

__all__ = [
    "PROTOCOLS",
    "feature_model",
    "linear_probe_backbone",
    "probe_features",
    "vit_block_tokens",
    "vit_probe_model",
]

PROTOCOLS = ("pooled", "last_blocks_cls", "cls_avgpool")


def _is_vit(backbone):
    return callable(getattr(backbone, "get_last_self_attention", None)) and hasattr(
        backbone, "depth"
    )


def vit_block_tokens(vit, images, blocks):
    """Token sequences after the given blocks of a ``keras_ssl.backbones.ViT``.

    Runs the ViT's own layers (``vit.get_layer``) in the order of its forward pass and
    returns, for each block index in ``blocks``, that block's output passed through the
    ViT's final LayerNorm, as DINO's ``get_intermediate_layers`` does. Works on
    ``keras.Input`` tensors (to build a functional model sharing the ViT's weights) and
    on concrete arrays.

    Args:
        vit: a ``keras_ssl.backbones.ViT``.
        images: ``(N, H, W, C)`` images (or a ``keras.Input``).
        blocks: block indices (``0 .. depth - 1``; negative counts from the end).

    Returns:
        A list of ``(N, 1 + R + h * w, D)`` tensors: CLS, ``R`` registers, patches.
    """
    depth = vit.depth
    wanted = sorted({b % depth for b in blocks})
    if any(not -depth <= b < depth for b in blocks):
        raise ValueError(f"Block indices must lie in [-{depth}, {depth - 1}], got {list(blocks)}.")
    layer = vit.get_layer
    layer_scale = vit.layer_scale_init is not None
    grid = layer("patch_embed")(images)
    x = layer("pos_embed")([layer("cls_token")(grid), grid], images=images)
    if vit.num_register_tokens:
        x = layer("register_tokens")(x)
    outputs = {}
    for i in range(wanted[-1] + 1):
        p = f"blocks_{i}"
        y = layer(f"{p}_attn")(layer(f"{p}_attn_qkv")(layer(f"{p}_norm1")(x)))
        y = layer(f"{p}_attn_proj")(y)
        if layer_scale:
            y = layer(f"{p}_ls1")(y)
        x = layer(f"{p}_add1")([x, y])
        y = layer(f"{p}_mlp_fc2")(
            layer(f"{p}_mlp_act")(layer(f"{p}_mlp_fc1")(layer(f"{p}_norm2")(x)))
        )
        if layer_scale:
            y = layer(f"{p}_ls2")(y)
        x = layer(f"{p}_add2")([x, y])
        if i in wanted:
            outputs[i] = layer("norm")(x)
    return [outputs[b % depth] for b in blocks]


def vit_probe_model(vit, n_last_blocks=4, avgpool_patch_tokens=False):
    """A ``keras.Model`` (sharing ``vit``'s weights) giving DINO's linear-probe features.

    DINO (Caron et al. 2021, ``eval_linear.py``): the concatenation of the CLS tokens of
    the last ``n_last_blocks`` blocks (each after the final LayerNorm; 4 for ViT-S),
    optionally followed by the average of the last block's patch tokens
    (``avgpool_patch_tokens=True``; DINO's ViT-B protocol uses ``n = 1`` with it). The
    width is ``D * (n_last_blocks + avgpool_patch_tokens)``. Register tokens are
    excluded from the average.

    Example:

    ```python
    import numpy as np
    from keras_ssl.backbones import ViT
    from keras_ssl.eval import vit_probe_model

    vit = ViT(patch_size=4, hidden_dim=32, depth=3, num_heads=2, input_channels=1,
              pretrain_image_size=28)
    model = vit_probe_model(vit, n_last_blocks=2, avgpool_patch_tokens=True)
    model.predict(np.zeros((2, 28, 28, 1)), verbose=0).shape  # (2, 96)
    ```
    """
    if not _is_vit(vit):
        raise TypeError(
            "vit_probe_model needs a keras_ssl.backbones.ViT; for CNN backbones use the "
            "pooled features (protocol='pooled')."
        )
    n_last_blocks = int(n_last_blocks)
    if not 1 <= n_last_blocks <= vit.depth:
        raise ValueError(
            f"n_last_blocks must lie in [1, {vit.depth}] for this ViT, got {n_last_blocks}."
        )
    inputs = keras.Input((None, None, vit.input_channels), name="images")
    tokens = vit_block_tokens(vit, inputs, list(range(-n_last_blocks, 0)))
    parts = [t[:, 0] for t in tokens]
    if avgpool_patch_tokens:
        parts.append(ops.mean(tokens[-1][:, 1 + vit.num_register_tokens :], axis=1))
    outputs = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)
    return keras.Model(inputs, outputs, name=f"{vit.name}_probe_features")


def feature_model(backbone, protocol="pooled", n_last_blocks=4):
    """The frozen-feature model of a linear-evaluation ``protocol``.

    Args:
        backbone: a feature backbone (``keras.Model`` images -> ``(N, D)``).
        protocol: ``"pooled"``: the backbone's own output (global-average-pooled
            features of a ResNet / ConvNet, the CLS token of a ViT; SimCLR, MoCo, BYOL);
            ``"last_blocks_cls"``: a ViT's CLS tokens of the last ``n_last_blocks``
            blocks, concatenated (DINO ViT-S); ``"cls_avgpool"``: as the previous one
            plus the average-pooled patch tokens of the last block (DINO ViT-B with
            ``n_last_blocks=1``).
        n_last_blocks: blocks for the ViT protocols.

    Returns:
        A ``keras.Model`` images -> features.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    if protocol == "pooled":
        return backbone
    return vit_probe_model(
        backbone, n_last_blocks=n_last_blocks, avgpool_patch_tokens=protocol == "cls_avgpool"
    )


def probe_features(backbone, images, protocol="pooled", n_last_blocks=4, batch_size=256):
    """``extract_features`` of ``feature_model(backbone, protocol, n_last_blocks)``."""
    return extract_features(feature_model(backbone, protocol, n_last_blocks), images, batch_size)


def linear_probe_backbone(
    backbone,
    train_images,
    train_labels,
    test_images,
    test_labels,
    protocol="pooled",
    n_last_blocks=4,
    batch_size=256,
    **probe_kwargs,
):
    """Linear evaluation of a frozen backbone on labelled images, by a paper's protocol.

    Extracts the ``protocol``'s features (see :func:`feature_model`) of both image sets
    and trains :func:`keras_ssl.eval.linear_probe` on them.

    Args:
        backbone: the frozen backbone.
        train_images, train_labels, test_images, test_labels: labelled NumPy images
            (``uint8`` scaled to [0, 1]) and integer labels.
        protocol, n_last_blocks: see :func:`feature_model`.
        batch_size: images per forward pass and the probe's mini-batch size.
        **probe_kwargs: further ``linear_probe`` arguments (``epochs``, ``learning_rate``,
            ``optimizer``, ``seed``, ...).

    Returns:
        The ``LinearProbeResult`` with ``protocol`` and ``feature_model`` set;
        ``result.classifier()`` chains the feature model and the head (images ->
        class probabilities).

    Example:

    ```python
    import numpy as np
    from keras_ssl.backbones import ConvNet
    from keras_ssl.datasets import fashion_mnist
    from keras_ssl.eval import linear_probe_backbone

    (x, y), (xt, yt) = fashion_mnist.load_data("embedded")
    result = linear_probe_backbone(ConvNet(input_channels=1), x[:1000], y[:1000],
                                   xt[:200], yt[:200], epochs=5)
    print(result.top1, result.head)
    ```
    """
    model = feature_model(backbone, protocol, n_last_blocks)
    result = linear_probe(
        extract_features(model, train_images, batch_size),
        train_labels,
        extract_features(model, test_images, batch_size),
        test_labels,
        batch_size=batch_size,
        **probe_kwargs,
    )
    result.protocol = protocol
    result.feature_model = model
    return result
