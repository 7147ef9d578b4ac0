"""ResNet backbone: shapes, parameter counts, stems and torch-style padding."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.backbones import ResNet, ResNet18, ResNet50

# The layer-level tests below read feature maps in (N, H, W, C); the channels_first layout
# is checked against this one in `test_data_formats_compute_the_same_function`.
NHWC = {"data_format": "channels_last"}


def _images(size, channels, batch=2):
    return np.random.uniform(-1, 1, (batch, size, size, channels)).astype("float32")


def _trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _np_conv(x, kernel, stride, pad):
    """Reference conv (torch semantics): symmetric zero padding ``pad`` on H and W."""
    x = np.pad(x.astype("float64"), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            out += np.einsum("nhwc,cf->nhwf", patch, kernel[i, j].astype("float64"))
    return out


def _np(x):
    return keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(x))


# --- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_cifar_stem_output_shapes(channels):
    model = ResNet18(stem="cifar", input_channels=channels)
    fmap = ResNet18(stem="cifar", input_channels=channels, pooling=None)
    assert model.output_dim == fmap.output_dim == 512
    for size in (32, 64):
        x = _images(size, channels, batch=1)
        assert tuple(model(x).shape) == (1, 512)
        assert tuple(fmap(x).shape) == (1, size // 8, size // 8, 512)


@pytest.mark.parametrize("channels", [1, 3])
def test_imagenet_stem_output_shapes(channels):
    kwargs = dict(block_type="bottleneck", stackwise_num_blocks=(1, 1, 1, 1))
    model = ResNet(input_channels=channels, **kwargs)
    fmap = ResNet(input_channels=channels, pooling=None, **kwargs)
    assert model.output_dim == fmap.output_dim == 2048
    for size in (64, 96):
        x = _images(size, channels, batch=1)
        assert tuple(model(x).shape) == (1, 2048)
        assert tuple(fmap(x).shape) == (1, size // 32, size // 32, 2048)


def test_any_input_size_same_model():
    model = ResNet18(stem="cifar", pooling=None)
    assert tuple(model.input_shape) == (None, None, None, 3)
    assert tuple(model(_images(32, 3)).shape) == (2, 4, 4, 512)
    assert tuple(model(_images(40, 3, batch=1)).shape) == (1, 5, 5, 512)


def test_max_pooling():
    model = ResNet18(stem="cifar", pooling="max")
    assert tuple(model(_images(32, 3)).shape) == (2, 512)


# --- parameter counts (torchvision reference numbers, without the fc layer) -------------


def test_resnet18_param_count_matches_torchvision():
    model = ResNet18()
    assert model.output_dim == 512
    assert tuple(model.output_shape) == (None, 512)
    assert _trainable_params(model) == 11_176_512
    # BN moving mean/variance are non-trainable (torch buffers): 2 * 4800 channels.
    assert model.count_params() - _trainable_params(model) == 2 * 4_800


def test_resnet50_param_count_matches_torchvision():
    model = ResNet50()  # built only, not run
    assert model.output_dim == 2048
    assert _trainable_params(model) == 23_508_032


def test_torchvision_layer_names():
    model = ResNet50()
    names = {layer.name for layer in model.layers}
    for name in [
        "conv1",
        "bn1",
        "layer1_0_conv1",
        "layer1_0_bn3",
        "layer1_0_downsample_0",
        "layer1_0_downsample_1",
        "layer2_0_conv2_pad",
        "layer4_2_conv3",
        "avg_pool",
    ]:
        assert name in names, name
    assert "layer1_1_downsample_0" not in names
    # v1.5: the stride sits on the 3x3 conv, not on the first 1x1.
    assert model.get_layer("layer2_0_conv1").strides == (1, 1)
    assert model.get_layer("layer2_0_conv2").strides == (2, 2)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == 1e-5 and layer.momentum == 0.9


# --- stems ------------------------------------------------------------------------------


def test_stems_differ():
    cifar = ResNet18(stem="cifar", **NHWC)
    imagenet = ResNet18(stem="imagenet", **NHWC)
    cifar_stage1 = keras.Model(cifar.input, cifar.get_layer("layer1_1_out").output)
    imagenet_stage1 = keras.Model(imagenet.input, imagenet.get_layer("layer1_1_out").output)
    assert tuple(cifar_stage1(_images(32, 3)).shape) == (2, 32, 32, 64)
    assert tuple(imagenet_stage1(_images(64, 3)).shape) == (2, 16, 16, 64)
    assert tuple(cifar.get_layer("conv1").kernel.shape) == (3, 3, 3, 64)
    assert cifar.get_layer("conv1").strides == (1, 1)
    assert tuple(imagenet.get_layer("conv1").kernel.shape) == (7, 7, 3, 64)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in cifar.layers)
    assert any(isinstance(layer, keras.layers.MaxPooling2D) for layer in imagenet.layers)


# --- torch-style symmetric padding --------------------------------------------------------


def test_stem_conv_matches_symmetric_padding_reference():
    model = ResNet18(input_channels=1, **NHWC)
    conv1 = keras.Model(model.input, model.get_layer("conv1").output)
    kernel = _np(model.get_layer("conv1").kernel)
    for size in (8, 9):  # even sizes are where Keras "same" would pad asymmetrically
        x = _images(size, 1)
        expected = _np_conv(x, kernel, stride=2, pad=3)
        np.testing.assert_allclose(_np(conv1(x)), expected, rtol=1e-4, atol=1e-4)


def test_block_strided_convs_match_symmetric_padding_reference():
    model = ResNet18(**NHWC)
    x = _images(8, 64)
    # 3x3 stride-2 conv of the first block of stage 2: padding (1, 1) on both sides.
    pad = model.get_layer("layer2_0_conv1_pad")
    conv = model.get_layer("layer2_0_conv1")
    expected = _np_conv(x, _np(conv.kernel), stride=2, pad=1)
    np.testing.assert_allclose(_np(conv(pad(x))), expected, rtol=1e-4, atol=1e-4)
    # 1x1 stride-2 projection shortcut samples pixels 0, 2, 4, ... like torch.
    down = model.get_layer("layer2_0_downsample_0")
    expected = _np_conv(x, _np(down.kernel), stride=2, pad=0)
    np.testing.assert_allclose(_np(down(x)), expected, rtol=1e-4, atol=1e-4)


def test_symmetric_padding_on_crafted_input():
    """An impulse in the last row/column must be seen exactly like one in the first."""
    model = ResNet18(**NHWC)
    conv = model.get_layer("layer2_0_conv1")
    pad = model.get_layer("layer2_0_conv1_pad")
    conv.set_weights([np.ones((3, 3, 64, 128), "float32")])
    x = np.zeros((1, 8, 8, 64), "float32")
    x[0, 0, 0, 0] = 1.0  # top-left corner
    x[0, 7, 7, 0] = 2.0  # bottom-right corner
    out = _np(conv(pad(x)))[0, :, :, 0]
    # torch (pad 1 each side, stride 2): output (0, 0) sees input rows/cols -1..1 and
    # output (3, 3) sees rows/cols 5..7, so both corners are picked up.
    assert out.shape == (4, 4)
    assert out[0, 0] == 1.0 and out[3, 3] == 2.0
    assert out.sum() == 3.0


def test_maxpool_matches_torch_semantics_on_nonnegative_input():
    model = ResNet18(**NHWC)
    pad = model.get_layer("maxpool_pad")
    pool = model.get_layer("maxpool")
    x = np.random.uniform(0, 1, (2, 8, 8, 2)).astype("float32")  # post-ReLU input
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    expected = np.full((2, 4, 4, 2), -np.inf, "float32")
    for i in range(3):
        for j in range(3):
            expected = np.maximum(expected, xp[:, i : i + 8 : 2, j : j + 8 : 2, :])
    np.testing.assert_allclose(_np(pool(pad(x))), expected)


# --- options and validation ---------------------------------------------------------------


def test_zero_init_residual():
    model = ResNet50(zero_init_residual=True)
    assert np.all(_np(model.get_layer("layer1_0_bn3").gamma) == 0)
    assert np.all(_np(model.get_layer("layer1_0_downsample_1").gamma) == 1)
    assert np.all(_np(model.get_layer("bn1").gamma) == 1)
    basic = ResNet18(zero_init_residual=True)
    assert np.all(_np(basic.get_layer("layer3_1_bn2").gamma) == 0)
    assert np.all(_np(basic.get_layer("layer3_1_bn1").gamma) == 1)


def test_invalid_arguments():
    for kwargs in [
        {"block_type": "wide"},
        {"stem": "tiny"},
        {"pooling": "sum"},
        {"stackwise_num_blocks": ()},
        {"stackwise_num_blocks": (2, 0)},
    ]:
        with pytest.raises(ValueError):
            ResNet(**kwargs)


@pytest.mark.parametrize("stem,pooling", [("imagenet", None), ("cifar", "avg")])
def test_data_formats_compute_the_same_function(stem, pooling):
    """The layout is internal: channels_first and channels_last give the same features
    from the same weights, in training and inference mode, and both take and return
    channels_last tensors."""
    images = np.random.default_rng(0).random((8, 64, 64, 3)).astype("float32")
    kwargs = dict(block_type="basic", stackwise_num_blocks=(1, 1), stem=stem, pooling=pooling)
    last = ResNet(data_format="channels_last", **kwargs)
    first = ResNet(data_format="channels_first", **kwargs)
    first.set_weights(last.get_weights())
    for training in (False, True):
        a = ops.convert_to_numpy(last(images, training=training))
        b = ops.convert_to_numpy(first(images, training=training))
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    for a, b in zip(last.weights, first.weights, strict=True):  # moving statistics too
        np.testing.assert_allclose(ops.convert_to_numpy(b), ops.convert_to_numpy(a), atol=1e-5)


def test_data_format_default_follows_the_backend_and_is_saved_unresolved():
    model = ResNet(block_type="basic", stackwise_num_blocks=(1,), stem="cifar")
    fast = "channels_first" if keras.backend.backend() == "torch" else "channels_last"
    assert model.data_format == fast
    assert model.get_config()["data_format"] is None
    explicit = ResNet(stackwise_num_blocks=(1,), stem="cifar", data_format="channels_last")
    assert ResNet.from_config(explicit.get_config()).data_format == "channels_last"
    with pytest.raises(ValueError, match="data_format"):
        ResNet(stackwise_num_blocks=(1,), data_format="nhwc")


def test_weights_files_of_plain_keras_convolutions_load(tmp_path, monkeypatch):
    # Weight files key layers by class name: the ResNet's convolutions (small_map_conv.Conv2D)
    # must keep Keras's `conv2d` keys so that files written with keras.layers.Conv2D load.
    from keras_ssl.backbones import resnet

    kwargs = dict(stackwise_num_blocks=(1, 1), stem="cifar")
    with monkeypatch.context() as patch:
        patch.setattr(resnet.small_map_conv, "Conv2D", keras.layers.Conv2D)
        plain = ResNet(**kwargs)
    assert {type(layer) for layer in plain.layers} >= {keras.layers.Conv2D}
    path = str(tmp_path / "plain.weights.h5")
    plain.save_weights(path)
    model = ResNet(**kwargs)
    assert not any(type(layer) is keras.layers.Conv2D for layer in model.layers)
    model.load_weights(path)
    images = _images(8, 3)
    np.testing.assert_allclose(_np(model(images)), _np(plain(images)), rtol=1e-5, atol=1e-5)
