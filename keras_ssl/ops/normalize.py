"""L2 normalisation, the first step of every cosine-similarity loss."""

import keras
from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """`x / max(|x|_2, epsilon)` along `axis`: unit vectors, zero vectors stay zero.

    Integer inputs are normalised in `keras.config.floatx()`.

    Example:

    >>> from keras_ssl.ops import l2_normalize
    >>> [round(float(v), 2) for v in l2_normalize([[3.0, 4.0]])[0]]
    [0.6, 0.8]
    """
    x = ops.convert_to_tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        x = ops.cast(x, keras.config.floatx())
    if keras.backend.backend() == "torch" and isinstance(axis, int):
        # PyTorch's kernel of the same formula, taking `epsilon` as a number: Keras's
        # `maximum` makes it a device tensor, on CUDA a host copy that waits for the device.
        import torch

        return torch.nn.functional.normalize(x, dim=axis, eps=epsilon)
    return x / ops.maximum(ops.norm(x, axis=axis, keepdims=True), epsilon)
