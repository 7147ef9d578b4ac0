"""Sinkhorn-Knopp centring of teacher outputs (SwAV, DINOv2)."""

from keras import ops


def _identity(x):
    return x


def sinkhorn_knopp(teacher_logits, temperature, num_iterations=3, reduce_sum=None):
    """Sinkhorn-Knopp normalisation (Caron et al. 2020, "Unsupervised Learning
    of Visual Features by Contrasting Cluster Assignments" (SwAV), Sec. 3.1 and
    Algorithm 1; the teacher centring of DINOv2, Oquab et al. 2023, Sec. 4).

    Finds the soft assignment `Q` of `B` samples to `K` prototypes closest to
    `exp(logits / T)` whose marginals are uniform, by alternately normalising
    the rows and columns of the `(K, B)` matrix:

        Q = exp(logits^T / T);  Q <- Q / sum(Q)
        repeat num_iterations times:
            Q <- Q / (K * sum_b Q)      (each prototype gets mass 1/K)
            Q <- Q / (B * sum_k Q)      (each sample gets mass 1/B)
        Q <- B * Q

    and returns `Q^T`, `(B, K)`, each row a probability distribution over
    prototypes. After enough iterations every prototype's column of the
    result sums to `B / K`. Gradient-free (the inputs are wrapped in
    `ops.stop_gradient`) and computed in float32.

    For numerical range the logits' maximum is subtracted before the
    exponential (a constant factor the normalisations cancel). With a
    `reduce_sum` hook the shift is skipped, as in DINOv2, since a per-replica
    maximum would differ across replicas.

    Args:
        teacher_logits: `(B, K)` teacher logits.
        temperature: the temperature `T` (DINOv2: the teacher temperature,
            0.04 -> 0.07; SwAV: epsilon 0.05).
        num_iterations: Sinkhorn iterations (3).
        reduce_sum: callable summing a tensor element-wise across replicas
            (an all-reduce); defaults to the identity (one replica). It is
            applied to the total sum, the per-prototype sums and the batch
            size, so `B` becomes the global batch.

    Returns:
        `(B, K)` float32 probabilities.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import sinkhorn_knopp
    >>> logits = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    >>> q = sinkhorn_knopp(logits, temperature=0.5, num_iterations=3)
    >>> np.allclose(np.asarray(q).sum(axis=1), 1.0, atol=1e-5)
    True
    """
    logits = ops.convert_to_tensor(teacher_logits)
    if len(logits.shape) != 2:
        raise ValueError(f"sinkhorn_knopp expects (B, K) logits, got {tuple(logits.shape)}.")
    all_reduce = reduce_sum or _identity
    logits = ops.cast(ops.stop_gradient(logits), "float32") / ops.cast(temperature, "float32")
    if reduce_sum is None:
        logits = logits - ops.max(logits)
    q = ops.transpose(ops.exp(logits))  # (K, B)
    num_prototypes = ops.cast(ops.shape(q)[0], "float32")
    batch_size = all_reduce(ops.cast(ops.shape(q)[1], "float32"))
    q = q / all_reduce(ops.sum(q))
    for _ in range(num_iterations):
        q = q / all_reduce(ops.sum(q, axis=1, keepdims=True))
        q = q / num_prototypes
        q = q / ops.sum(q, axis=0, keepdims=True)
        q = q / batch_size
    return ops.transpose(q * batch_size)
