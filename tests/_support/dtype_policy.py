"""Keras's global dtype policy, set for a block and put back after it."""

import contextlib

import keras


@contextlib.contextmanager
def global_dtype_policy(policy):
    """Layers and models built inside the block take `policy` (e.g. "mixed_float16");
    the previous global policy is restored on exit, also when the block raises."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
