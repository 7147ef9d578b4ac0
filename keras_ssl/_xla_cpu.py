"""XLA:CPU's library fusions, set for JAX before its first computation.

jaxlib 0.10 hands every convolution to YNNPACK, which runs it on one thread, and
XLA's own emitters turn large reductions (batch-norm statistics) into slow
`reduce-window` trees unless YNNPACK takes them. Keeping YNNPACK for reductions only
(`--xla_cpu_experimental_ynn_fusion_type=reduce`) lets the convolutions run on all
cores in XLA's Eigen kernels: 2.4x the images/s of a ResNet-18 SimCLR step on a 2-core
CPU (`tools/benchmark_speed.py`). The flag is CPU-only; GPU programs are unchanged.

It is added to `XLA_FLAGS` at `import keras_ssl` when all of these hold: the backend is
JAX, the jaxlib is a version this was measured on (an unknown XLA flag aborts the
process), JAX has not started its backends yet (flags are read once), the user's
`XLA_FLAGS` does not set the flag already, and `KERAS_SSL_XLA_CPU_DEFAULTS` is not
`0`. Where JAX had already started on the CPU, a warning says how to get it.
"""

import os
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
VALUE = "reduce"
_MEASURED_JAXLIB = ((0, 10),)


def _jaxlib_version():
    try:
        import jaxlib

        return tuple(int(part) for part in jaxlib.__version__.split(".")[:2])
    except (ImportError, ValueError, AttributeError):
        return None


def _backends_started():
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)
    except (ImportError, AttributeError):
        return True  # cannot tell: leave the flags alone


def configure(environ=os.environ):
    """Adds `FLAG=VALUE` to `environ["XLA_FLAGS"]` where it helps and is safe; returns
    whether it did."""
    if environ.get("KERAS_SSL_XLA_CPU_DEFAULTS", "1") == "0":
        return False
    flags = environ.get("XLA_FLAGS", "")
    if FLAG in flags or _jaxlib_version() not in _MEASURED_JAXLIB:
        return False
    if _backends_started():
        if _default_backend() == "cpu":
            warnings.warn(
                "keras_ssl was imported after JAX started, so XLA:CPU keeps running every "
                "convolution on one thread (about 2.4x slower training). Import keras_ssl "
                "before any JAX computation (before keras.utils.set_random_seed, for one), or "
                f"start Python with XLA_FLAGS={FLAG}={VALUE}. "
                "KERAS_SSL_XLA_CPU_DEFAULTS=0 silences this.",
                stacklevel=3,
            )
        return False
    environ["XLA_FLAGS"] = f"{flags} {FLAG}={VALUE}".strip()
    return True


def on_xla_cpu():
    """Whether Keras computes with JAX on the CPU, where some ops take faster forms."""
    import keras

    return keras.backend.backend() == "jax" and _default_backend() == "cpu"


def sum_over_rows(x):
    """`ops.sum(x, axis=0)`. On XLA:CPU, for floating `x` of rank 2 or more, computed as a
    product with a row of ones: XLA:CPU reduces over a leading axis at 100-150 M elements/s
    (DINO's centre, the batch mean of 128 x 65,536 teacher logits: 58 ms, against 1.0 ms as
    a product; the DINO head's column norms of its 256 x 65,536 prototypes likewise)."""
    from keras import ops

    x = ops.convert_to_tensor(x)
    dtype = str(x.dtype)
    if not on_xla_cpu() or "float" not in dtype or len(x.shape) < 2 or None in x.shape:
        return ops.sum(x, axis=0)
    rows = ops.reshape(x, (x.shape[0], -1))
    total = ops.matmul(ops.ones((1, x.shape[0]), dtype), rows)
    return ops.reshape(total, x.shape[1:])


def _default_backend():
    try:
        import jax

        return jax.default_backend()
    except Exception:  # noqa: BLE001 - a warning must never break the import
        return None
