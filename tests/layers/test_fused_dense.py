import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.layers.fused_dense import Dense
from tests._support.gradients import gradients
from tests._support.weight_files import assert_weight_files_interchange


def _pair(units=5, **kwargs):
    ours, theirs = Dense(units, **kwargs), keras.layers.Dense(units, **kwargs)
    for layer in (ours, theirs):
        layer.build((None, 4))
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=w.shape).astype("float32") for w in ours.weights]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (2, 1, 3, 4)])
@pytest.mark.parametrize("use_bias,activation", [(True, None), (True, "gelu"), (False, None)])
def test_equals_numpy_and_keras_dense(shape, use_bias, activation):
    ours, theirs = _pair(use_bias=use_bias, activation=activation)
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    got = ops.convert_to_numpy(ours(x))
    assert got.shape == (*shape[:-1], 5)
    np.testing.assert_allclose(got, ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-5)
    if activation is None:
        kernel, *bias = (w.astype(np.float64) for w in ours.get_weights())
        expected = x.astype(np.float64) @ kernel + (bias[0] if bias else 0.0)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_gradients_equal_the_closed_form():
    # y = x W + b, L = sum(y * R): dL/dx = R W^T, dL/dW = x^T R, dL/db = sum(R, rows).
    layer, _ = _pair()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    kernel, bias = layer.get_weights()
    r = rng.normal(size=(2, 3, 5))

    def loss(x, kernel, bias):
        with keras.StatelessScope(state_mapping=[(layer.kernel, kernel), (layer.bias, bias)]):
            return ops.sum(layer(x) * ops.convert_to_tensor(r, "float32"))

    dx, dkernel, dbias = gradients(loss, x, kernel, bias)
    rows, grads = x.reshape(-1, 4).astype(np.float64), r.reshape(-1, 5)
    np.testing.assert_allclose(dx, r @ kernel.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dkernel, rows.T @ grads, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dbias, grads.sum(axis=0), rtol=1e-5, atol=1e-5)


def test_mixed_precision_and_integer_inputs():
    ours, theirs = _pair(dtype="mixed_bfloat16")
    x = np.random.default_rng(4).normal(size=(3, 4)).astype("float32")
    y = ours(x)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    kernel, bias = (w.astype(np.float64) for w in ours.get_weights())
    y, expected = ops.convert_to_numpy(ops.cast(y, "float32")), x @ kernel + bias
    np.testing.assert_allclose(y, ops.convert_to_numpy(ops.cast(theirs(x), "float32")), atol=0.1)
    np.testing.assert_allclose(y, expected, rtol=0.03, atol=0.05)  # bfloat16: 8 bits
    ours, theirs = _pair()
    x = np.arange(8, dtype="int32").reshape(2, 4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-5
    )


def test_weight_files_interchange_with_keras_dense(tmp_path):
    def model(dense):
        inputs = keras.Input((4,))
        return keras.Model(inputs, dense(2)(dense(3)(inputs)))

    assert_weight_files_interchange(model, Dense, keras.layers.Dense, tmp_path, seed=3)


def test_config_round_trip():
    layer = Dense(4, activation="relu", name="d")
    assert type(layer).__name__ == "Dense"
    clone = Dense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, Dense)


def test_torch_adds_the_bias_inside_the_matrix_product(monkeypatch):
    if keras.backend.backend() != "torch":
        pytest.skip("the fused path is PyTorch's")
    import torch

    calls = []
    original = torch.addmm

    def spy(*args, **kwargs):
        calls.append(tuple(args[1].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", spy)
    ours, _ = _pair()
    ours(np.ones((2, 3, 4), "float32"))
    _pair(use_bias=False)[0](np.ones((2, 4), "float32"))
    assert calls == [(6, 4)]
