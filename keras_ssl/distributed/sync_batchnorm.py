"""Batch normalisation with the statistics of the global batch, on every backend."""

import types

import keras
from keras import ops

import keras_ssl.ops.distributed as distributed_ops


def _global_moments(layer, inputs, mask):
    """Mean and variance over the reduction axes of the global batch (two-pass)."""
    axes = layer._reduction_axes
    if mask is None:
        weights = ops.ones_like(inputs[..., :1])
    else:
        weights = ops.cast(ops.expand_dims(mask, axis=-1), inputs.dtype)
    weights = ops.broadcast_to(weights, ops.shape(inputs))
    local_sum = ops.sum(inputs * weights, axis=axes)
    local_count = ops.sum(weights, axis=axes)
    totals = distributed_ops.all_reduce_sum(ops.stack([local_sum, local_count]))
    count = ops.maximum(totals[1], 1.0)
    mean = totals[0] / count
    shape = [1] * len(inputs.shape)
    shape[layer.axis] = -1
    centred = (inputs - ops.reshape(mean, shape)) * weights
    variance = distributed_ops.all_reduce_sum(ops.sum(ops.square(centred), axis=axes)) / count
    return mean, variance


def _sync_moments(layer, inputs, mask):
    if distributed_ops.world_size() == 1:
        return keras.layers.BatchNormalization._moments(layer, inputs, mask)
    return _global_moments(layer, inputs, mask)


@keras.saving.register_keras_serializable(package="keras_ssl")
class SyncBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training-mode statistics are those of the
    global batch across data-parallel replicas (Ioffe & Szegedy 2015 over all `B` samples;
    SimCLR, Chen et al. 2020, Sec. 2.3 "Global BN"; BYOL trains with it too).

    With `S = sum_r sum_i x_i` and `n = sum_r n_r` all-reduced over the replicas,

        mu = S / n,    sigma^2 = sum_r sum_i (x_i - mu)^2 / n

    and both all-reduces are differentiable, so the gradients equal those of one device
    normalising the whole batch. With one replica (and always on JAX, whose
    `DataParallel` program already normalises over the global batch) it is exactly
    `BatchNormalization`. Unlike `BatchNormalization(synchronized=True)` it works on
    TensorFlow and PyTorch, and its saved models load on every backend. For models
    already built with `BatchNormalization` use
    `keras_ssl.distributed.convert_sync_batchnorm`.

    Example:

    >>> import numpy as np
    >>> layer = SyncBatchNormalization()
    >>> layer(np.ones((4, 3), "float32"), training=True).shape
    (4, 3)
    """

    def _moments(self, inputs, mask):
        return _sync_moments(self, inputs, mask)


def convert_sync_batchnorm(model):
    """Makes every `keras.layers.BatchNormalization` in `model` normalise with the global
    batch's statistics in data-parallel training, in place; returns `model`.

    The layers keep their class, config and weights (a saved model is a plain one and
    loads anywhere); only their training-mode moments change, to those of
    `SyncBatchNormalization`. Not saved: call it again after loading a model to train it
    data-parallel. Call it once the model is built (for a method: after construction,
    so that its teacher copies are converted too) and before `fit`.

    Example:

    ```python
    import keras_ssl

    model = keras_ssl.SimCLR(keras_ssl.backbones.ResNet18())
    keras_ssl.distributed.convert_sync_batchnorm(model)
    ```
    """
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            # An instance attribute shadows the class's method; written into `__dict__`
            # so that Keras's attribute tracking leaves it alone.
            layer.__dict__["_moments"] = types.MethodType(_sync_moments, layer)
    return model


def is_sync_batchnorm(layer):
    """Whether `layer` normalises with the global batch's statistics."""
    return isinstance(layer, SyncBatchNormalization) or "_moments" in layer.__dict__
