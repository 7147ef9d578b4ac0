import math
import random

import keras
import numpy as np
from keras import ops

from keras_ssl.ops import block_masks


def _reference_block_mask(rng, target, height, width, min_block=4, max_block=None):
    """BEiT's block-wise masking (Bao et al. 2022, Alg. 1, as its released generator and
    DINOv2's run it): rectangles until the target is met or ten proposals in a row fail."""
    max_block = max_block or height * width
    mask = np.zeros((height, width), bool)
    while mask.sum() < target:
        limit = min(target - mask.sum(), max_block)
        for _ in range(10):
            area = rng.uniform(min_block, limit)
            ratio = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 1 <= h < height and 1 <= w < width:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                delta = h * w - mask[top : top + h, left : left + w].sum()
                if 0 < delta <= limit:
                    mask[top : top + h, left : left + w] = True
                    break
        else:
            break
    return mask


def _masked_neighbour_fraction(masks, height, width):
    """Mean fraction of a masked patch's 4-neighbours (inside the grid) that are masked."""
    grids = masks.reshape(-1, height, width)
    padded = np.pad(grids, ((0, 0), (1, 1), (1, 1)))
    inside = np.pad(np.ones_like(grids), ((0, 0), (1, 1), (1, 1)))
    shifts = [(0, 1), (0, -1), (1, 0), (-1, 0)]
    masked = sum(np.roll(padded, s, axis=(1, 2)) for s in shifts)[:, 1:-1, 1:-1]
    valid = sum(np.roll(inside, s, axis=(1, 2)) for s in shifts)[:, 1:-1, 1:-1]
    return float((masked / valid)[grids].mean())


def test_block_masks_never_exceed_their_target_and_match_beits_statistics():
    height, width, n = 14, 14, 256
    targets = np.random.default_rng(0).integers(20, 99, size=n).astype("float32")
    targets[:16] = 0
    masks = ops.convert_to_numpy(
        block_masks(targets, (height, width), seed=3, max_block_patches=98)
    )
    assert masks.shape == (n, height * width) and masks.dtype == bool
    counts = masks.sum(axis=1)
    assert (counts[:16] == 0).all()
    assert (counts <= targets).all()

    rng = random.Random(0)
    reference = np.stack(
        [
            _reference_block_mask(rng, int(t), height, width, max_block=98).reshape(-1)
            for t in targets
        ]
    )
    fill = (counts / np.maximum(targets, 1))[16:]
    reference_fill = (reference.sum(axis=1) / np.maximum(targets, 1))[16:]
    assert abs(fill.mean() - reference_fill.mean()) < 0.05, (fill.mean(), reference_fill.mean())
    assert fill.mean() > 0.85
    # Blocks, not scattered patches: masked patches have masked neighbours as often as in
    # BEiT's masks, far more often than a random subset of the same size would.
    ours = _masked_neighbour_fraction(masks[16:], height, width)
    theirs = _masked_neighbour_fraction(reference[16:], height, width)
    assert abs(ours - theirs) < 0.05, (ours, theirs)
    scattered = np.zeros_like(masks[16:])
    for row, count in zip(scattered, counts[16:], strict=True):
        row[np.random.default_rng(int(count)).permutation(row.size)[:count]] = True
    assert ours > _masked_neighbour_fraction(scattered, height, width) + 0.3


def test_block_masks_follow_the_seed_generator_and_compile():
    generator = keras.random.SeedGenerator(7)
    first = ops.convert_to_numpy(block_masks(np.full(8, 12.0), (6, 6), seed=generator))
    second = ops.convert_to_numpy(block_masks(np.full(8, 12.0), (6, 6), seed=generator))
    assert not np.array_equal(first, second)  # the generator advanced
    again = ops.convert_to_numpy(block_masks(np.full(8, 12.0), (6, 6), seed=5))
    np.testing.assert_array_equal(
        again, ops.convert_to_numpy(block_masks(np.full(8, 12.0), (6, 6), seed=5))
    )
    assert (first.sum(axis=1) <= 12).all() and first.sum() > 0
