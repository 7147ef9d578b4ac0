import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl import _xla_cpu
from keras_ssl.layers import small_map_conv
from keras_ssl.layers.small_map_conv import Conv2D, conv2d_as_matmul
from tests._support.gradients import gradients

# (N, H, W, C), kernel size, filters
CASES = [((3, 2, 2, 4), 3, 5), ((2, 1, 1, 3), 3, 2), ((2, 3, 5, 2), 3, 4), ((2, 4, 3, 2), 5, 3)]


def _reference(x, kernel, dy):
    """Stride-1 zero-padded "same" convolution, its input and kernel gradients for the
    upstream gradient `dy`, from the definition, in float64 NumPy."""
    x, kernel, dy = (a.astype(np.float64) for a in (x, kernel, dy))
    k = kernel.shape[0]
    pad = k // 2
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = np.zeros((n, h, w, kernel.shape[-1]))
    d_padded = np.zeros_like(padded)
    d_kernel = np.zeros_like(kernel)
    for a in range(k):
        for b in range(k):
            window = padded[:, a : a + h, b : b + w, :]
            y += np.einsum("nhwc,co->nhwo", window, kernel[a, b])
            d_kernel[a, b] = np.einsum("nhwc,nhwo->co", window, dy)
            d_padded[:, a : a + h, b : b + w, :] += np.einsum("nhwo,co->nhwc", dy, kernel[a, b])
    return y, d_padded[:, pad : pad + h, pad : pad + w, :], d_kernel


def _value_and_gradients(x, kernel, dy):
    def loss(x, kernel):
        return ops.sum(conv2d_as_matmul(x, kernel) * ops.convert_to_tensor(dy))

    value = np.asarray(ops.convert_to_numpy(conv2d_as_matmul(x, kernel)), dtype=np.float64)
    return [value, *gradients(loss, x, kernel)]


@pytest.mark.parametrize("shape,size,filters", CASES)
def test_matches_numpy_convolution_and_gradients(shape, size, filters):
    rng = np.random.default_rng(sum(shape) + size)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(size, size, shape[-1], filters)).astype("float32")
    dy = rng.normal(size=(*shape[:3], filters)).astype("float32")
    got = _value_and_gradients(x, kernel, dy)
    for g, expected in zip(got, _reference(x, kernel, dy), strict=True):
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-4)


# (N, H, W, C), kernel size, stride: "valid" convolutions, the stage-opening stride-2 ones
# from 3x3 and 4x4 maps (zero-padded by 1) among them.
VALID_CASES = [
    ((2, 5, 5, 3), 3, 2),
    ((2, 6, 6, 2), 3, 2),
    ((3, 3, 4, 2), 1, 2),
    ((2, 4, 4, 2), 3, 1),
]


@pytest.mark.parametrize("shape,size,stride", VALID_CASES)
def test_valid_strided_matches_numpy_convolution_and_gradients(shape, size, stride):
    rng = np.random.default_rng(sum(shape) + size + stride)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(size, size, shape[-1], 4)).astype("float32")
    out_h, out_w = ((d - size) // stride + 1 for d in shape[1:3])
    dy = rng.normal(size=(shape[0], out_h, out_w, 4)).astype("float32")

    def convolve(x, kernel):
        return conv2d_as_matmul(x, kernel, stride, "valid")

    def loss(x, kernel):
        return ops.sum(convolve(x, kernel) * ops.convert_to_tensor(dy))

    got = [ops.convert_to_numpy(convolve(x, kernel)), *gradients(loss, x, kernel)]
    for g, expected in zip(got, _strided_reference(x, kernel, dy, stride), strict=True):
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-4)


def test_even_kernel_and_strided_same_are_rejected():
    with pytest.raises(ValueError, match="odd kernel"):
        conv2d_as_matmul(np.zeros((1, 2, 2, 1), "float32"), np.zeros((2, 2, 1, 1), "float32"))
    with pytest.raises(ValueError, match=r"stride 1 and an odd kernel.*strides \(2, 2\)"):
        conv2d_as_matmul(np.zeros((1, 4, 4, 1), "float32"), np.zeros((3, 3, 1, 1)), 2, "same")


