"""Sinkhorn-Knopp centring of teacher outputs (SwAV, DINOv2)."""

from keras import ops


def _identity(x):
    return x


def sinkhorn_knopp(
    teacher_logits,
    temperature,
    num_iterations=3,
    reduce_sum=None,
    reduce_max=None,
    valid=None,
):
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

    The iterations run in the log domain (each normalisation subtracts a
    log-sum-exp), so no exponential overflows or underflows to a zero column:
    the result is finite for any logits and temperature, where the textbook form
    above returns NaN once a sample's logits all lie ~90 / T below the largest.

    Args:
        teacher_logits: `(B, K)` teacher logits.
        temperature: the temperature `T` (DINOv2: the teacher temperature,
            0.04 -> 0.07; SwAV: epsilon 0.05).
        num_iterations: Sinkhorn iterations (3).
        reduce_sum: callable summing a tensor element-wise across replicas
            (an all-reduce); defaults to the identity (one replica). It is
            applied to the per-prototype sums and the batch size, so `B`
            becomes the global batch.
        reduce_max: callable taking the element-wise maximum across replicas
            (no gradient); required with `reduce_sum` (the log-sum-exp over
            the global batch is shifted by the global maximum).
        valid: optional boolean `(B,)`, False for rows that are not samples (the
            padding of a fixed-size buffer, as DINOv2's masked patches padded to
            `upperbound`): they are left out of the prototype sums and of `B` (the
            number of valid rows, summed across replicas), their values are ignored
            (non-finite ones too) and their output rows are zeros.

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
    if (reduce_sum is None) != (reduce_max is None):
        raise ValueError("sinkhorn_knopp needs both `reduce_sum` and `reduce_max`, or neither.")
    all_reduce_sum = reduce_sum or _identity
    all_reduce_max = reduce_max or _identity

    log_q = ops.cast(ops.stop_gradient(logits), "float32") / ops.cast(temperature, "float32")
    if valid is None:
        keep = None
        num_rows = ops.cast(ops.shape(log_q)[0], "float32")
    else:
        valid = ops.convert_to_tensor(valid)
        if len(valid.shape) != 1 or valid.shape[0] not in (None, log_q.shape[0]):
            raise ValueError(
                f"sinkhorn_knopp expects `valid` of shape (B,) = ({log_q.shape[0]},), got "
                f"{tuple(valid.shape)}."
            )
        keep = ops.reshape(ops.cast(valid, "bool"), (-1, 1))
        log_q = ops.where(keep, log_q, ops.zeros_like(log_q))
        num_rows = ops.sum(ops.cast(keep, "float32"))

    def log_sum_exp_over_batch(x):
        # log sum_b exp(x_b) over the (valid rows of the) global batch, stable: shifted by
        # the global maximum.
        if keep is None:
            shift = ops.stop_gradient(all_reduce_max(ops.max(x, axis=0, keepdims=True)))
            total = all_reduce_sum(ops.sum(ops.exp(x - shift), axis=0, keepdims=True))
            return ops.log(total) + shift
        masked = ops.where(keep, x, ops.full_like(x, float("-inf")))
        shift = ops.stop_gradient(all_reduce_max(ops.max(masked, axis=0, keepdims=True)))
        shift = ops.where(ops.isfinite(shift), shift, ops.zeros_like(shift))  # no valid row
        terms = ops.where(keep, ops.exp(x - shift), ops.zeros_like(x))
        total = all_reduce_sum(ops.sum(terms, axis=0, keepdims=True))
        return ops.log(ops.maximum(total, 1e-30)) + shift

    num_prototypes = ops.cast(ops.shape(log_q)[1], "float32")
    batch_size = all_reduce_sum(num_rows)
    if keep is not None:
        batch_size = ops.maximum(batch_size, 1.0)  # finite output without any valid row
    # Q <- Q / sum(Q): over the prototypes of each sample, then over the global batch.
    log_q = log_q - log_sum_exp_over_batch(ops.logsumexp(log_q, axis=1, keepdims=True))
    for _ in range(num_iterations):
        log_q = log_q - log_sum_exp_over_batch(log_q) - ops.log(num_prototypes)
        log_q = log_q - ops.logsumexp(log_q, axis=1, keepdims=True) - ops.log(batch_size)
    q = ops.exp(log_q + ops.log(batch_size))
    if keep is None:
        return q
    return ops.where(keep, q, ops.zeros_like(q))
