"""A collate function that augments in torch DataLoader workers; a module of its own so
that spawned workers can import it."""

import keras
import numpy as np


class AugmentingCollate:
    """Stacks a batch's images and returns the augmenter's views as NumPy arrays."""

    def __init__(self, augmenter):
        self.augmenter = augmenter

    def __call__(self, images):
        return [keras.ops.convert_to_numpy(v) for v in self.augmenter(np.stack(images))]
