"""`Dense` in the form each backend runs fastest: one `addmm` on PyTorch, a 2-D GEMM on JAX."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ssl")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` (same weights, config and results) in the form that is fastest
    on each backend. On PyTorch it computes `inputs @ kernel + bias` as one `torch.addmm`,
    the bias copied into the output and accumulated by the GEMM, as `nn.Linear` does.
    Keras's `Dense` runs a matmul and then adds the bias in a second pass over the output:
    in the forward pass of a ViT-Tiny DINO step on a 2-core CPU that second pass cost
    0.06-0.1 s of 1.7 s, and the backward pass is the same either way. On JAX, inputs of
    rank 3 and more are multiplied as one `(rows, in)` matrix: differentiating Keras's
    `(batch, tokens, in) @ (in, out)`, XLA makes a transposed copy before the kernel's
    gradient (forward + backward of a ViT-Tiny `qkv` projection at 128 x 65 tokens, 2-core
    CPU: 31.7 ms against 17.7 ms as a matrix). It keeps Keras's class name, so weight files
    key it as Keras keys its own `Dense` (`dense`, `dense_1`, ...): files written with
    either load into the other.

    TensorFlow (where both forms take the same time: 15.0 against 15.2 ms there), on PyTorch
    layers without a bias and inputs of another dtype than the kernel's, and LoRA and
    quantised layers take Keras's own path (quantised layers never reach `call`).

    Example:

    >>> import numpy as np
    >>> layer = Dense(3)
    >>> tuple(layer(np.ones((2, 5, 4), "float32")).shape)
    (2, 5, 3)
    """

    def call(self, inputs, training=None):
        if self.lora_enabled:
            return super().call(inputs, training=training)
        if keras.backend.backend() == "torch":
            return self._addmm(inputs, training)
        if keras.backend.backend() != "jax" or len(inputs.shape) <= 2:
            return super().call(inputs, training=training)
        # (batch, ..., in) -> (rows, in): the kernel's gradient is then one plain GEMM, where
        # XLA gives Keras's (batch, ..., in) @ (in, out) a transposed copy first.
        inputs = ops.convert_to_tensor(inputs)
        leading = ops.shape(inputs)[:-1]
        x = ops.matmul(ops.reshape(inputs, (-1, inputs.shape[-1])), self.kernel)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        x = ops.reshape(x, (*leading, self.units))
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _addmm(self, inputs, training):
        import torch

        inputs = ops.convert_to_tensor(inputs)
        kernel = ops.convert_to_tensor(self.kernel)
        bias = None if self.bias is None else ops.convert_to_tensor(self.bias)
        if bias is None or not inputs.dtype == kernel.dtype == bias.dtype:
            return super().call(inputs, training=training)
        rows = inputs.reshape(-1, inputs.shape[-1])
        x = torch.addmm(bias, rows, kernel).view(*inputs.shape[:-1], kernel.shape[-1])
        if self.activation is not None:
            x = self.activation(x)
        return x
