"""Gradients on whichever Keras backend the tests run, for checks against NumPy."""

import keras
import numpy as np
from keras import ops


def gradients(loss, *arrays):
    """Gradients of the scalar `loss(*tensors)` w.r.t. each of the NumPy `arrays`, as
    float64 NumPy arrays (zeros for an input the loss does not use), computed by the
    current backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = loss(*tensors)
        grads = tape.gradient(value, tensors)
    elif backend == "jax":
        import jax

        grads = jax.grad(loss, argnums=tuple(range(len(arrays))))(*arrays)
    else:
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        loss(*tensors).backward()
        grads = [t.grad for t in tensors]
    return [
        np.zeros(np.shape(a)) if g is None else np.asarray(ops.convert_to_numpy(g), np.float64)
        for a, g in zip(arrays, grads, strict=True)
    ]
