"""tf.distribute: the collectives of a replica context and the strategies' start-up.

Keras runs `train_step` once per replica inside `strategy.run`, so the step sees its
replica's shard of the global batch and talks to the other replicas through the
replica context. `ReplicaContext.all_gather` and `.all_reduce` are differentiable: the
gradient of an all-gather is the all-reduced (summed) gradient sliced at the local
shard, the gradient of an all-sum is an all-sum.
"""

import contextlib
import json
import os

import tensorflow as tf


def _context():
    """The replica context of a step running on more than one replica, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def batch_shards():
    """1: each replica's step sees its own shard of the batch only."""
    return 1


def world_size():
    context = _context()
    return 1 if context is None else context.num_replicas_in_sync


def replica_id():
    context = _context()
    return 0 if context is None else context.replica_id_in_sync_group


def all_gather(x, axis):
    return _dense_gradient(_context().all_gather(x, axis=axis))


@tf.custom_gradient
def _dense_gradient(x):
    """Identity whose gradient is made dense: the all-gather's own gradient cannot take
    the `IndexedSlices` that a `take` / `gather` from the gathered tensor sends back."""

    def grad(upstream):
        return tf.convert_to_tensor(upstream)

    return tf.identity(x), grad


def all_reduce_sum(x):
    return _context().all_reduce(tf.distribute.ReduceOp.SUM, x)


def all_reduce_max(x):
    x = tf.stop_gradient(x)
    gathered = _context().all_gather(tf.expand_dims(x, 0), axis=0)
    return tf.reduce_max(gathered, axis=0)


def all_reduce_gradients(gradients):
    """Averages gradients over the replicas (one batched all-reduce); None stays None."""
    present = [tf.convert_to_tensor(g) for g in gradients if g is not None]
    if not present:
        return list(gradients)
    reduced = iter(_context().all_reduce(tf.distribute.ReduceOp.MEAN, present))
    return [None if g is None else next(reduced) for g in gradients]


@contextlib.contextmanager
def gradients_already_reduced(optimizer):
    """Stops a Keras optimizer from summing gradients over the replicas itself.

    Keras 3's TensorFlow optimizer clips the gradients (`clipnorm`, `clipvalue`,
    `global_clipnorm`) and only then sums them over the replicas, so each replica clips
    its partial gradient. The train step all-reduces first and the optimizer, inside
    this context, clips and applies the global gradient.
    """
    optimizers = [optimizer]
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        optimizers.append(inner)
    # An instance attribute shadows the method for the duration of `apply` (written into
    # `__dict__` directly: Keras's attribute tracking must not see it).
    for opt in optimizers:
        opt.__dict__["_all_reduce_sum_gradients"] = _unchanged
    try:
        yield
    finally:
        for opt in optimizers:
            opt.__dict__.pop("_all_reduce_sum_gradients", None)


def _unchanged(grads_and_vars):
    return grads_and_vars


def split_cpu(num_devices):
    """Splits the host CPU into `num_devices` logical devices (before TensorFlow starts).

    For trying data parallelism without accelerators (tests, CI, the guides).
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        # Listing logical devices would start them: try the split first.
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) >= num_devices:
            return
        raise RuntimeError(
            "TensorFlow has already started its devices; split the CPU before running any "
            "TensorFlow op (call keras_ssl.distributed.data_parallel(..., split_cpu=True) at "
            "the top of the script)."
        ) from error


def start(num_devices=None, split_cpu_devices=False):
    """`MultiWorkerMirroredStrategy` when `TF_CONFIG` names several workers, else
    `MirroredStrategy` over `num_devices` local devices (default: all GPUs, else the CPU)."""
    if "TF_CONFIG" in os.environ:
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
    if split_cpu_devices and num_devices:
        split_cpu(num_devices)
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if not devices:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if num_devices is not None:
        if len(devices) < num_devices:
            raise ValueError(
                f"Asked for {num_devices} devices, TensorFlow sees {len(devices)}: {devices}. "
                "On a CPU-only machine pass split_cpu=True to simulate them."
            )
        devices = devices[:num_devices]
    return tf.distribute.MirroredStrategy(devices)
