"""L2 normalisation, the first step of every cosine-similarity loss."""

import keras
from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """`x / max(|x|_2, epsilon)` along `axis`: unit vectors, zero vectors stay zero.

    Integer inputs are normalised in `keras.config.floatx()`; float16 and bfloat16 inputs
    in float32, and the result is rounded once to their dtype (in 16 bits `epsilon`
    rounds to zero and the squared norm overflows past 255). The gradient at a zero vector
    is finite on every backend (`x / max(|x|, epsilon)` differentiates `|x|` at zero to
    NaN on JAX): the norm is taken as `sqrt(max(|x|^2, epsilon^2))`, which has the same
    value.

    Example:

    >>> from keras_ssl.ops import l2_normalize
    >>> [round(float(v), 2) for v in l2_normalize([[3.0, 4.0]])[0]]
    [0.6, 0.8]
    """
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if not keras.backend.is_float_dtype(dtype):
        dtype = keras.config.floatx()
    compute_dtype = "float32" if dtype in ("float16", "bfloat16") else dtype
    x = ops.cast(x, compute_dtype)
    if keras.backend.backend() == "torch" and isinstance(axis, int):
        # PyTorch's kernel of the same formula, taking `epsilon` as a number: Keras's
        # `maximum` makes it a device tensor, on CUDA a host copy that waits for the device.
        import torch

        y = torch.nn.functional.normalize(x, dim=axis, eps=epsilon)
    else:
        squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
        y = x / ops.sqrt(ops.maximum(squared_norm, epsilon**2))
    return ops.cast(y, dtype)
