"""The distributed pieces with one replica: identities, and batch norm unchanged."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

import keras_ssl
from keras_ssl.distributed import DataParallelEngine, SyncBatchNormalization
from keras_ssl.distributed.sync_batchnorm import is_sync_batchnorm
from keras_ssl.ops import distributed
from tests._support.network import free_port


def test_collectives_are_identities_on_one_replica():
    x = ops.convert_to_tensor(np.arange(6, dtype="float32").reshape(3, 2))
    assert distributed.world_size() == 1
    assert distributed.replica_id() == 0
    # The very same tensor: no op is added on one device.
    for fn in (distributed.all_gather, distributed.all_reduce_sum, distributed.all_reduce_mean):
        assert fn(x) is x
    assert distributed.all_reduce_max(x) is x
    np.testing.assert_allclose(
        ops.convert_to_numpy(distributed.global_batch_mean(x)), [2.0, 3.0], rtol=1e-6
    )


def test_convert_sync_batchnorm_converts_every_batch_norm_and_keeps_outputs():
    model = keras_ssl.BYOL(
        keras_ssl.backbones.ConvNet(widths=(4, 8), input_channels=1),
        projection_dim=8,
        hidden_dim=8,
    )
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype("float32")
    before = ops.convert_to_numpy(model.backbone(images, training=True))
    norms = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    # backbone and teacher backbone (2 each), projector, teacher projector, predictor
    assert len(norms) == 2 + 2 + 1 + 1 + 1
    assert keras_ssl.distributed.convert_sync_batchnorm(model) is model
    assert all(is_sync_batchnorm(layer) for layer in norms)
    after = ops.convert_to_numpy(model.backbone(images, training=True))
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_converted_model_saves_as_a_plain_one(tmp_path):
    backbone = keras_ssl.backbones.ConvNet(widths=(4,), input_channels=1)
    keras_ssl.distributed.convert_sync_batchnorm(backbone)
    path = tmp_path / "backbone.keras"
    backbone.save(path)
    reloaded = keras.saving.load_model(path)
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(reloaded(images)), ops.convert_to_numpy(backbone(images)), atol=1e-6
    )


def test_sync_batchnorm_layer_is_batchnorm_on_one_replica(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    sync, plain = SyncBatchNormalization(), keras.layers.BatchNormalization()
    np.testing.assert_allclose(
        ops.convert_to_numpy(sync(x, training=True)),
        ops.convert_to_numpy(plain(x, training=True)),
        atol=1e-6,
    )
    inputs = keras.Input((5,))
    model = keras.Model(inputs, SyncBatchNormalization()(inputs))
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded.layers[-1], SyncBatchNormalization)


def test_engine_shards_and_batch_sizes():
    x = np.arange(10)
    torch_like = DataParallelEngine("torch", num_replicas=2, process_index=1, num_processes=2)
    np.testing.assert_array_equal(torch_like.shard(x), [5, 6, 7, 8, 9])
    assert [len(a) for a in torch_like.shard((x, x))] == [5, 5]
    assert torch_like.batch_size(64) == 32
    assert not torch_like.is_chief
    tf_like = DataParallelEngine("tensorflow", num_replicas=2)
    assert tf_like.shard(x) is x
    assert tf_like.batch_size(64) == 64
    with pytest.raises(ValueError, match="divisible"):
        tf_like.batch_size(63)


def test_tensorflow_chief_is_the_chief_task_or_else_worker_0():
    from types import SimpleNamespace

    from keras_ssl.distributed.engine import _tensorflow_is_chief

    def resolver(cluster, task_type, task_id):
        spec = SimpleNamespace(as_dict=lambda: cluster)
        return SimpleNamespace(cluster_spec=lambda: spec, task_type=task_type, task_id=task_id)

    with_chief = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert _tensorflow_is_chief(resolver(with_chief, "chief", 0))
    assert not _tensorflow_is_chief(resolver(with_chief, "worker", 0))
    workers = {"worker": ["b:1", "c:1"]}
    assert _tensorflow_is_chief(resolver(workers, "worker", 0))
    assert not _tensorflow_is_chief(resolver(workers, "worker", 1))
    assert _tensorflow_is_chief(None)  # MirroredStrategy: one process


_EXIT_CHECK = textwrap.dedent(
    """
    import atexit

    import torch.distributed as dist

    # Registered first, so it runs last: after every exit handler keras_ssl registers.
    atexit.register(lambda: print("group alive at exit:", dist.is_initialized()))

    import keras_ssl

    print(keras_ssl.distributed.data_parallel())
    """
)


def test_torch_process_group_is_destroyed_before_the_interpreter_exits():
    # gloo's threads can abort the process in interpreter finalisation if the group is
    # still alive ("terminate called without an active exception"); torchrun then fails
    # the whole run. The engine destroys the group it started in an exit handler.
    if keras.backend.backend() != "torch":
        pytest.skip("about torch.distributed's process group; the torch suite runs it")
    port = free_port()
    env = dict(
        os.environ,
        KERAS_BACKEND="torch",
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    result = subprocess.run(
        [sys.executable, "-c", _EXIT_CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_replicas=1" in result.stdout, result.stdout
    assert "group alive at exit: False" in result.stdout, result.stdout


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int32", "bool"])
def test_global_batch_mean_on_one_replica_is_ops_mean(dtype):
    # 257 rows: a count that bfloat16 cannot hold exactly.
    x = np.random.default_rng(0).normal(size=(257, 5)) * 3
    x = ops.convert_to_tensor(x > 0 if dtype == "bool" else x.astype("float32"))
    x = ops.cast(x, dtype)
    got = distributed.global_batch_mean(x)
    want = ops.mean(x, axis=0)
    assert str(got.dtype) == str(want.dtype)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(got, "float32")),
        ops.convert_to_numpy(ops.cast(want, "float32")),
        rtol=1e-6 if dtype == "float32" else 1e-2,
    )
