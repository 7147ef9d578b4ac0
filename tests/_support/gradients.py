"""Gradients on whichever Keras backend the tests run, for checks against NumPy."""

import keras
import numpy as np
from keras import ops


def gradients(loss, *arrays, compiled=False):
    """Gradients of the scalar `loss(*tensors)` w.r.t. each of the NumPy `arrays`, as
    float64 NumPy arrays (zeros for an input the loss does not use), computed by the
    current backend's autodiff; `compiled=True` differentiates inside a `tf.function`
    on TensorFlow and under `jax.jit` on JAX, as a compiled train step does (PyTorch's
    step is eager)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def tape_gradients(*tensors):
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                value = loss(*tensors)
            return tape.gradient(value, list(tensors))

        if compiled:
            tape_gradients = tf.function(tape_gradients)
        grads = tape_gradients(*[tf.constant(a) for a in arrays])
    elif backend == "jax":
        import jax

        grad_fn = jax.grad(loss, argnums=tuple(range(len(arrays))))
        grads = (jax.jit(grad_fn) if compiled else grad_fn)(*arrays)
    else:
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        loss(*tensors).backward()
        grads = [t.grad for t in tensors]
    return [
        np.zeros(np.shape(a)) if g is None else np.asarray(ops.convert_to_numpy(g), np.float64)
        for a, g in zip(arrays, grads, strict=True)
    ]
