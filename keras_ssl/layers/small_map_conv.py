"""`Conv2D` that takes the backend's fastest path on the CPU: on small feature maps, and
for strided convolutions on XLA:CPU."""

import keras
from keras import ops

from keras_ssl._xla_cpu import on_xla_cpu

# Largest output map (H * W pixels) that is convolved as patches @ kernel on XLA:CPU.
_MAX_MATMUL_PIXELS = 4
# Largest map that PyTorch on the CPU convolves from contiguous (N, C, H, W) memory.
_MAX_CONTIGUOUS_PIXELS = 16


def conv2d_as_matmul(x, kernel, strides=(1, 1), padding="same"):
    """2D convolution as im2col and one matmul, channels_last: "valid" at any stride, or
    stride-1 "same" with an odd kernel.

    With `x_pad` the input (zero-padded by `k // 2` on every side for "same"), each output
    pixel `y[n, i, j] = sum_{a, b, c} x_pad[n, s_h * i + a, s_w * j + b, c] * kernel[a, b, c]`:
    the `k_h * k_w` strided windows of the map are concatenated on the channel axis
    (tap-major, the order of `kernel.reshape(k_h * k_w * C, O)`) and multiplied by the
    reshaped kernel. Same result as `keras.ops.conv(x, kernel, strides, padding)`.

    Args:
        x: `(N, H, W, C)` images or features.
        kernel: `(k_h, k_w, C, O)`.
        strides: `(s_h, s_w)`, or one int for both; 1 for "same".
        padding: `"valid"` or `"same"`.

    Returns:
        `(N, H_out, W_out, O)`, `H_out = (H_pad - k_h) // s_h + 1` (likewise W).
    """
    kh, kw, channels, filters = kernel.shape
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    if padding == "same":
        if kh % 2 == 0 or kw % 2 == 0 or (sh, sw) != (1, 1):
            raise ValueError(
                'conv2d_as_matmul takes "same" padding with stride 1 and an odd kernel '
                f"size, got kernel {(kh, kw)} and strides {(sh, sw)}."
            )
        x = ops.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    elif padding != "valid":
        raise ValueError(f'`padding` must be "valid" or "same", got {padding!r}.')
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    taps = [
        x[:, a : a + sh * (out_h - 1) + 1 : sh, b : b + sw * (out_w - 1) + 1 : sw, :]
        for a in range(kh)
        for b in range(kw)
    ]
    patches = ops.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    return ops.matmul(patches, ops.reshape(kernel, (kh * kw * channels, filters)))


def _torch_conv2d(inputs, kernel, strides, padding):
    """PyTorch's 2D convolution of `(N, C, H, W)` inputs with a Keras `(kh, kw, C, O)`
    kernel, "valid" or stride-1 "same". The `(O, C, kh, kw)` weight is laid out in memory
    as the inputs are (oneDNN and cuDNN copy it so otherwise), by 2-D transposes, which
    torch copies about 3x faster than the 4-D permutation Keras hands it (a 3x3x512x512
    kernel: 2.7-2.8 against 8.0-8.3 ms on a 2-core CPU, at every forward pass).
    """
    import torch

    kernel = ops.convert_to_tensor(kernel)
    kh, kw, channels, filters = kernel.shape
    if inputs.is_contiguous(memory_format=torch.channels_last) and not inputs.is_contiguous():
        # (O, kh, kw, C) in memory: the kernel as a (kh * kw * C, O) matrix, transposed.
        weight = kernel.reshape(kh * kw * channels, filters).t().contiguous()
        weight = weight.view(filters, kh, kw, channels).permute(0, 3, 1, 2)
    else:
        # (O, C, kh, kw) in memory: each tap's (C, O) matrix transposed, then the taps last.
        weight = kernel.reshape(kh * kw, channels, filters).transpose(1, 2).contiguous()
        weight = weight.permute(1, 2, 0).contiguous().view(filters, channels, kh, kw)
    return torch.nn.functional.conv2d(
        inputs, weight, stride=tuple(strides), padding=0 if padding == "valid" else "same"
    )


def _dense_channels_last(x):
    """`(N, C, H, W)` torch `x` copied into channels-last memory."""
    import torch

    return x.contiguous(memory_format=torch.channels_last)


def _stored(x):
    """`x` behind an XLA optimization barrier: computed into a buffer of its own, which
    XLA may not fuse the ops that produced it into its readers."""
    import jax

    return jax.lax.optimization_barrier(x)


