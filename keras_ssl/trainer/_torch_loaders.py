"""A torch `DataLoader` fed to `fit`, `evaluate` and `predict` on the JAX and TensorFlow
backends, whatever form its batches take.

Keras's adapter for a `DataLoader` on those backends reads each batch as a tuple of torch
tensors: a batch that is one `(N, H, W, C)` tensor (a data set whose items are images, not
tuples) would be split into `N` images, and NumPy arrays (from a `collate_fn` that
augments, say) fail on `.cpu()`. The loader is therefore copied with its collate function
wrapped to hand such a batch over as `(images,)` and its arrays as tensors (sharing their
memory): the sampler, workers, batch size and everything else stay the user's. On PyTorch
Keras iterates the loader itself and reads both forms right, and the loader is left as it
is.
"""

import copy
import sys

import keras
import numpy as np


def keras_readable_loader(x):
    """`x`, or for a torch `DataLoader` on JAX or TensorFlow a copy of it whose batches
    Keras's adapter reads right (see the module docstring)."""
    if keras.backend.backend() == "torch" or not _is_torch_data_loader(x):
        return x
    if isinstance(x.collate_fn, _KerasReadableBatch):
        return x
    loader = copy.copy(x)
    loader.collate_fn = _KerasReadableBatch(x.collate_fn)
    loader._iterator = None  # the copy starts its own (persistent) workers
    return loader


def _is_torch_data_loader(x):
    torch = sys.modules.get("torch")  # a DataLoader means torch is imported already
    return torch is not None and isinstance(x, torch.utils.data.DataLoader)


class _KerasReadableBatch:
    """A collate function returning the user's batch with a lone tensor or array put in a
    tuple and NumPy arrays as torch tensors; a class, not a closure, so that worker
    processes can unpickle it."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, samples):
        import torch

        batch = self.collate_fn(samples)
        if isinstance(batch, (np.ndarray, torch.Tensor)):
            batch = (batch,)
        return keras.tree.map_structure(
            lambda a: torch.from_numpy(a) if isinstance(a, np.ndarray) else a, batch
        )