def test_layer_equals_keras_conv2d_and_takes_the_matmul_path_only_on_xla_cpu(monkeypatch):
    calls = []
    original = small_map_conv.conv2d_as_matmul

    def spy(x, kernel, *args):
        calls.append(tuple(x.shape))
        return original(x, kernel, *args)

    monkeypatch.setattr(small_map_conv, "conv2d_as_matmul", spy)
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(2, s, s, 3)).astype("float32") for s in (2, 4, 5, 7)]
    for size, strides, padding, expected in (
        (3, 1, "same", [(2, 2, 2, 3)]),  # outputs 2x2, 4x4, 5x5, 7x7
        (3, 2, "valid", [(2, 4, 4, 3), (2, 5, 5, 3)]),  # outputs 1x1, 2x2, 3x3
        (1, 2, "valid", [(2, 4, 4, 3), (2, 5, 5, 3), (2, 7, 7, 3)]),  # strided 1x1: all
        (1, 1, "valid", []),  # outputs 4x4, 5x5, 7x7
    ):
        calls.clear()
        kwargs = dict(strides=strides, padding=padding, use_bias=True)
        ours = Conv2D(4, size, bias_initializer="random_normal", **kwargs)
        theirs = keras.layers.Conv2D(4, size, **kwargs)
        inputs = maps[1:] if padding == "valid" else maps  # no 0x0 outputs
        ours.build(inputs[0].shape)
        theirs.build(inputs[0].shape)
        theirs.set_weights(ours.get_weights())
        for x in inputs:
            np.testing.assert_allclose(
                ops.convert_to_numpy(ours(x)),
                ops.convert_to_numpy(theirs(x)),
                rtol=1e-5,
                atol=1e-5,
            )
        assert calls == (expected if _xla_cpu.on_xla_cpu() else []), (size, strides, padding)


def test_config_round_trip():
    layer = Conv2D(4, 3, padding="same", name="c")
    clone = Conv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, Conv2D)


def _memory_order(x):
    import torch

    if x.is_contiguous():
        return "NCHW"
    return "NHWC" if x.is_contiguous(memory_format=torch.channels_last) else "other"


def test_channels_first_inputs_are_convolved_from_dense_memory_on_torch(monkeypatch):
    seen = []
    original = small_map_conv._torch_conv2d

    def spy(inputs, kernel, strides, padding):
        seen.append((tuple(inputs.shape), _memory_order(inputs)))
        return original(inputs, kernel, strides, padding)

    monkeypatch.setattr(small_map_conv, "_torch_conv2d", spy)
    rng = np.random.default_rng(1)
    layer = Conv2D(4, 3, padding="same", data_format="channels_first")
    reference = keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first")
    # "NHWC": a channels-last image seen as (N, C, H, W), as the ResNet runs on torch;
    # "other": an (N, H, C, W) array seen so, as torch's einsum returns augmented views.
    for size, memory in ((4, "NHWC"), (8, "NHWC"), (4, "other"), (8, "other")):
        shape, axes = (
            ((2, size, size, 3), (0, 3, 1, 2))
            if memory == "NHWC"
            else ((2, size, 3, size), (0, 2, 1, 3))
        )
        x = ops.transpose(ops.convert_to_tensor(rng.normal(size=shape).astype("float32")), axes)
        if not reference.built:
            layer.build(x.shape)
            reference.build(x.shape)
            reference.set_weights(layer.get_weights())
        np.testing.assert_allclose(
            ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(reference(x)), rtol=1e-5, atol=1e-5
        )
    if keras.backend.backend() == "torch":
        # Maps of at most 16 pixels are made (N, C, H, W)-contiguous; larger ones keep
        # channels-last memory, or are copied into it.
        assert seen == [
            ((2, 3, 4, 4), "NCHW"),
            ((2, 3, 8, 8), "NHWC"),
            ((2, 3, 4, 4), "NCHW"),
            ((2, 3, 8, 8), "NHWC"),
        ]
    else:
        assert seen == []


def _strided_reference(x, kernel, dy, stride):
    """ "valid" convolution with `stride` of NHWC `x`, and its input and kernel gradients
    for the upstream gradient `dy`, from the definition, in float64 NumPy."""
    x, kernel, dy = (a.astype(np.float64) for a in (x, kernel, dy))
    k = kernel.shape[0]
    n, h, w, _ = x.shape
    out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
    y = np.zeros((n, out_h, out_w, kernel.shape[-1]))
    dx = np.zeros_like(x)
    d_kernel = np.zeros_like(kernel)
    rows = slice(0, stride * (out_h - 1) + 1, stride)
    for a in range(k):
        for b in range(k):
            window = x[:, a:, b:, :][:, rows, slice(0, stride * (out_w - 1) + 1, stride), :]
            y += np.einsum("nhwc,co->nhwo", window, kernel[a, b])
            d_kernel[a, b] = np.einsum("nhwc,nhwo->co", window, dy)
            dx[:, a:, b:, :][:, rows, slice(0, stride * (out_w - 1) + 1, stride), :] += np.einsum(
                "nhwo,co->nhwc", dy, kernel[a, b]
            )
    return y, dx, d_kernel


