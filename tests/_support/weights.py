"""Non-trivial weights for round-trip and parity tests of convolutional backbones."""

import keras
import numpy as np


def perturb_weights(model, seed=0):
    """Every weight scaled by U(0.5, 1.5) and shifted by a small positive amount, so
    kernels, biases and batch-norm statistics all differ from their initial values while
    moving variances stay positive. Returns `model`."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        w = keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(variable))
        variable.assign(
            w * rng.uniform(0.5, 1.5, w.shape) + 0.05 * np.abs(rng.normal(size=w.shape))
        )
    return model
