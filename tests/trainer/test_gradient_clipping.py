"""`clipnorm` in the train step, on every backend: each variable's gradient g is applied as
g * c / max(||g||_2, c) and the optimizer keeps its `clipnorm`. (PyTorch's step clips all
variables at once with `clip_each_by_norm`; TensorFlow and JAX run Keras's clipping.)"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_ssl
from keras_ssl.backbones import ConvNet
from tests._support.torch_counting import count_numbers_made_tensors
from tests._support.views import blocky_views


def _one_step(learning_rate, clipnorm=None):
    """Trainable weights after one SGD step (no momentum) from the same start and views."""
    keras.utils.set_random_seed(0)
    model = keras_ssl.SimCLR(ConvNet(widths=(4, 8), input_channels=1), projection_dim=8)
    optimizer = keras.optimizers.SGD(learning_rate, clipnorm=clipnorm)
    model.compile(optimizer=optimizer)
    model.train_on_batch(blocky_views(8))
    assert model.optimizer.clipnorm == clipnorm
    assert model.optimizer.get_config()["clipnorm"] == clipnorm
    return [ops.convert_to_numpy(v).astype("float64") for v in model.trainable_variables]


def test_each_gradient_is_clipped_to_the_clip_norm():
    start = _one_step(0.0)
    gradients = [w0 - w1 for w0, w1 in zip(start, _one_step(1.0), strict=True)]
    norms = np.array([np.linalg.norm(g) for g in gradients])
    c = float(np.median(norms[norms > 0]))  # about half the variables are clipped
    assert (norms > 1.01 * c).sum() >= 2 and ((norms > 0) & (norms < 0.99 * c)).sum() >= 2
    clipped = _one_step(1.0, clipnorm=c)
    for w0, g, w in zip(start, gradients, clipped, strict=True):
        expected = w0 - g * c / max(np.linalg.norm(g), c)
        np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)


def test_torch_clipping_makes_no_host_copies_per_variable():
    if keras.backend.backend() != "torch":
        pytest.skip("about PyTorch's eager step (on CUDA each such copy waits for the device)")

    def python_numbers_made_tensors(clipnorm):
        keras.utils.set_random_seed(0)
        model = keras_ssl.SimCLR(ConvNet(widths=(4, 8), input_channels=1), projection_dim=8)
        model.compile(optimizer=keras.optimizers.SGD(0.1, clipnorm=clipnorm))
        views = blocky_views(8)
        model.train_on_batch(views)
        with count_numbers_made_tensors() as count:
            model.train_on_batch(views)
        return count[0], len(model.trainable_variables)

    unclipped, variables = python_numbers_made_tensors(None)
    clipped, _ = python_numbers_made_tensors(1.0)
    assert variables > 10
    assert clipped == unclipped