@keras.saving.register_keras_serializable(package="keras_ssl")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (same weights, config and results) with faster paths for
    the small maps of a ResNet's last stages on the CPU. It keeps Keras's class name so
    that weight files key it as Keras keys its own `Conv2D` (`conv2d`, `conv2d_1`, ...):
    files written with either load into the other.

    - JAX's CPU backend, "valid" convolutions and stride-1 "same" ones with odd
      kernels: XLA:CPU (jaxlib 0.10) runs a 3x3 convolution with a 2x2 output at
      ~2 GFLOP/s, 10-30x slower than a larger one, in the forward and the backward
      pass: a stride-1 one on a 2x2 map, and the stride-2 one from a 3x3 or 4x4 map
      that starts a stage (DINO's 12-16 px local crops reach a ResNet's or the demo
      ConvNet's last stage at these sizes). Outputs of at most 4 pixels are
      convolved with `conv2d_as_matmul` instead, at the speed of a dense layer.
    - JAX's CPU backend, strided convolutions (a ResNet stage's first 3x3 and its 1x1
      shortcut): XLA:CPU takes a convolution's kernel gradient from the input
      transposed to (C, H, W, N), and fuses into that transpose the batch norms, ReLUs
      and residual additions that made the input, recomputed for every element it
      reads across the batch (1.0-1.5 s of thread time a step for one such transpose
      in a ResNet-18 SimCLR step at 32 px, batch 256, 2 cores). A strided 1x1
      convolution is a strided slice and a matmul (`conv2d_as_matmul`), whose
      gradients need no transpose; any other strided convolution's input goes
      through an optimization barrier, so the transpose reads a stored tensor. That
      step took 15.5-17.2 s before, 12.6-13.7 s with the barrier alone and 12.6-12.8 s
      with both. (A barrier on every convolution's input was no faster: 12.7-13.4 s.)
    - PyTorch, channels_first, "valid" or stride-1 "same", no groups or dilation:
      `torch.nn.functional.conv2d` with the kernel laid out in memory as the input is,
      by 2-D transposes that torch copies about 3x faster than the 4-D permutation
      Keras hands it. On the CPU, a ResNet's activations keep the images' channels-last
      memory (faster in oneDNN on large maps), but on maps of at most 16 pixels oneDNN's
      (N, C, H, W) kernels are faster; the input is made contiguous in that order there.
      A larger input in neither memory order (a permuted view, as torch's einsum returns)
      is copied into channels-last memory: torch would otherwise run this convolution,
      and every layer after it, channels-first (10% slower MoCo-v2 steps at 32 px on a
      2-core CPU when the augmented views were such views).

    Everything else (other backends, layouts and padding) takes Keras's own path.

    Example:

    >>> import numpy as np
    >>> layer = Conv2D(8, 3, padding="same")
    >>> tuple(layer(np.ones((2, 2, 2, 4), "float32")).shape)
    (2, 2, 2, 8)
    """

    def convolution_op(self, inputs, kernel):
        if self._as_matmul(inputs):
            return conv2d_as_matmul(inputs, kernel, self.strides, self.padding)
        if self._stored_input(inputs):
            inputs = _stored(inputs)
        if self._as_contiguous_nchw(inputs):
            inputs = inputs.contiguous()
        elif self._as_dense_channels_last(inputs):
            inputs = _dense_channels_last(inputs)
        if self._torch_conv(inputs):
            return _torch_conv2d(inputs, kernel, self.strides, self.padding)
        return super().convolution_op(inputs, kernel)

    def _torch_conv(self, inputs):
        return (
            keras.backend.backend() == "torch"
            and self.data_format == "channels_first"
            and (self._valid_plain() or self._same_stride_1())
            and len(inputs.shape) == 4
        )

    def _same_stride_1(self):
        return (
            self.padding == "same"
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
            and all(k % 2 == 1 for k in self.kernel_size)
        )

    def _as_matmul(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if (
            self.data_format != "channels_last"
            or height is None
            or width is None
            or not (self._same_stride_1() or self._valid_plain())
        ):
            return False
        out_h, out_w = height, width
        if self.padding == "valid":
            out_h = (height - self.kernel_size[0]) // self.strides[0] + 1
            out_w = (width - self.kernel_size[1]) // self.strides[1] + 1
        strided_1x1 = tuple(self.kernel_size) == (1, 1) and tuple(self.strides) != (1, 1)
        return (out_h * out_w <= _MAX_MATMUL_PIXELS or strided_1x1) and on_xla_cpu()

    def _stored_input(self, inputs):
        return tuple(self.strides) != (1, 1) and len(inputs.shape) == 4 and on_xla_cpu()

    def _valid_plain(self):
        return self.padding == "valid" and tuple(self.dilation_rate) == (1, 1) and self.groups == 1

    def _on_torch_cpu_channels_first(self, inputs):
        return (
            keras.backend.backend() == "torch"
            and self.data_format == "channels_first"
            and inputs.device.type == "cpu"
        )

    def _as_contiguous_nchw(self, inputs):
        return (
            self._on_torch_cpu_channels_first(inputs)
            and inputs.shape[2] * inputs.shape[3] <= _MAX_CONTIGUOUS_PIXELS
        )

    def _as_dense_channels_last(self, inputs):
        import torch

        return (
            self._on_torch_cpu_channels_first(inputs)
            and not inputs.is_contiguous()
            and not inputs.is_contiguous(memory_format=torch.channels_last)
        )
