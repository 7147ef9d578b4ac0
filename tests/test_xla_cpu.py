"""keras_ssl's XLA:CPU flag for JAX: added only where measured, never over the user's."""

import keras
import pytest

from keras_ssl import _xla_cpu

SETTING = f"{_xla_cpu.FLAG}={_xla_cpu.VALUE}"


@pytest.fixture
def measured(monkeypatch):
    """A jaxlib version the flag was measured on, whose backends have not started."""
    monkeypatch.setattr(_xla_cpu, "_jaxlib_version", lambda: _xla_cpu._MEASURED_JAXLIB[0])
    monkeypatch.setattr(_xla_cpu, "_backends_started", lambda: False)


def test_adds_the_flag_after_the_users_flags(measured):
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert _xla_cpu.configure(environ)
    assert environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {SETTING}"
    empty = {}
    assert _xla_cpu.configure(empty)
    assert empty["XLA_FLAGS"] == SETTING


def test_leaves_a_users_own_setting_and_the_opt_out(measured):
    own = {"XLA_FLAGS": f"{_xla_cpu.FLAG}=individual_convolution"}
    assert not _xla_cpu.configure(own)
    assert own["XLA_FLAGS"] == f"{_xla_cpu.FLAG}=individual_convolution"
    opted_out = {"KERAS_SSL_XLA_CPU_DEFAULTS": "0"}
    assert not _xla_cpu.configure(opted_out)
    assert "XLA_FLAGS" not in opted_out


def test_unmeasured_jaxlib_or_started_gpu_backends_are_left_alone(monkeypatch):
    monkeypatch.setattr(_xla_cpu, "_backends_started", lambda: False)
    for version in [(0, 9), (0, 11), None]:  # an unknown flag would abort the process
        monkeypatch.setattr(_xla_cpu, "_jaxlib_version", lambda v=version: v)
        environ = {}
        assert not _xla_cpu.configure(environ) and "XLA_FLAGS" not in environ
    monkeypatch.setattr(_xla_cpu, "_jaxlib_version", lambda: _xla_cpu._MEASURED_JAXLIB[0])
    monkeypatch.setattr(_xla_cpu, "_backends_started", lambda: True)
    monkeypatch.setattr(_xla_cpu, "_default_backend", lambda: "gpu")
    environ = {}
    assert not _xla_cpu.configure(environ) and "XLA_FLAGS" not in environ


def test_warns_when_imported_too_late_on_cpu(monkeypatch):
    monkeypatch.setattr(_xla_cpu, "_jaxlib_version", lambda: _xla_cpu._MEASURED_JAXLIB[0])
    monkeypatch.setattr(_xla_cpu, "_backends_started", lambda: True)
    monkeypatch.setattr(_xla_cpu, "_default_backend", lambda: "cpu")
    environ = {}
    with pytest.warns(UserWarning, match="Import keras_ssl before any JAX computation"):
        assert not _xla_cpu.configure(environ)
    assert "XLA_FLAGS" not in environ


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the flag is set on JAX only")
def test_import_sets_it_on_jax_when_measured():
    import os

    if _xla_cpu._jaxlib_version() not in _xla_cpu._MEASURED_JAXLIB:
        pytest.skip("this jaxlib was not measured")
    if os.environ.get("KERAS_SSL_XLA_CPU_DEFAULTS") == "0":
        pytest.skip("opted out")
    assert _xla_cpu.FLAG in os.environ.get("XLA_FLAGS", "")


@pytest.mark.parametrize("shape", [(6,), (7, 3), (5, 4, 3)])
@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_sum_over_rows_is_the_sum_over_axis_0(shape, dtype):
    import numpy as np

    x = np.random.default_rng(0).normal(size=shape) * 10
    x = x.astype(dtype)
    got = keras.ops.convert_to_numpy(_xla_cpu.sum_over_rows(x))
    assert got.shape == shape[1:]
    assert str(got.dtype) == dtype
    np.testing.assert_allclose(got, x.sum(axis=0, dtype=dtype), rtol=1e-6, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the product form is XLA:CPU's")
def test_sum_over_rows_is_a_product_with_ones_on_xla_cpu():
    import jax
    import numpy as np

    program = str(jax.make_jaxpr(_xla_cpu.sum_over_rows)(np.ones((4, 3), "float32")))
    if jax.default_backend() == "cpu":
        assert "dot_general" in program and "reduce_sum" not in program
    else:
        assert "reduce_sum" in program
