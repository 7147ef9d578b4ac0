"""16-bit images into `fit` (its validation data too), `evaluate` and `predict` on every
backend.

Keras's torch backend turns a NumPy `uint16` array into an `int32` tensor (torch had no
`uint16` arithmetic), so the trainer would read 16-bit images as 8-bit values. The data
is therefore converted to float32 in [0, 1] (`x / 65535`, see `to_unit_float`) before
Keras sees it: arrays on every backend; `tf.data` sets, `PyDataset`s and generators on
torch, the one backend that needs it, batch by batch. A torch `DataLoader`'s
`torch.uint16` batches reach the trainer as they are and need nothing.
"""

import inspect

import keras
import numpy as np

from keras_ssl.augment._base import to_unit_float


def uint16_images_to_unit_float(x):
    """`x` with its `uint16` images as float32 in [0, 1], or `x` itself when it has none
    (or when the backend reads them right)."""
    converted = uint16_arrays_to_unit_float(x)
    if converted is not x or keras.backend.backend() != "torch":
        return converted
    if isinstance(x, keras.utils.PyDataset):
        return _UnitFloatPyDataset(x)
    if inspect.isgenerator(x):
        return (uint16_arrays_to_unit_float(batch) for batch in x)
    if _is_tf_dataset(x):
        return _map_tf_dataset(x)
    return x


def uint16_arrays_to_unit_float(x):
    """`x` with each NumPy `uint16` array in it (an array, or one in a batch's tuple, list
    or dict) as float32 in [0, 1]; `x` itself when it holds none."""
    if not any(_is_uint16_array(a) for a in keras.tree.flatten(x)):
        return x
    return keras.tree.map_structure(lambda a: to_unit_float(a) if _is_uint16_array(a) else a, x)


def _is_uint16_array(x):
    return isinstance(x, np.ndarray) and x.dtype == np.uint16


class _UnitFloatPyDataset(keras.utils.PyDataset):
    """A user's `PyDataset` with its `uint16` arrays converted in each batch; its workers,
    multiprocessing, queue size, length and epoch hooks are the user's."""

    def __init__(self, dataset):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __getitem__(self, index):
        return uint16_arrays_to_unit_float(self.dataset[index])

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def _is_tf_dataset(x):
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "element_spec")


def _map_tf_dataset(dataset):
    import tensorflow as tf

    if not any(spec.dtype == tf.uint16 for spec in tf.nest.flatten(dataset.element_spec)):
        return dataset

    def convert(*element):
        element = element[0] if len(element) == 1 else element
        return tf.nest.map_structure(
            lambda t: to_unit_float(t) if t.dtype == tf.uint16 else t, element
        )

    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
