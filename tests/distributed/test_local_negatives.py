"""`gather_distributed=False` keeps a loss to each device's samples under JAX's
`DataParallel`, where one program sees the whole global batch.

On TensorFlow and PyTorch every replica's step sees its own shard only, so the loss is
local by construction; on JAX the ops mask the pairs across devices. The JAX run needs
its 2 virtual devices before JAX starts, so it runs in a subprocess.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_ssl.ops import distributed, koleo_loss, nt_xent_loss

ROOT = pathlib.Path(__file__).parent.parent.parent


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _nt_xent(z_a, z_b, temperature):
    """Chen et al. 2020, eq. 1: mean over the 2N anchors of -log softmax of the positive."""
    z = _unit(np.concatenate([z_a, z_b]))
    logits = z @ z.T / temperature
    np.fill_diagonal(logits, -np.inf)
    n = len(z_a)
    positives = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(2 * n), positives].mean()


def _koleo(x, eps=1e-8):
    """Sablayrolles et al. 2019: -mean log of the distance to the nearest other point."""
    x = _unit(x)
    distances = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return -np.log(distances.min(axis=1) + eps).mean()


def _batch(n=8, dim=16):
    rng = np.random.default_rng(0)
    z_a = rng.normal(size=(n, dim)).astype("float32")
    return z_a, (z_a + 0.5 * rng.normal(size=(n, dim))).astype("float32")


def test_one_device_has_no_shards_and_both_settings_agree():
    z_a, z_b = _batch()
    assert distributed.batch_shard_ids(8) is None
    for gather in (True, False):
        got = float(nt_xent_loss(z_a, z_b, 0.5, gather_distributed=gather))
        np.testing.assert_allclose(got, _nt_xent(z_a, z_b, 0.5), rtol=1e-5)
        got = float(koleo_loss(z_a, gather_distributed=gather))
        np.testing.assert_allclose(got, _koleo(z_a), rtol=1e-5)


_JAX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from keras_ssl.distributed import _jax
    from keras_ssl.ops import distributed, koleo_loss, nt_xent_loss

    _jax.start(2)
    z_a, z_b = (np.asarray(v, "float32") for v in json.loads(sys.stdin.read()))
    out = {"ids": np.asarray(distributed.batch_shard_ids(8)).tolist()}
    for gather in (True, False):
        nt_xent = jax.jit(lambda a, b: nt_xent_loss(a, b, 0.5, gather_distributed=gather))
        koleo = jax.jit(lambda x: koleo_loss(x, gather_distributed=gather))
        out[f"nt_xent_{gather}"] = float(nt_xent(z_a, z_b))
        out[f"koleo_{gather}"] = float(koleo(z_a))
    try:
        distributed.batch_shard_ids(6, min_per_device=4)
    except ValueError as error:
        out["error"] = str(error)
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="about JAX's DataParallel")
def test_jax_data_parallel_keeps_to_each_device():
    z_a, z_b = _batch()
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT],
        input=json.dumps([z_a.tolist(), z_b.tolist()]),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ids"] == [0, 0, 0, 0, 1, 1, 1, 1]  # contiguous blocks of the batch
    halves = (slice(0, 4), slice(4, 8))
    local_nt_xent = np.mean([_nt_xent(z_a[h], z_b[h], 0.5) for h in halves])
    local_koleo = np.mean([_koleo(z_a[h]) for h in halves])
    np.testing.assert_allclose(out["nt_xent_False"], local_nt_xent, rtol=1e-5)
    np.testing.assert_allclose(out["koleo_False"], local_koleo, rtol=1e-5)
    # Gathering: the global batch's loss, as on one device.
    np.testing.assert_allclose(out["nt_xent_True"], _nt_xent(z_a, z_b, 0.5), rtol=1e-5)
    np.testing.assert_allclose(out["koleo_True"], _koleo(z_a), rtol=1e-5)
    assert not np.isclose(local_nt_xent, _nt_xent(z_a, z_b, 0.5), rtol=1e-3)
    assert not np.isclose(local_koleo, _koleo(z_a), rtol=1e-3)
    assert "multiple of 2, at least 8" in out["error"]
