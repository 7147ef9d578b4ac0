"""Shared test set-up: one backend per pytest run (``KERAS_BACKEND``), quiet and deterministic."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite compiles thousands of tiny programs, each once, and compiling is most of the JAX
# suite's time: tests/methods took 112 s, and 25 s with every program already in a persistent
# compilation cache. On these tiny models LLVM's optimisation passes cost more compile time
# than they save at run time: without its expensive passes and at optimisation level 0,
# tests/methods takes 65 s (the whole JAX suite 667-867 s, against 740-1035 s before, on a
# machine whose pace drifts). Subprocesses that the tests start inherit the flags; users'
# programs keep XLA's defaults.
from tests._support.xla import with_fast_compile  # noqa: E402

if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS", ""))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


def pytest_configure(config):
    if keras.backend.backend() == "torch":
        import torch

        # Parallel test workers share the cores: torch's default thread count stalls them.
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True)
def _seed_everything():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    # Fresh layer names and graphs for each test, without clear_session's gc.collect(): at
    # ~0.8 s a test it was about a third of the TF and JAX suites (tests/ops, layers and
    # backbones: 78 -> 43 s on TF, 228 -> 154 s on JAX). Python's own collector still runs.
    keras.backend.clear_session(free_memory=False)
