"""InfoNCE, the contrastive loss of MoCo against a queue of negative keys."""

from keras import ops

from keras_ssl.ops.normalize import l2_normalize


def _l2_normalize(x):
    return l2_normalize(ops.cast(ops.convert_to_tensor(x), "float32"))


def _info_nce_logits(query, positive_key, negative_keys, temperature):
    """`(N, 1 + K)` float32 logits `[q.k+, q.K^T] / T`, the positive in column 0."""
    q = _l2_normalize(query)
    k_pos = _l2_normalize(positive_key)
    k_neg = _l2_normalize(negative_keys)
    positive = ops.sum(q * k_pos, axis=1, keepdims=True)
    negative = ops.matmul(q, ops.transpose(k_neg))
    return ops.concatenate([positive, negative], axis=1) / temperature


def _check_shapes(query, positive_key, negative_keys):
    if len(query.shape) != 2 or tuple(query.shape) != tuple(positive_key.shape):
        raise ValueError(
            "info_nce expects query and positive_key of the same (N, D) shape, got "
            f"{tuple(query.shape)} and {tuple(positive_key.shape)}."
        )
    if len(negative_keys.shape) != 2 or negative_keys.shape[1] != query.shape[1]:
        raise ValueError(
            f"info_nce expects negative_keys of shape (K, D) with D={query.shape[1]}, "
            f"got {tuple(negative_keys.shape)}."
        )


def info_nce_loss(query, positive_key, negative_keys, temperature=0.2):
    """InfoNCE loss of MoCo (He et al. 2020, "Momentum Contrast for Unsupervised
    Visual Representation Learning", eq. 1).

    For an L2-normalised query `q`, its positive key `k+` (the momentum
    encoder's embedding of another view of the same image) and a queue of `K`
    negative keys `k_i`, with temperature `T`,

        L_q = -log( exp(q.k+ / T) / (exp(q.k+ / T) + sum_{i=1}^{K} exp(q.k_i / T)) )

    i.e. a (K+1)-way softmax cross-entropy whose label is the positive at
    index 0. The loss is the mean of `L_q` over the batch. Queries and keys
    (the queue included) are L2-normalised here, whether or not they already
    are. No gradient is stopped: the caller passes keys from the momentum
    encoder (or wraps them in `ops.stop_gradient`). Computed in float32
    whatever the inputs' dtype.

    Args:
        query: `(N, D)` queries `q` from the online encoder.
        positive_key: `(N, D)` positive keys `k+`, row `i` matching query `i`.
        negative_keys: `(K, D)` queue of negative keys.
        temperature: the temperature `T` (0.07 in MoCo, 0.2 in MoCo-v2).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import info_nce_loss
    >>> rng = np.random.default_rng(0)
    >>> q = rng.normal(size=(4, 8)).astype("float32")
    >>> queue = rng.normal(size=(16, 8)).astype("float32")
    >>> float(info_nce_loss(q, q, queue)) < float(info_nce_loss(q, q[::-1], queue))
    True
    """
    query = ops.convert_to_tensor(query)
    positive_key = ops.convert_to_tensor(positive_key)
    negative_keys = ops.convert_to_tensor(negative_keys)
    _check_shapes(query, positive_key, negative_keys)
    logits = _info_nce_logits(query, positive_key, negative_keys, temperature)
    return ops.mean(ops.logsumexp(logits, axis=1) - logits[:, 0])


def info_nce_accuracy(query, positive_key, negative_keys):
    """Fraction of queries whose most similar key is their positive key.

    The top-1 accuracy of the (K+1)-way classification solved by InfoNCE:
    the argmax of `[q.k+, q.k_1, ..., q.k_K]` must be index 0. Gradient-free;
    a metric, not a loss.

    Args:
        query: `(N, D)` queries.
        positive_key: `(N, D)` positive keys.
        negative_keys: `(K, D)` queue of negative keys.

    Returns:
        A float32 scalar in [0, 1].
    """
    query = ops.stop_gradient(ops.convert_to_tensor(query))
    positive_key = ops.stop_gradient(ops.convert_to_tensor(positive_key))
    negative_keys = ops.stop_gradient(ops.convert_to_tensor(negative_keys))
    _check_shapes(query, positive_key, negative_keys)
    logits = _info_nce_logits(query, positive_key, negative_keys, 1.0)
    return ops.mean(ops.cast(ops.argmax(logits, axis=1) == 0, "float32"))
