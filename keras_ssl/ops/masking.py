"""Block-wise patch masks for masked image modelling (BEiT, iBOT, DINOv2)."""

import math

import keras
from keras import ops


def block_masks(
    num_masked_patches,
    grid_shape,
    seed=None,
    min_block_patches=4,
    max_block_patches=None,
    aspect_ratio=(0.3, 1 / 0.3),
    num_attempts=32,
):
    """Boolean patch masks made of random rectangles, as BEiT's block-wise masking
    (Bao et al. 2022, "BEiT: BERT Pre-Training of Image Transformers", Alg. 1), which
    iBOT and DINOv2 use for their masked patch loss.

    For each image, rectangles are proposed one after another: an area `s` uniform in
    `[min_block_patches, min(remaining, max_block_patches)]`, an aspect ratio `r`
    log-uniform in `aspect_ratio`, height `round(sqrt(s r))`, width `round(sqrt(s / r))`
    and a uniform position on the `h x w` patch grid. A proposal that fits strictly inside
    the grid is accepted when the number of patches it newly masks, `delta`, satisfies
    `0 < delta <= min(remaining, max_block_patches)`, where `remaining` is the target
    minus the patches masked so far; so a mask never exceeds its target. BEiT keeps
    proposing until the target is met or ten proposals in a row fail; here every image
    gets a fixed number of proposals (`num_attempts`) so that the computation has a
    static shape and compiles under `jit` on every backend. Masks reach their target
    or fall a few patches short, like BEiT's.

    Args:
        num_masked_patches: `(N,)` target number of masked patches per image (0 for an
            unmasked image).
        grid_shape: `(h, w)`, the patch grid.
        seed: a `keras.random.SeedGenerator` (or an integer seed) for the proposals.
        min_block_patches: smallest rectangle area proposed (4, as BEiT and DINOv2).
        max_block_patches: largest rectangle area (`None`: no limit beyond the target;
            DINOv2 uses half of the patches).
        aspect_ratio: `(min, max)` of the rectangles' height / width (0.3, 1 / 0.3).
        num_attempts: rectangle proposals per image.

    Returns:
        A boolean `(N, h * w)` tensor, True where a patch is masked, in row-major order.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import block_masks
    >>> masks = block_masks(np.array([20.0, 0.0]), (8, 8), seed=0)
    >>> masks.shape
    (2, 64)
    """
    height, width = (int(d) for d in grid_shape)
    target = ops.cast(ops.convert_to_tensor(num_masked_patches), "float32")
    num_images = ops.shape(target)[0]
    max_block = float(max_block_patches) if max_block_patches is not None else float("inf")
    min_block = float(min_block_patches)
    log_ratio_lo, log_ratio_hi = (math.log(r) for r in aspect_ratio)

    # One draw (an integer seed would repeat itself across several draws).
    u_area, u_ratio, u_top, u_left = ops.unstack(
        keras.random.uniform((4, num_attempts, num_images), seed=seed), axis=0
    )

    rows = ops.reshape(ops.arange(height, dtype="float32"), (1, height, 1))
    cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, width))

    def propose(i, state):
        mask, count = state
        remaining = target - count
        max_area = ops.minimum(remaining, max_block)
        area = min_block + u_area[i] * (max_area - min_block)
        ratio = ops.exp(log_ratio_lo + u_ratio[i] * (log_ratio_hi - log_ratio_lo))
        # round half up, as Python's round would for these positive, non-integral values
        block_h = ops.floor(ops.sqrt(ops.maximum(area * ratio, 0.0)) + 0.5)
        block_w = ops.floor(ops.sqrt(ops.maximum(area / ratio, 0.0)) + 0.5)
        fits = (block_h >= 1) & (block_w >= 1) & (block_h < height) & (block_w < width)
        top = ops.floor(u_top[i] * (height - block_h + 1))
        left = ops.floor(u_left[i] * (width - block_w + 1))

        def per_image(x):
            return ops.reshape(x, (-1, 1, 1))

        rect = (
            (rows >= per_image(top))
            & (rows < per_image(top + block_h))
            & (cols >= per_image(left))
            & (cols < per_image(left + block_w))
        )
        new = ops.cast(rect & ops.logical_not(mask), "float32")
        delta = ops.sum(new, axis=(1, 2))
        accept = fits & (delta > 0) & (delta <= max_area)
        mask = mask | (rect & per_image(accept))
        count = count + ops.where(accept, delta, 0.0)
        return mask, count

    initial = (
        ops.zeros((num_images, height, width), dtype="bool"),
        ops.zeros((num_images,), dtype="float32"),
    )
    mask, _ = ops.fori_loop(0, num_attempts, propose, initial)
    return ops.reshape(mask, (num_images, height * width))
