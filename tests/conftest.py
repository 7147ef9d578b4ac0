"""Shared test set-up: one backend per pytest run (``KERAS_BACKEND``), quiet and deterministic."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


def pytest_configure(config):
    if keras.backend.backend() == "torch":
        import torch

        # Parallel test workers share 2 cores: torch's default thread count stalls them.
        torch.set_num_threads(int(os.environ.get("KERAS_SSL_TORCH_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed_everything():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.backend.clear_session()
