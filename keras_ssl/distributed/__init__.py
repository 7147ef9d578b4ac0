"""Data-parallel training on each backend's own engine.

`data_parallel()` starts it (JAX `DataParallel`, `tf.distribute` strategies, `torchrun`
processes); `convert_sync_batchnorm` makes batch norm use the global batch; the
cross-replica collectives for method code are in `keras_ssl.ops.distributed`. The
backend-specific code is `_jax.py`, `_tensorflow.py` and `_torch.py`, nothing else.
"""

from keras_ssl.distributed.engine import DataParallelEngine, data_parallel
from keras_ssl.distributed.sync_batchnorm import SyncBatchNormalization, convert_sync_batchnorm

__all__ = [
    "DataParallelEngine",
    "SyncBatchNormalization",
    "convert_sync_batchnorm",
    "data_parallel",
]
