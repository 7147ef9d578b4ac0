"""Cross-replica collectives for method code, the same on every backend.

What a method needs to compute its loss over the *global* batch when each replica sees
a shard of it: the number of replicas, this replica's index, an all-gather through
which gradients flow back to the local shard, and all-reduces. The backend part lives
in `keras_ssl/distributed/_<backend>.py`:

- TensorFlow: the replica context of a `tf.distribute` strategy (`MirroredStrategy`,
  `MultiWorkerMirroredStrategy`); Keras runs the train step once per replica.
- PyTorch: `torch.distributed` (one process per device, started by `torchrun`).
- JAX: Keras's `DataParallel` jits one program over the global batch, so the code
  already sees every sample; `world_size()` is 1 and every collective is the identity.

With one replica every collective returns its input unchanged (a Python-level check,
no op is added), so single-device training runs exactly the code it runs without
this module; `global_batch_mean` is then the local mean.

Gradient convention (the contract the trainer relies on). Replica `r` computes the
mean loss `L_r` of its own samples, using the gathered tensors of all replicas; the
global loss is `L = 1/W sum_r L_r` (equal shards). `all_gather`'s backward pass sums
the gradients that every replica's loss sends to the local shard, so the gradient a
replica computes is `g_r = d(sum_r' L_r') / d(local parameters' path)`, and the
trainer averages: `1/W sum_r g_r = dL/dtheta`, the single-device gradient of the
global batch. (Returning only the local gradient from the gather, or summing instead
of averaging, are the 1/W and W bugs met in other libraries.)
"""

import keras
from keras import ops

from keras_ssl._xla_cpu import on_xla_cpu, sum_over_rows

_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    from keras_ssl.distributed import _tensorflow as _impl
elif _BACKEND == "torch":
    from keras_ssl.distributed import _torch as _impl
else:
    from keras_ssl.distributed import _jax as _impl


def world_size():
    """Number of replicas whose shards of the batch the current step sees separately.

    1 on one device and under JAX's `DataParallel` (one program over the global batch);
    the number of replicas in sync inside a `tf.distribute` step; the process-group
    size under `torch.distributed`.

    Example:

    >>> from keras_ssl.ops.distributed import world_size
    >>> world_size()
    1
    """
    return _impl.world_size()


def replica_id():
    """Index of this replica in `[0, world_size())` (an int, or a scalar tensor on TF)."""
    return _impl.replica_id()


def batch_shard_ids(batch_size, min_per_device=1):
    """`(batch_size,)` int32 index of the device each sample of the step's batch is on, or
    None when the step's program holds one device's samples only.

    Only JAX's `DataParallel` gives indices: there one program sees the whole global batch,
    split over the devices of the mesh's batch axis in contiguous blocks. On TensorFlow and
    PyTorch each replica runs its own step on its own shard (None). Losses with
    `gather_distributed=False` mask pairs across devices with it, to keep to one device's
    samples on every backend; they need `min_per_device` samples on each device.
    """
    shards = _impl.batch_shards()
    if shards == 1:
        return None
    if batch_size % shards or batch_size // shards < min_per_device:
        raise ValueError(
            f"A batch of {batch_size} does not split into {shards} equal shards of at least "
            f"{min_per_device} samples, one per device of the distribution's batch axis. "
            f"Use a batch size that is a multiple of {shards}, at least "
            f"{shards * min_per_device}."
        )
    return ops.arange(batch_size, dtype="int32") // (batch_size // shards)


def all_gather(x, axis=0):
    """Concatenates every replica's `x` along `axis`, in replica order.

    Differentiable: the gradient reaching the local shard is the sum over replicas of
    the gradients their losses send to it (see the module docstring). Every replica's
    `x` must have the same shape.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops.distributed import all_gather
    >>> all_gather(np.ones((2, 3), "float32")).shape  # one replica: unchanged
    (2, 3)
    """
    if world_size() == 1:
        return x
    return _impl.all_gather(ops.convert_to_tensor(x), axis)


def all_reduce_sum(x):
    """Element-wise sum of `x` over the replicas; differentiable (the gradient is summed)."""
    if world_size() == 1:
        return x
    return _impl.all_reduce_sum(ops.convert_to_tensor(x))


def all_reduce_mean(x):
    """Element-wise mean of `x` over the replicas; differentiable."""
    size = world_size()
    if size == 1:
        return x
    x = ops.convert_to_tensor(x)
    return _impl.all_reduce_sum(x) / ops.cast(size, x.dtype)


def all_reduce_max(x):
    """Element-wise maximum of `x` over the replicas (no gradient)."""
    if world_size() == 1:
        return x
    return _impl.all_reduce_max(ops.stop_gradient(ops.convert_to_tensor(x)))


def global_batch_mean(x, axis=0):
    """Mean of `x` over `axis` of the global batch (the shards may differ in size).

    `sum over replicas of the local sums / sum over replicas of the local counts`;
    the local mean with one replica (over axis 0 on XLA:CPU, a product with ones).
    Differentiable.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops.distributed import global_batch_mean
    >>> [float(v) for v in global_batch_mean(np.array([[1.0, 2.0], [3.0, 4.0]]))]
    [2.0, 3.0]
    """
    x = ops.convert_to_tensor(x)
    if world_size() == 1:
        if axis == 0 and str(x.dtype) == "float32" and on_xla_cpu():
            # A product with ones, much faster there (see `sum_over_rows`).
            return sum_over_rows(x) / ops.cast(ops.shape(x)[0], x.dtype)
        return ops.mean(x, axis=axis)
    local_sum = ops.sum(x, axis=axis)
    shape = tuple(local_sum.shape)
    count = ops.ones((1,), x.dtype) * ops.cast(ops.shape(x)[axis], x.dtype)
    total = all_reduce_sum(ops.concatenate([ops.reshape(local_sum, (-1,)), count], axis=0))
    return ops.reshape(total[:-1] / total[-1], shape)
