"""`BatchNormalization` whose training step is one fused kernel where the backend has one."""

import posixpath

import keras
from keras import ops

from keras_ssl.distributed.sync_batchnorm import is_sync_batchnorm
from keras_ssl.ops._multi_tensor import lerp_variables


def normalize_with_batch_statistics(x, gamma, beta, axis, epsilon):
    """Batch norm in training mode (Ioffe & Szegedy, 2015): returns `(y, mean, variance)`.

    With `mu` and `sigma^2` the mean and the biased variance of `x` over every axis but
    `axis`, `y = gamma * (x - mu) / sqrt(sigma^2 + epsilon) + beta`; the gradient flows
    through `mu` and `sigma^2` as in `keras.layers.BatchNormalization`.

    On PyTorch this is one `native_batch_norm` call (a single fused kernel forward and
    backward; a channels-last tensor is normalised in its own memory layout, without a
    copy); on TensorFlow, for channels-last images, one `FusedBatchNormV3`. Elsewhere (JAX,
    where XLA fuses the ops itself; TensorFlow for other layouts) it is `keras.ops.moments` and
    `keras.ops.batch_normalization`.

    `gamma` and `beta` are float32 (or `None`). A 16-bit `x` is normalised in float32 and
    `y` is rounded once to `x`'s dtype, as `keras.layers.BatchNormalization` does under
    mixed precision; the statistics are float32. The fused kernels take the 16-bit `x` as it
    is and compute in float32 inside, which spares a float32 copy of `x` and of `y` and
    their gradients (as `torch.autocast` runs batch norm). Forward + backward on the
    largest map of DINO's CIFAR ResNet-18 step, `(128, 32, 32, 64)` bfloat16, 2-core CPU
    (`tools/measure_mixed_precision_ops.py`): 77-80 against 33-46 ms on PyTorch, 32 against
    22 ms on TensorFlow.
    """
    x = ops.convert_to_tensor(x)
    axis = axis % len(x.shape)
    backend = keras.backend.backend()
    if backend == "torch":
        return _torch_normalize(x, gamma, beta, axis, epsilon)
    if backend == "tensorflow" and len(x.shape) == 4 and axis == 3:
        return _tensorflow_normalize(x, gamma, beta, axis, epsilon)
    dtype = x.dtype
    x = ops.cast(x, keras.backend.result_type(dtype, "float32"))
    axes = [i for i in range(len(x.shape)) if i != axis]
    mean, variance = ops.moments(x, axes=axes)
    y = ops.batch_normalization(x, mean, variance, axis, offset=beta, scale=gamma, epsilon=epsilon)
    return ops.cast(y, dtype), mean, variance


def _torch_normalize(x, gamma, beta, axis, epsilon):
    import torch

    # torch normalises over every axis but 1: move `axis` there (a view, no copy).
    order = [0, axis, *[i for i in range(1, len(x.shape)) if i != axis]]
    moved = x.permute(order) if axis != 1 else x
    gamma = None if gamma is None else ops.convert_to_tensor(gamma)
    beta = None if beta is None else ops.convert_to_tensor(beta)
    y, mean, inverse_std = torch.native_batch_norm(
        moved, gamma, beta, None, None, True, 0.0, epsilon
    )
    if axis != 1:
        y = y.permute([order.index(i) for i in range(len(order))])
    # native_batch_norm returns 1 / sqrt(sigma^2 + epsilon); sigma^2 (biased) from it.
    variance = torch.reciprocal(torch.square(inverse_std.detach())) - epsilon
    # The statistics feed the moving averages only: no gradient through them.
    return y, mean.detach(), variance


def _tensorflow_normalize(x, gamma, beta, axis, epsilon):
    import tensorflow as tf

    channels = x.shape[axis]
    # The statistics' dtype: float32 for 16-bit x (the op's `U`), else x's own.
    dtype = keras.backend.result_type(x.dtype, "float32")
    gamma = tf.ones([channels], dtype) if gamma is None else gamma
    beta = tf.zeros([channels], dtype) if beta is None else beta
    empty = tf.constant([], dtype)
    # The raw op: `tf.nn.fused_batch_norm` would raise epsilon to cuDNN's minimum 1.001e-5.
    y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=gamma,
        offset=beta,
        mean=empty,
        variance=empty,
        epsilon=epsilon,
        data_format="NHWC",  # its NCHW training kernel on CPU is not trusted here
        is_training=True,
    )
    # The op returns the unbiased variance (for moving averages); sigma^2 is the biased one.
    count = tf.cast(tf.size(x) // channels, dtype)
    variance = variance * (count - 1.0) / count
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance)


