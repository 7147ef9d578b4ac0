"""Noisy views of blocky images (random 4x4 patterns, upsampled): distinct enough for a
tiny network to learn to tell apart in a few steps."""

import numpy as np


def blocky_views(n, sizes=(16, 16), seed=0):
    """One float32 `(n, size, size, 1)` view per entry of `sizes`, each the same `n` blocky
    images plus its own Gaussian noise (sigma 0.1), clipped to [0, 1]."""
    coarse = np.random.default_rng(seed).uniform(size=(n, 4, 4, 1))
    rng = np.random.default_rng(seed + 1)
    views = []
    for size in sizes:
        image = np.kron(coarse, np.ones((1, size // 4, size // 4, 1)))
        views.append(np.clip(image + 0.1 * rng.normal(size=image.shape), 0, 1).astype("float32"))
    return tuple(views)
