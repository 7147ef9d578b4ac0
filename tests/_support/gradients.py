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


def numeric_gradients(reference, *arrays, step=1e-6):
    """Central finite differences, in float64, of the scalar NumPy function
    `reference(*arrays)` w.r.t. each of the (small) `arrays`."""
    arrays = [np.asarray(a, np.float64) for a in arrays]
    grads = []
    for index, array in enumerate(arrays):
        grad = np.zeros_like(array)
        for position in np.ndindex(array.shape):
            shifted = [a.copy() for a in arrays]
            shifted[index][position] += step
            upper = reference(*shifted)
            shifted[index][position] -= 2 * step
            grad[position] = (upper - reference(*shifted)) / (2 * step)
        grads.append(grad)
    return grads


def assert_gradients_close(got, expected):
    """Each gradient within 1e-3 of its reference, relative to its largest entry (float32
    autodiff against float64 finite differences; a dropped or extra term is off by far more)."""
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-3 * np.max(np.abs(e)))
