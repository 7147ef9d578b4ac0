"""L2 normalisation, the first step of every cosine-similarity loss."""

from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """`x / max(|x|_2, epsilon)` along `axis`: unit vectors, zero vectors stay zero.

    Example:

    >>> from keras_ssl.ops import l2_normalize
    >>> [round(float(v), 2) for v in l2_normalize([[3.0, 4.0]])[0]]
    [0.6, 0.8]
    """
    x = ops.convert_to_tensor(x)
    return x / ops.maximum(ops.norm(x, axis=axis, keepdims=True), epsilon)
