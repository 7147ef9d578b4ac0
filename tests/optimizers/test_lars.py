import keras
import numpy as np
import pytest

from keras_ssl.optimizers import LARS


def _reference_lars(w, v, g, lr, momentum, weight_decay, eta, excluded, nesterov=False):
    """You et al. 2017 / SimCLR reference LARS, one step, float64."""
    w, v, g = (np.asarray(a, np.float64) for a in (w, v, g))
    ratio = 1.0
    if not excluded:
        g = g + weight_decay * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if w_norm > 0 and g_norm > 0:
            ratio = eta * w_norm / g_norm
    v = momentum * v + lr * ratio * g
    update = momentum * v + lr * ratio * g if nesterov else v
    return w - update, v


@pytest.mark.parametrize("nesterov", [False, True])
def test_matches_reference_over_three_steps(nesterov):
    rng = np.random.default_rng(0)
    kernel0 = rng.normal(size=(4, 3)).astype("float32")
    bias0 = rng.normal(size=(3,)).astype("float32")
    kernel = keras.Variable(kernel0)
    bias = keras.Variable(bias0)
    optimizer = LARS(
        learning_rate=0.5, momentum=0.9, weight_decay=1e-2, eta=0.01, nesterov=nesterov
    )
    ref = {"k": (kernel0, np.zeros_like(kernel0)), "b": (bias0, np.zeros_like(bias0))}
    for _ in range(3):
        g_kernel = rng.normal(size=(4, 3)).astype("float32")
        g_bias = rng.normal(size=(3,)).astype("float32")
        optimizer.apply([g_kernel, g_bias], [kernel, bias])
        ref["k"] = _reference_lars(*ref["k"], g_kernel, 0.5, 0.9, 1e-2, 0.01, False, nesterov)
        ref["b"] = _reference_lars(*ref["b"], g_bias, 0.5, 0.9, 1e-2, 0.01, True, nesterov)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(kernel), ref["k"][0], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), ref["b"][0], rtol=1e-5)


def test_zero_weight_uses_plain_learning_rate():
    weight = keras.Variable(np.zeros((2, 2), "float32"))
    optimizer = LARS(learning_rate=0.1, momentum=0.0, weight_decay=0.0)
    optimizer.apply([np.ones((2, 2), "float32")], [weight])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(weight), -0.1 * np.ones((2, 2)))


def test_config_round_trip_and_fit():
    optimizer = LARS(learning_rate=0.2, momentum=0.8, weight_decay=1e-5, eta=0.02, nesterov=True)
    restored = LARS.from_config(optimizer.get_config())
    for key in ("momentum", "eta", "nesterov", "exclude_bias_and_norm"):
        assert getattr(restored, key) == getattr(optimizer, key)
    assert restored.lars_weight_decay == 1e-5
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=restored, loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]], "float32")
    history = model.fit(x, y, epochs=20, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