# Earlier keras_ssl builds named this layer `FusedBatchNormalization`: their weight files key
# it `fused_batch_normalization`, `fused_batch_normalization_1`, ...
_LEGACY_KEY_PREFIX = "fused_"


@keras.saving.register_keras_serializable(package="keras_ssl")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with the same weights, config and results, whose
    training-mode normalisation is one fused kernel on PyTorch, and on TensorFlow for
    channels-last images (see `normalize_with_batch_statistics`); the moving averages
    are updated as Keras does.

    Masks, renormalisation, `synchronized=True` and synchronised statistics
    (`keras_ssl.distributed.convert_sync_batchnorm`) take Keras's own path.

    It keeps Keras's class name, by which Keras's weight files key a model's layers
    (`batch_normalization`, `batch_normalization_1`, ...): files written with
    `keras.layers.BatchNormalization` load into models built with this layer and back.
    HDF5 weight files (`.weights.h5`, `.keras`) and configs from keras_ssl builds that
    named it `FusedBatchNormalization` (keys `fused_batch_normalization...`) load too,
    unless the same layer list also held Keras's own batch norms: their two key
    sequences cannot be told apart, which is an error.

    Example:

    >>> import numpy as np
    >>> layer = BatchNormalization(momentum=0.9, epsilon=1e-5)
    >>> layer(np.ones((4, 8, 8, 3), "float32"), training=True).shape
    (4, 8, 8, 3)
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or not self._fusable():
            return super().call(inputs, training=training, mask=mask)
        x = ops.convert_to_tensor(inputs)
        dtype = keras.backend.result_type(x.dtype, "float32")
        if keras.backend.standardize_dtype(x.dtype) not in ("float16", "bfloat16"):
            x = ops.cast(x, dtype)  # integers; 16-bit floats stay for the fused kernels
        gamma = ops.cast(self.gamma, dtype) if self.scale else None
        beta = ops.cast(self.beta, dtype) if self.center else None
        y, mean, variance = normalize_with_batch_statistics(x, gamma, beta, self.axis, self.epsilon)
        # moving <- momentum * moving + (1 - momentum) * statistic, as a lerp: on PyTorch one
        # multi-tensor kernel for both statistics instead of five ops and a copy each.
        lerp_variables(
            [self.moving_mean, self.moving_variance], [mean, variance], 1.0 - self.momentum
        )
        return ops.cast(y, self.compute_dtype)

    def load_own_variables(self, store):
        super().load_own_variables(_legacy_entry(store) or store)

    def _fusable(self):
        return not (self.renorm or self.synchronized or is_sync_batchnorm(self))


# Code and configs that use the earlier name get this class.
FusedBatchNormalization = BatchNormalization
keras.saving.get_custom_objects()["keras_ssl>FusedBatchNormalization"] = BatchNormalization


def _legacy_entry(store):
    """The entry of a file that keyed this layer `fused_batch_normalization...`, or None.

    Keras hands a layer the file's store positioned at the layer's path; an empty entry
    at `.../batch_normalization_3` is looked up at `.../fused_batch_normalization_3`.
    Raises where the layer list also holds Keras's own `batch_normalization...` entries
    next to `fused_...` ones: the two counters cannot be matched to today's one.
    """
    path = getattr(store, "_h5_entry_path", None)
    if not isinstance(path, str) or not hasattr(store, "has_path"):
        return None
    parent, leaf = posixpath.split(path)
    if not leaf.startswith("batch_normalization"):
        return None
    siblings = _group_keys(store, parent)
    if any(k.startswith(_LEGACY_KEY_PREFIX + "batch_normalization") for k in siblings) and any(
        k.startswith("batch_normalization") for k in siblings
    ):
        raise ValueError(
            f"The weights file keys the batch norms under {parent or 'its root'!r} both as "
            "`fused_batch_normalization...` (keras_ssl's layer under its earlier name) and as "
            "`batch_normalization...` (Keras's own): today both are `batch_normalization...`, "
            "so which weights belong to which layer cannot be told. Load the file into the "
            "model built by the keras_ssl version that wrote it, and copy the weights layer by "
            "layer by name (`get_layer(name).set_weights(...)`)."
        )
    if store.keys():
        return None
    legacy = posixpath.join(parent, _LEGACY_KEY_PREFIX + leaf)
    return store.get(legacy) if store.has_path(legacy) else None


def _group_keys(store, path):
    """The names under `path` in the store's HDF5 file; empty where it cannot tell."""
    try:
        group = store.h5_file[path] if path else store.h5_file
        return list(group.keys())
    except (AttributeError, KeyError, TypeError, ValueError):
        return []
