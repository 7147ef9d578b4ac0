"""DINO's self-attention maps: the last block's CLS -> patch attention, per head."""

from __future__ import annotations

import matplotlib
import numpy as np
from keras import ops

from keras_ssl.augment._base import to_unit_float

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["attention_maps", "save_attention_overlays"]


def _float_images(images):
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {images.shape}.")
    return to_unit_float(images).astype("float32", copy=False)  # integers in [0, 255]


def attention_maps(vit, images, path=None, batch_size=64):
    """Last-block attention of the CLS token to the patches, per head (DINO, Fig. 1 / 3).

    Caron et al. 2021 ("Emerging Properties in Self-Supervised Vision Transformers")
    show the self-attention of the ``[CLS]`` query to every patch in the last block,
    one map per head. This returns ``A[n, j] / sum_p A[n, p]`` where ``A`` is the
    softmax attention row of the CLS token of head ``n``
    (``vit.get_last_self_attention``) restricted to the patch tokens (CLS and register
    tokens dropped), so each map sums to 1 over the ``h x w`` patches.

    Args:
        vit: a `keras_ssl.backbones.ViT` (anything with ``get_last_self_attention``,
            ``patch_size`` and ``num_register_tokens``).
        images: ``(N, H, W, C)`` (or ``(N, H, W)``) NumPy images; integer images
            (``uint8``) are scaled to [0, 1].
        path: if given, a PNG of the images with every head's map overlaid
            (`save_attention_overlays`) is written there.
        batch_size: images per forward pass.

    Returns:
        float32 array ``(N, heads, h, w)`` with ``h = H // patch_size``,
        ``w = W // patch_size``; every ``[i, head]`` map sums to 1.

    Example:

    ```python
    import numpy as np
    from keras_ssl.backbones import ViT
    from keras_ssl.visualize import attention_maps

    vit = ViT(patch_size=4, hidden_dim=32, depth=2, num_heads=2, input_channels=1,
              pretrain_image_size=28)
    maps = attention_maps(vit, np.random.rand(3, 28, 28, 1), path="/tmp/attention.png")
    maps.shape  # (3, 2, 7, 7)
    ```
    """
    if not callable(getattr(vit, "get_last_self_attention", None)):
        raise TypeError(
            "attention_maps needs a ViT backbone (keras_ssl.backbones.ViT); "
            f"{type(vit).__name__} has no get_last_self_attention."
        )
    pixels = _float_images(images)
    height, width = pixels.shape[1] // vit.patch_size, pixels.shape[2] // vit.patch_size
    first_patch = 1 + int(getattr(vit, "num_register_tokens", 0))
    maps = []
    for start in range(0, len(pixels), batch_size):
        attention = vit.get_last_self_attention(pixels[start : start + batch_size])
        cls_row = ops.convert_to_numpy(ops.cast(attention[:, :, 0, first_patch:], "float32"))
        cls_row = cls_row / np.sum(cls_row, axis=-1, keepdims=True)
        maps.append(cls_row.reshape(cls_row.shape[0], cls_row.shape[1], height, width))
    maps = np.concatenate(maps).astype("float32")
    if path is not None:
        save_attention_overlays(pixels, maps, path)
    return maps


def save_attention_overlays(images, maps, path, alpha=0.55, title=None):
    """Writes a PNG grid: one row per image, the image then each head's map over it.

    Args:
        images: ``(N, H, W[, C])`` images (``uint8`` or floats in [0, 1]).
        maps: ``(N, heads, h, w)`` attention maps (e.g. from `attention_maps`).
        path: output PNG path.
        alpha: opacity of the maps.
        title: optional figure title.

    Returns:
        ``path``.
    """
    pixels = _float_images(images)
    maps = np.asarray(maps, dtype="float32")
    if maps.ndim != 4 or len(maps) != len(pixels):
        raise ValueError(
            f"maps must be (N, heads, h, w) with N = {len(pixels)} images, got {maps.shape}."
        )
    n, heads = maps.shape[:2]
    size = 1.6
    figure, axes = plt.subplots(
        n, heads + 1, figsize=(size * (heads + 1), size * n + (0.4 if title else 0)),
        squeeze=False,
    )  # fmt: skip
    extent = (0, pixels.shape[2], pixels.shape[1], 0)
    for i in range(n):
        image = pixels[i, ..., 0] if pixels.shape[-1] == 1 else np.clip(pixels[i], 0.0, 1.0)
        cmap = "gray" if pixels.shape[-1] == 1 else None
        axes[i, 0].imshow(image, cmap=cmap, extent=extent)
        for head in range(heads):
            axis = axes[i, head + 1]
            axis.imshow(image, cmap=cmap, extent=extent)
            axis.imshow(maps[i, head], cmap="inferno", alpha=alpha, extent=extent,
                        interpolation="nearest")  # fmt: skip
            if i == 0:
                axis.set_title(f"head {head}", fontsize=8)
        if i == 0:
            axes[i, 0].set_title("image", fontsize=8)
    for axis in axes.flat:
        axis.set_axis_off()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
