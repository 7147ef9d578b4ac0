"""Collapse measurements of a batch of embeddings (NumPy, no state).

Used by `keras_ssl.callbacks.CollapseMonitor`; usable on their own on any features.
"""

from __future__ import annotations

import numpy as np

__all__ = ["distribution_entropy", "effective_rank", "normalized_embedding_std"]


def _as_matrix(embeddings):
    z = np.asarray(embeddings, dtype="float64")
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(
            f"Expected embeddings of shape (N, D) with N >= 2, got shape {z.shape}. "
            "Pass a batch of at least two images' features."
        )
    return z


def normalized_embedding_std(embeddings, eps=1e-12):
    """Mean over dimensions of the std of L2-normalised embeddings.

    SimSiam's collapse indicator (Chen & He 2021, Sec. 4.1): with ``z' = z / ||z||_2``,
    ``std = mean_d std_n(z'_{n,d})``. A collapsed representation (every image mapped
    to the same direction) gives 0; for ``z`` spread like an isotropic Gaussian the
    value is about ``1 / sqrt(D)``.

    Args:
        embeddings: ``(N, D)`` array.
        eps: guard of the norm.

    Returns:
        A Python float.

    Example:

    ```python
    import numpy as np
    from keras_ssl.eval import normalized_embedding_std

    z = np.random.default_rng(0).normal(size=(1000, 64))
    normalized_embedding_std(z) * 8  # about 1.0 (1 / sqrt(64) = 0.125)
    ```
    """
    z = _as_matrix(embeddings)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), eps)
    return float(np.mean(np.std(z, axis=0)))


def effective_rank(embeddings, eps=1e-7):
    """RankMe effective rank (Garrido et al. 2023, "RankMe: Assessing the Downstream
    Performance of Pretrained Self-Supervised Representations by Their Rank", eq. 1).

    With the singular values ``sigma_k`` of the ``(N, D)`` embedding matrix,
    ``p_k = sigma_k / ||sigma||_1 + eps`` and ``RankMe = exp(-sum_k p_k log p_k)``.
    It lies in ``[1, min(N, D)]``: 1 for a collapsed (rank-one) embedding, ``min(N, D)``
    when all singular values are equal.

    Args:
        embeddings: ``(N, D)`` array (not centred, as in the paper).
        eps: the paper's ``epsilon``.

    Returns:
        A Python float; NaN when the embeddings hold NaN or infinite values (a diverged
        model).

    Example:

    ```python
    import numpy as np
    from keras_ssl.eval import effective_rank

    rng = np.random.default_rng(0)
    effective_rank(rng.normal(size=(512, 32)))          # close to 32
    effective_rank(np.ones((512, 32)))                   # 1.0
    ```
    """
    z = _as_matrix(embeddings)
    if not np.isfinite(z).all():
        return float("nan")  # (the SVD would raise)
    sigma = np.linalg.svd(z, compute_uv=False)
    total = sigma.sum()
    if total <= 0.0:
        return 1.0
    p = sigma / total + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def distribution_entropy(probabilities, axis=-1, eps=1e-12):
    """Shannon entropy ``H(p) = -sum_k p_k log p_k`` (nats) of each row of ``probabilities``.

    Args:
        probabilities: array whose ``axis`` sums to 1.
        axis: the class axis.
        eps: guard of the logarithm.

    Returns:
        NumPy array of entropies (the other axes).

    Example:

    ```python
    import numpy as np
    from keras_ssl.eval import distribution_entropy

    distribution_entropy(np.full((2, 8), 1 / 8))  # [log(8), log(8)]
    ```
    """
    p = np.asarray(probabilities, dtype="float64")
    return -np.sum(p * np.log(np.maximum(p, eps)), axis=axis)