# (N, H, W, C), kernel size, stride, padding: maps above and at most 16 pixels.
CHANNELS_FIRST_CASES = [
    ((2, 6, 6, 3), 3, 1, "same"),
    ((2, 4, 4, 3), 3, 1, "same"),
    ((2, 7, 6, 3), 3, 2, "valid"),
    ((2, 7, 5, 4), 1, 2, "valid"),
    ((1, 11, 9, 2), 7, 2, "valid"),
    ((2, 5, 5, 3), 1, 1, "valid"),
]


@pytest.mark.parametrize("layout", ["channels_last_memory", "contiguous", "other_memory"])
@pytest.mark.parametrize("shape,size,stride,padding", CHANNELS_FIRST_CASES)
def test_channels_first_convolution_matches_numpy(shape, size, stride, padding, layout):
    # On torch: (N, C, H, W) inputs in either memory layout, with the weight laid out as the
    # inputs are (`_torch_conv2d`); elsewhere Keras's own convolution.
    rng = np.random.default_rng(sum(shape) + size + stride)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(size, size, shape[-1], 5)).astype("float32")
    pad = size // 2 if padding == "same" else 0
    x_padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = ((d + 2 * pad - size) // stride + 1 for d in shape[1:3])
    dy = rng.normal(size=(shape[0], out_h, out_w, 5)).astype("float32")
    y, dx_padded, d_kernel = _strided_reference(x_padded, kernel, dy, stride)
    dx = dx_padded[:, pad : pad + shape[1], pad : pad + shape[2], :]
    layer = Conv2D(5, size, strides=stride, padding=padding, data_format="channels_first")
    layer.build((None, shape[-1], None, None))
    upstream = ops.convert_to_tensor(dy.transpose(0, 3, 1, 2))

    def convolve(x, kernel):
        if layout == "channels_last_memory":
            x = ops.transpose(x, (0, 3, 1, 2))  # on torch a view: channels-last memory
        elif layout == "other_memory":
            x = ops.transpose(x, (0, 2, 1, 3))  # (N, H, C, W) memory, as torch's einsum gives
        return layer.convolution_op(x, kernel)

    def loss(x, kernel):
        return ops.sum(convolve(x, kernel) * upstream)

    inputs = {
        "channels_last_memory": x,
        "contiguous": np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
        "other_memory": np.ascontiguousarray(x.transpose(0, 1, 3, 2)),
    }[layout]
    value = ops.convert_to_numpy(convolve(ops.convert_to_tensor(inputs), kernel))
    np.testing.assert_allclose(value.transpose(0, 2, 3, 1), y, rtol=1e-4, atol=1e-4)
    got_dx, got_d_kernel = gradients(loss, inputs, kernel)
    if layout == "contiguous":
        got_dx = got_dx.transpose(0, 2, 3, 1)
    elif layout == "other_memory":
        got_dx = got_dx.transpose(0, 1, 3, 2)
    np.testing.assert_allclose(got_dx, dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_d_kernel, d_kernel, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compiled", [False, True])
def test_strided_convolutions_read_a_stored_input_on_xla_cpu(compiled):
    """A strided convolution's input goes through an optimization barrier on XLA:CPU
    (only there, and only for strided ones); its values and gradients are Keras's."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 9, 3)).astype("float32")
    kernel = rng.normal(size=(3, 3, 3, 4)).astype("float32")
    layer = Conv2D(4, 3, strides=2, padding="valid")
    dy = ops.convert_to_tensor(rng.normal(size=(2, 4, 4, 4)).astype("float32"))

    def ours(x, kernel):
        return ops.sum(layer.convolution_op(ops.multiply(x, x), kernel) * dy)

    def keras_conv(x, kernel):
        return ops.sum(ops.conv(ops.multiply(x, x), kernel, strides=2, padding="valid") * dy)

    for got, expected in zip(
        gradients(ours, x, kernel, compiled=compiled),
        gradients(keras_conv, x, kernel, compiled=compiled),
        strict=True,
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    if keras.backend.backend() == "jax":
        import jax

        stride_1 = Conv2D(4, 3, padding="same")
        barriers = [
            str(jax.make_jaxpr(conv.convolution_op)(x, kernel)).count("optimization_barrier")
            for conv in (layer, stride_1)
        ]
        assert barriers == ([1, 0] if _xla_cpu.on_xla_cpu() else [0, 0])
