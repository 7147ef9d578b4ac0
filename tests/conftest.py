"""Shared test set-up: one backend per pytest run (``KERAS_BACKEND``), quiet and deterministic."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The suite compiles hundreds of tiny programs, each once: LLVM's expensive optimisation passes
# cost more compile time than they save at run time (a third of the JAX suite). Subprocesses
# that the tests start inherit the flag; users' programs keep XLA's defaults.
_FAST_COMPILE = "--xla_llvm_disable_expensive_passes=true"
_xla_flags = os.environ.get("XLA_FLAGS", "")
if os.environ.get("KERAS_BACKEND") == "jax" and _FAST_COMPILE not in _xla_flags:
    os.environ["XLA_FLAGS"] = f"{_xla_flags} {_FAST_COMPILE}".strip()

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
    keras.backend.clear_session()
