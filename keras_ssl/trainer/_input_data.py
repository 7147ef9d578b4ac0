"""The data `fit`, `evaluate` and `predict` hand Keras: the user's, made readable by every
backend (16-bit images; a torch `DataLoader` whose batches are bare images or NumPy arrays)."""

from keras_ssl.trainer._torch_loaders import keras_readable_loader
from keras_ssl.trainer._uint16_inputs import uint16_images_to_unit_float


def readable_data(x):
    """`x` as Keras reads it right on this backend (see the two converters)."""
    return uint16_images_to_unit_float(keras_readable_loader(x))


def with_readable_data(args, kwargs):
    """`(args, kwargs)` of a `fit` / `evaluate` / `predict` call with `x` (and `fit`'s
    `validation_data`) passed through `readable_data`."""
    if kwargs.get("validation_data") is not None:
        kwargs = {**kwargs, "validation_data": readable_data(kwargs["validation_data"])}
    data = args[0] if args else kwargs.get("x")
    x = readable_data(data)
    if x is data:
        return args, kwargs
    return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "x": x})
