"""One data-parallel step on 2 replicas equals one single-device step on the global batch.

For SimCLR, MoCo-v2, BYOL, DINO and DINOv2: the loss, the gradients
the optimizer applies, the updated weights and the updated state (EMA teachers, MoCo's
queue and pointer, DINO's centre, batch-norm statistics) of one step with 2 replicas of
4 images equal those of one device with the 8 images. The engine is the suite's backend's own: JAX
`DataParallel` on 2 virtual host devices, TensorFlow `MirroredStrategy` on 2 logical
CPUs, PyTorch 2 gloo processes. Batch norm is `SyncBatchNormalization`, so the
comparison is exact. The work runs in subprocesses (`_parity_worker.py`): the devices
or processes must be set up before the backend starts.
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests._support.network import free_port

WORKER = pathlib.Path(__file__).with_name("_parity_worker.py")
ROOT = pathlib.Path(__file__).parent.parent.parent
METHODS = ("simclr", "mocov2", "byol", "dino", "dinov2")
TIMEOUT = 300


def _env(**extra):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _run_worker(out_dir):
    backend = keras.backend.backend()
    if backend == "torch":
        port = str(free_port())
        procs = []
        for rank in range(2):
            env = _env(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(out_dir), "single", "parallel"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        outputs = []
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT)
            outputs.append((proc.returncode, out))
        for code, out in outputs:
            assert code == 0, out[-4000:]
        return
    extra = {}
    if backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        extra["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out_dir), "single", "parallel"],
        env=_env(**extra),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("parity")
    _run_worker(out_dir)
    return {
        (mode, name): dict(np.load(out_dir / f"{mode}_{name}.npz"))
        for mode in ("single", "parallel", "parallel-rank1")
        for name in METHODS
        if (out_dir / f"{mode}_{name}.npz").exists()
    }


def _norm(x):
    return float(np.linalg.norm(np.asarray(x, "float64")))


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_one_step_on_two_replicas_equals_one_device(results, name):
    single = results["single", name]
    _assert_the_same_step(single, results["parallel", name])
    if keras.backend.backend() == "torch":
        # The second process started from other weights (the worker shifts them): fit's
        # copy of process 0's weights makes it take the same step.
        _assert_the_same_step(single, results["parallel-rank1", name])


def _assert_the_same_step(single, parallel):
    assert sorted(single) == sorted(parallel)
    np.testing.assert_allclose(parallel["loss"], single["loss"], rtol=1e-5)

    grads = [k for k in single if k.startswith("grad:")]
    total = np.sqrt(sum(_norm(single[k]) ** 2 for k in grads))
    error = np.sqrt(sum(_norm(single[k] - parallel[k]) ** 2 for k in grads))
    assert error <= 1e-5 * total, (error, total)
    for k in grads:
        # Per variable too, so that a wrong factor on a small variable cannot hide; the
        # floor covers gradients that are zero in exact arithmetic (a bias right before
        # batch norm), where float32 leaves noise of ~1e-8 of the total.
        diff = _norm(single[k] - parallel[k])
        assert diff <= 1e-4 * _norm(single[k]) + 1e-6 * total, (k, diff, _norm(single[k]))

    for k in single:
        if k.startswith(("weight:", "state:")):
            diff = _norm(single[k] - parallel[k])
            assert diff <= 1e-5 * _norm(single[k]) + 1e-6, (k, diff, _norm(single[k]))


@pytest.mark.slow
def test_the_step_changed_the_state(results):
    # Guards the comparison above against a step that did nothing in either run.
    for name in METHODS[:4]:
        single = results["single", name]
        assert any(k.startswith("state:") for k in single)
        grads = [single[k] for k in single if k.startswith("grad:")]
        assert all(np.isfinite(g).all() for g in grads)
        assert sum(_norm(g) for g in grads) > 0
    moco = results["single", "mocov2"]
    pointer = [v for k, v in moco.items() if k.endswith(":queue_pointer")]
    assert [int(p) for p in pointer] == [8]
