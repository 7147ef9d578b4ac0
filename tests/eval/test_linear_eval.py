import keras
import numpy as np
import pytest

from keras_ssl.eval import LinearProbeResult, extract_features, linear_probe
from tests._support.dtype_policy import global_dtype_policy


def _separable(rng, n, classes=4, dim=16):
    y = rng.integers(0, classes, size=n)
    x = rng.normal(size=(n, dim)) + 4.0 * np.eye(classes, dim)[y]
    return (x * 7.0 + 3.0).astype("float32"), y  # unstandardised scale and offset


def test_separable_features():
    rng = np.random.default_rng(0)
    x, y = _separable(rng, 500)
    result = linear_probe(
        x[:400], y[:400], x[400:], y[400:], epochs=20, batch_size=64, learning_rate=1e-2
    )
    assert isinstance(result, LinearProbeResult)
    assert result.top1 >= 0.95 and result.train_top1 >= 0.95
    assert result.num_classes == 4
    assert len(result.history["loss"]) == 20
    # the head standardises raw features itself and reproduces the reported accuracy
    probs = result.head.predict(x[400:], verbose=0)
    assert probs.shape == (100, 4)
    assert np.mean(np.argmax(probs, axis=-1) == y[400:]) == pytest.approx(result.top1)


def test_noise_is_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 16)).astype("float32")
    y = rng.integers(0, 4, size=600)
    result = linear_probe(
        x[:300],
        y[:300],
        x[300:],
        y[300:],
        epochs=15,
        batch_size=64,
        learning_rate=1e-2,
        optimizer="sgd",
    )
    assert 0.12 <= result.top1 <= 0.40  # chance is 0.25 with 300 test points


def test_a_seed_reproduces_the_fit():
    rng = np.random.default_rng(3)
    x, y = _separable(rng, 200)
    first, second = (
        linear_probe(x[:150], y[:150], x[150:], y[150:], epochs=3, batch_size=10, seed=4)
        for _ in range(2)
    )
    assert first.history["loss"] == second.history["loss"]
    for a, b in zip(first.head.weights, second.head.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_the_probe_computes_in_float32_under_mixed_precision(policy):
    # In float16 a feature of standard deviation 1e-5 rounds to its mean (its information
    # is lost) and one of scale 1e5 overflows (the loss is NaN): the probe trains in
    # float32 whatever the global policy, with the same result as under float32.
    rng = np.random.default_rng(2)
    x, y = _separable(rng, 200)
    x[:, -1] = 5.0 + 1e-5 * rng.normal(size=200)
    x[:, -2] *= 1e5

    def probe():
        return linear_probe(
            x[:150], y[:150], x[150:], y[150:], epochs=10, batch_size=16, learning_rate=1e-2
        )

    expected = probe()
    with global_dtype_policy(policy):
        result = probe()
    assert {layer.dtype_policy.name for layer in result.head.layers[1:]} == {"float32"}
    assert not isinstance(result.head.optimizer, keras.optimizers.LossScaleOptimizer)
    np.testing.assert_allclose(result.history["loss"], expected.history["loss"], rtol=1e-6)
    assert result.top1 == expected.top1 >= 0.9


def test_extract_features_uint8_and_channel_axis():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 6, 6), dtype=np.uint8)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten()])
    features = extract_features(model, images, batch_size=2)
    assert features.dtype == np.float32 and features.shape == (5, 36)
    np.testing.assert_allclose(features, images.reshape(5, 36) / 255.0, rtol=1e-6)
    # Other integer dtypes are read as [0, 255] as the trainer reads them; uint16 as [0, 65535].
    for dtype in ("int32", "int64"):
        np.testing.assert_allclose(
            extract_features(model, images.astype(dtype)), features, rtol=1e-6, err_msg=dtype
        )
    wide = images.astype("uint16") * 257  # 255 -> 65535
    np.testing.assert_allclose(extract_features(model, wide), features, rtol=1e-6)
    floats = np.ones((3, 6, 6, 1), dtype="float64") * 2
    np.testing.assert_allclose(extract_features(model, floats), 2.0)


def test_non_finite_features_and_bad_labels_are_refused():
    rng = np.random.default_rng(4)
    x, y = _separable(rng, 60, classes=5)
    nan = x.copy()
    nan[[3, 10]] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite train_features in 2 of 40 rows"):
        linear_probe(nan[:40], y[:40], x[40:], y[40:], epochs=1)
    with pytest.raises(ValueError, match=r"test_features in 1 of 20 rows \(rows 3\)"):
        linear_probe(x[:40], y[:40], nan[7:27], y[40:], epochs=1)
    # Labels up to 4 for a 3-class head: JAX's loss reads out of range without an error.
    with pytest.raises(ValueError, match="train_labels must be below num_classes=3"):
        linear_probe(x[:40], y[:40], x[40:], y[40:], num_classes=3, epochs=1)
    negative = y[40:].copy()
    negative[5] = -2
    with pytest.raises(ValueError, match="test_labels must be class indices.*got -2"):
        linear_probe(x[:40], y[:40], x[40:], negative, epochs=1)


def test_extract_features_refuses_layouts_the_model_does_not_take():
    from keras_ssl.backbones import ViT

    vit = ViT(patch_size=8, hidden_dim=16, depth=1, num_heads=2, pretrain_image_size=16)
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    assert extract_features(vit, images).shape == (2, 16)
    with pytest.raises(ValueError, match=r"look channels_first.*images.transpose\(0, 2, 3, 1\)"):
        extract_features(vit, images.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"one image \(H, W, C\) without a batch axis"):
        extract_features(vit, images[0])
    with pytest.raises(ValueError, match=r"1 channel\(s\).*\(N, H, W, 3\)"):
        extract_features(vit, images[..., 0])  # grey-scale into an RGB model
    tokens = ViT(
        patch_size=8, hidden_dim=16, depth=1, num_heads=2, pretrain_image_size=16, output="tokens"
    )
    with pytest.raises(
        ValueError, match=r"returns a dict with keys \['cls', 'patches'.*output='cls'"
    ):
        extract_features(tokens, images)
