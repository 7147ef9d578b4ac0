"""`data_parallel()`: start the current backend's own data-parallel engine."""

import contextlib

import keras
import numpy as np


class DataParallelEngine:
    """The running engine: where to build the model, what each process feeds `fit`.

    Made by `keras_ssl.distributed.data_parallel`. Attributes:

    - `backend`: `"jax"`, `"tensorflow"` or `"torch"`.
    - `num_replicas`: replicas (devices) that share each global batch.
    - `process_index`, `num_processes`: this process among the processes feeding data
      (1 process on JAX/TF on one host; one per device with torch).
    - `is_chief`: whether this process should print, save and log (process 0).
    - `strategy` (TF), `distribution` (JAX): the underlying engine object.
    """

    def __init__(
        self, backend, num_replicas, process_index=0, num_processes=1, engine=None, chief=None
    ):
        self.backend = backend
        self.num_replicas = int(num_replicas)
        self.process_index = int(process_index)
        self.num_processes = int(num_processes)
        self.strategy = engine if backend == "tensorflow" else None
        self.distribution = engine if backend == "jax" else None
        self._chief = chief

    @property
    def is_chief(self):
        """Whether this process writes checkpoints, logs and results (one process does)."""
        return self.process_index == 0 if self._chief is None else self._chief

    def scope(self):
        """Context to create and compile the model in (the strategy scope on TF)."""
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    def batch_size(self, global_batch_size):
        """The `batch_size` this process passes to `fit` for a `global_batch_size`.

        TF's strategies and JAX on one host split the global batch themselves; torch
        processes (and JAX hosts) each feed `global_batch_size / num_processes`.
        """
        if global_batch_size % self.num_replicas:
            raise ValueError(
                f"The global batch ({global_batch_size}) must be divisible by the number of "
                f"replicas ({self.num_replicas}) so that every replica gets the same share."
            )
        if self.backend == "tensorflow":
            return global_batch_size
        return global_batch_size // self.num_processes

    def shard(self, data):
        """This process's share of in-memory data (an array or a tuple/list of arrays), or
        of a `keras_ssl.data.image_folder` data set.

        Arrays: contiguous, equal-sized blocks (the remainder dropped) so that every
        process runs the same number of steps; an image folder: every `num_processes`-th
        image of each epoch's order (`ImageFolderDataset.shard`). Unchanged with one
        process. `tf.data` pipelines and Keras's JAX data loading shard for you; a torch
        `DataLoader` takes a `DistributedSampler`.
        """
        if hasattr(data, "shard") and hasattr(data, "file_paths"):  # an ImageFolderDataset
            return data.shard(self.num_processes, self.process_index)
        if self.num_processes == 1:
            return data
        if not (isinstance(data, (tuple, list)) or hasattr(data, "shape")):
            raise TypeError(
                f"engine.shard takes arrays or an image_folder data set, got "
                f"{type(data).__name__}: shard it yourself (each process reading every "
                f"{self.num_processes}-th sample from index process_index), or use a torch "
                "DataLoader with a DistributedSampler."
            )
        if isinstance(data, (tuple, list)):
            return type(data)(self.shard(d) for d in data)
        size = len(data) // self.num_processes
        start = self.process_index * size
        return np.asarray(data)[start : start + size]

    def __repr__(self):
        return (
            f"DataParallelEngine(backend={self.backend!r}, num_replicas={self.num_replicas}, "
            f"process_index={self.process_index}, num_processes={self.num_processes})"
        )


def data_parallel(num_devices=None, split_cpu=False, torch_backend=None):
    """Starts data-parallel training on the current Keras backend's own engine.

    - JAX: `keras.distribution.DataParallel` over a 1-D mesh of `num_devices` devices
      (default: all), set as the global distribution; one process per host (for several
      hosts call `keras.distribution.initialize()` first). On a CPU-only machine, set
      `XLA_FLAGS=--xla_force_host_platform_device_count=N` before `import keras`.
    - TensorFlow: `tf.distribute.MultiWorkerMirroredStrategy` when `TF_CONFIG` names
      several workers, else `MirroredStrategy` over `num_devices` GPUs (or CPUs);
      `split_cpu=True` first splits the CPU into `num_devices` logical devices.
    - PyTorch: joins the `torch.distributed` process group described by `torchrun`'s
      environment (`torch_backend`: `"nccl"` with CUDA, else `"gloo"`); one process per
      device. The keras_ssl train step averages the gradients over the processes, and
      `fit` copies process 0's weights to the others first. A process group this call
      started is destroyed when the process exits.

    Build and compile the model inside `engine.scope()`, feed `fit` with
    `engine.shard(data)` and `batch_size=engine.batch_size(global_batch)`. Losses,
    negatives, MoCo's queue, DINO's centre and Sinkhorn-Knopp then cover the global
    batch, and one step equals a single-device step on the global batch.

    Example:

    ```python
    import keras_ssl
    from keras_ssl.datasets import fashion_mnist

    (x_train, _), _ = fashion_mnist.load_data("embedded")
    engine = keras_ssl.distributed.data_parallel()  # on PyTorch: under torchrun
    with engine.scope():
        model = keras_ssl.SimCLR(
            keras_ssl.backbones.ConvNet(widths=(16, 32), input_channels=1),
            augmenter=keras_ssl.augment.SimCLRAugment.small_images(28),
        )
        model.compile(optimizer="adamw")
    model.fit(engine.shard(x_train[:512]), batch_size=engine.batch_size(128), epochs=1)
    ```
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        from keras_ssl.distributed import _jax

        distribution = _jax.start(num_devices)
        num = int(np.prod(distribution.device_mesh.shape))
        return DataParallelEngine(
            "jax", num, jax.process_index(), jax.process_count(), distribution
        )
    if backend == "tensorflow":
        from keras_ssl.distributed import _tensorflow

        strategy = _tensorflow.start(num_devices, split_cpu_devices=split_cpu)
        resolver = getattr(strategy, "cluster_resolver", None)
        task = getattr(resolver, "task_id", None) or 0
        return DataParallelEngine(
            "tensorflow",
            strategy.num_replicas_in_sync,
            task,
            1,  # the strategy splits each batch over the workers itself
            strategy,
            chief=_tensorflow_is_chief(resolver),
        )
    if backend == "torch":
        import torch.distributed as dist

        from keras_ssl.distributed import _torch

        _torch.start(torch_backend)
        size = dist.get_world_size()
        if num_devices is not None and num_devices != size:
            raise ValueError(
                f"torchrun started {size} processes but num_devices={num_devices}; on PyTorch "
                "the number of devices is the number of processes (--nproc_per_node)."
            )
        return DataParallelEngine("torch", size, dist.get_rank(), size)
    raise ValueError(f"Unsupported Keras backend {backend!r}.")


def _tensorflow_is_chief(resolver):
    """TF_CONFIG's chief: the "chief" task if the cluster has one, else worker 0."""
    if resolver is None or getattr(resolver, "task_type", None) is None:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and (resolver.task_id or 0) == 0
