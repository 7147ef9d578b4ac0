"""Linear probe against a NumPy logistic-regression reference; the DINO feature protocols."""

import keras
import numpy as np
import pytest

from keras_ssl.backbones import ConvNet, ViT
from keras_ssl.eval import (
    feature_model,
    linear_probe,
    linear_probe_backbone,
    vit_block_tokens,
    vit_probe_model,
)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_full_batch_sgd_probe_matches_numpy_gradient_descent():
    """Softmax regression by plain gradient descent on standardised features, in NumPy."""
    rng = np.random.default_rng(0)
    n, d, c, lr, steps = 96, 6, 3, 0.5, 12
    y = rng.integers(0, c, size=n)
    x = (rng.normal(size=(n, d)) + 1.5 * np.eye(c, d)[y]) * 3.0 + 1.0
    result = linear_probe(
        x, y, x[:40], y[:40], epochs=steps, batch_size=n, seed=7,
        optimizer=keras.optimizers.SGD(learning_rate=lr),
    )  # fmt: skip

    # reference: the same initial weights (GlorotUniform(seed=7), zero bias)
    w = np.asarray(keras.initializers.GlorotUniform(seed=7)((d, c)), dtype="float64")
    b = np.zeros(c)
    mean, std = x.mean(axis=0), x.std(axis=0)
    xs = (x - mean) / std
    onehot = np.eye(c)[y]
    for _ in range(steps):
        grad = (_softmax(xs @ w + b) - onehot) / n  # d mean(CE) / d logits
        w, b = w - lr * xs.T @ grad, b - lr * grad.sum(axis=0)

    kernel, bias = result.head.get_layer("classifier").get_weights()
    np.testing.assert_allclose(kernel, w, atol=2e-4)
    np.testing.assert_allclose(bias, b, atol=2e-4)
    probs = _softmax(((x[:40] - mean) / std) @ w + b)
    np.testing.assert_allclose(result.head.predict(x[:40], verbose=0), probs, atol=2e-4)
    assert result.top1 == pytest.approx(np.mean(probs.argmax(axis=1) == y[:40]))


def test_sgd_probe_weight_decay_is_torch_sgds_coupled_l2():
    """optimizer="sgd": momentum 0.9 and weight decay as torch.optim.SGD applies them."""
    rng = np.random.default_rng(1)
    n, d, c, lr, wd, steps = 64, 5, 3, 0.2, 0.3, 10
    y = rng.integers(0, c, size=n)
    x = rng.normal(size=(n, d)) + 2.0 * np.eye(c, d)[y]
    result = linear_probe(
        x, y, x, y, epochs=steps, batch_size=n, seed=3, learning_rate=lr,
        weight_decay=wd, optimizer="sgd", standardize=False,
    )  # fmt: skip

    w = np.asarray(keras.initializers.GlorotUniform(seed=3)((d, c)), dtype="float64")
    b = np.zeros(c)
    buf_w, buf_b = np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(c)[y]
    for _ in range(steps):  # torch: g += wd * p; buf = 0.9 * buf + g; p -= lr * buf
        grad = (_softmax(x @ w + b) - onehot) / n
        buf_w = 0.9 * buf_w + x.T @ grad + wd * w
        buf_b = 0.9 * buf_b + grad.sum(axis=0) + wd * b
        w, b = w - lr * buf_w, b - lr * buf_b

    kernel, bias = result.head.get_layer("classifier").get_weights()
    np.testing.assert_allclose(kernel, w, atol=2e-4)
    np.testing.assert_allclose(bias, b, atol=2e-4)


def _vit(depth, **kwargs):
    return ViT(patch_size=4, hidden_dim=16, depth=depth, num_heads=2, input_channels=1,
               pretrain_image_size=16, **kwargs)  # fmt: skip


@pytest.mark.parametrize("size", [(16, 16), (19, 16)])  # both give the 4 x 4 pretrain grid
def test_vit_block_tokens_equal_a_shallower_vit_with_the_same_weights(size):
    images = np.random.default_rng(0).random((3, *size, 1)).astype("float32")
    deep, shallow = _vit(3, num_register_tokens=1), _vit(1, num_register_tokens=1)
    for layer in shallow.layers:
        if layer.weights:
            layer.set_weights(deep.get_layer(layer.name).get_weights())
    first, last = vit_block_tokens(deep, images, [0, -1])
    expected_first = shallow.forward_features(images)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first[:, 0]),
        keras.ops.convert_to_numpy(expected_first["cls"]),
        atol=1e-5,
    )
    full = deep.forward_features(images)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(last[:, 2:]),
        keras.ops.convert_to_numpy(full["patches"]),
        atol=1e-5,
    )


def test_dino_protocols_concatenate_cls_of_last_blocks_and_pooled_patches():
    images = np.random.default_rng(1).random((2, 16, 16, 1)).astype("float32")
    vit = _vit(3, num_register_tokens=2)
    model = vit_probe_model(vit, n_last_blocks=2, avgpool_patch_tokens=True)
    out = model.predict(images, verbose=0)
    assert out.shape == (2, 16 * 3)
    tokens = vit_block_tokens(vit, images, [1, 2])
    full = vit.forward_features(images)
    np.testing.assert_allclose(out[:, :16], keras.ops.convert_to_numpy(tokens[0][:, 0]), atol=1e-5)
    np.testing.assert_allclose(out[:, 16:32], keras.ops.convert_to_numpy(full["cls"]), atol=1e-5)
    pooled = keras.ops.convert_to_numpy(full["patches"]).mean(axis=1)  # registers excluded
    np.testing.assert_allclose(out[:, 32:], pooled, atol=1e-5)
    assert feature_model(vit, "last_blocks_cls", 3).output_shape == (None, 48)
    with pytest.raises(ValueError, match="n_last_blocks"):
        vit_probe_model(vit, n_last_blocks=4)
    with pytest.raises(TypeError, match="ViT"):
        feature_model(ConvNet(widths=(4,), input_channels=1), "cls_avgpool")
    with pytest.raises(ValueError, match="protocol"):
        feature_model(vit, "mean")


def test_linear_probe_backbone_returns_head_and_classifier():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=80)
    images = (rng.random((80, 16, 16, 1)) * 0.2 + 0.8 * y[:, None, None, None]).astype("float32")
    result = linear_probe_backbone(
        _vit(2), images[:60], y[:60], images[60:], y[60:],
        protocol="cls_avgpool", n_last_blocks=2, epochs=3, batch_size=32,
    )  # fmt: skip
    assert result.protocol == "cls_avgpool" and 0.0 <= result.top1 <= 1.0
    assert result.head.input_shape == (None, 48)
    probs = result.classifier().predict(images[60:], verbose=0)
    assert probs.shape == (20, 2)
    assert np.mean(probs.argmax(axis=1) == y[60:]) == pytest.approx(result.top1)
    with pytest.raises(ValueError, match="feature model"):
        linear_probe(np.ones((4, 2)), [0, 1, 0, 1], np.ones((2, 2)), [0, 1], epochs=1).classifier()
