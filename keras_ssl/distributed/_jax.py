"""JAX: Keras's distribution API (`keras.distribution.DataParallel` on a device mesh).

Under `DataParallel`, Keras jits the whole train step over the *global* batch, sharded
across the devices (and across hosts with `jax.distributed`); XLA inserts the
collectives. Method code therefore already sees the global batch: a mean over the batch
is the global mean, the similarity matrix holds every negative, batch norm normalises
with the global statistics. There are no replicas to talk to, so the collectives of
`keras_ssl.ops.distributed` are identities here.
"""

import keras


def world_size():
    return 1


def replica_id():
    return 0


def batch_shards():
    """Devices the global batch is split over, in contiguous blocks, by the current
    distribution's batch axis (1 without a distribution)."""
    distribution = keras.distribution.distribution()
    name = getattr(distribution, "batch_dim_name", None)
    if name is None or name not in distribution.device_mesh.axis_names:
        return 1
    mesh = distribution.device_mesh
    return int(mesh.shape[mesh.axis_names.index(name)])


def start(num_devices=None):
    """Sets a global `keras.distribution.DataParallel` over the first `num_devices` devices."""
    devices = keras.distribution.list_devices()
    if num_devices is not None:
        if len(devices) < num_devices:
            raise ValueError(
                f"Asked for {num_devices} devices, JAX sees {len(devices)}: {devices}. On a "
                "CPU-only machine set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                "before JAX is imported (before `import keras`)."
            )
        devices = devices[:num_devices]
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return distribution
