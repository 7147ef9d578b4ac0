"""`Dense` whose bias is added inside the matrix product on PyTorch."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ssl")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` (same weights, config and results) that, on PyTorch, computes
    `inputs @ kernel + bias` as one `torch.addmm`, the bias copied into the output and
    accumulated by the GEMM, as `nn.Linear` does. Keras's `Dense` runs a matmul and then
    adds the bias in a second pass over the output: in the forward pass of a ViT-Tiny
    DINO step on a 2-core CPU that second pass cost 0.06-0.1 s of 1.7 s, and the
    backward pass is the same either way. It keeps Keras's class name, so weight files
    key it as Keras keys its own `Dense` (`dense`, `dense_1`, ...): files written with
    either load into the other.

    Other backends (where the compiled step fuses the add), layers without a bias,
    inputs of another dtype than the kernel's, LoRA and quantised layers take Keras's
    own path (quantised layers never reach `call`).

    Example:

    >>> import numpy as np
    >>> layer = Dense(3)
    >>> tuple(layer(np.ones((2, 5, 4), "float32")).shape)
    (2, 5, 3)
    """

    def call(self, inputs, training=None):
        if keras.backend.backend() != "torch" or self.bias is None or self.lora_enabled:
            return super().call(inputs, training=training)
        import torch

        inputs = ops.convert_to_tensor(inputs)
        kernel = ops.convert_to_tensor(self.kernel)
        bias = ops.convert_to_tensor(self.bias)
        if not inputs.dtype == kernel.dtype == bias.dtype:
            return super().call(inputs, training=training)
        rows = inputs.reshape(-1, inputs.shape[-1])
        x = torch.addmm(bias, rows, kernel).view(*inputs.shape[:-1], kernel.shape[-1])
        if self.activation is not None:
            x = self.activation(x)
        return x
