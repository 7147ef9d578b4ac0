"""Weighted k-nearest-neighbour accuracy of frozen features (DINO / solo-learn protocol)."""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_ssl.eval._checks import check_finite, check_label_range, check_labels
from keras_ssl.ops.normalize import l2_normalize

__all__ = ["knn_accuracy"]


def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k=20,
    temperature=0.07,
    num_classes=None,
    batch_size=1024,
    top=1,
):
    """Top-1 (or top-``top``) accuracy of a temperature-weighted kNN classifier on frozen
    features.

    The protocol of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric
    Instance Discrimination") as used by DINO (Caron et al. 2021, "Emerging Properties in
    Self-Supervised Vision Transformers", ``eval_knn.py``) and solo-learn: features are
    L2-normalised, each test feature takes its ``k`` train neighbours of highest cosine
    similarity ``s``, each neighbour votes for its class with weight ``exp(s / T)``, and
    the class with the largest summed vote is predicted (DINO also reports top-5: the
    true class among the five of largest vote, ``top=5``). Classes ordered by vote
    as a stable sort orders them: of tied classes (equal or no votes, as collapsed
    features give) the lower class index ranks first, so a tie is never counted as a
    hit for every class in it. Runs with ``keras.ops`` on any
    backend, ``batch_size`` test rows at a time.

    Args:
        train_features: ``(N, D)`` array of train (memory bank) features.
        train_labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        test_features: ``(M, D)`` array of test features.
        test_labels: ``(M,)`` integer labels in ``[0, num_classes)``.
        k: number of neighbours (clipped to ``N``). DINO uses 20.
        temperature: ``T`` of the vote weights. DINO uses 0.07.
        num_classes: number of classes; default ``max(label) + 1``.
        batch_size: test rows per chunk (memory is ``batch_size * N`` floats).
        top: a test row counts as correct when its class is among the ``top`` classes
            of largest vote (1: top-1 accuracy); at most ``k`` places, as DINO counts.

    Returns:
        The top-``top`` accuracy on the test set, a Python float in ``[0, 1]``.

    Raises:
        ValueError: for NaN or infinite features (the message names the rows), labels
            that are not integers in ``[0, num_classes)``, or inconsistent shapes.

    Example:

    ```python
    import numpy as np
    from keras_ssl.eval import knn_accuracy

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    y = rng.integers(0, 3, size=200)
    x = centres[y] + 0.1 * rng.normal(size=(200, 16))
    print(knn_accuracy(x[:150], y[:150], x[150:], y[150:], k=5))  # 1.0
    ```
    """
    train_labels = check_labels(train_labels, "train_labels", "knn_accuracy")
    test_labels = check_labels(test_labels, "test_labels", "knn_accuracy")
    train_features = np.asarray(train_features, dtype="float32")
    test_features = np.asarray(test_features, dtype="float32")
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            "Features must be 2-D (N, D); got shapes "
            f"{train_features.shape} and {test_features.shape}."
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"Train and test feature sizes differ: {train_features.shape[1]} vs "
            f"{test_features.shape[1]}."
        )
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("Each feature array needs one label per row.")
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("knn_accuracy needs at least one train and one test row.")
    check_finite(train_features, "train_features", "knn_accuracy")
    check_finite(test_features, "test_features", "knn_accuracy")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    check_label_range(train_labels, num_classes, "train_labels", "knn_accuracy")
    check_label_range(test_labels, num_classes, "test_labels", "knn_accuracy")
    if not 1 <= top <= num_classes:
        raise ValueError(f"top must be between 1 and the {num_classes} classes, got {top}.")
    k = min(int(k), len(train_features))

    bank = l2_normalize(ops.convert_to_tensor(train_features))
    bank_t = ops.transpose(bank)
    bank_labels = ops.convert_to_tensor(train_labels.astype("int32"))
    correct = 0
    for start in range(0, len(test_features), batch_size):
        query = l2_normalize(ops.convert_to_tensor(test_features[start : start + batch_size]))
        similarity = ops.matmul(query, bank_t)  # (b, N)
        top_sim, top_idx = ops.top_k(similarity, k=k)  # (b, k)
        # exp((s - s_max) / T): the same vote ratios, without overflow at small T
        weights = ops.exp((top_sim - top_sim[:, :1]) / temperature)
        neighbour_labels = ops.take(bank_labels, top_idx, axis=0)  # (b, k)
        votes = ops.sum(
            ops.one_hot(neighbour_labels, num_classes) * ops.expand_dims(weights, -1), axis=1
        )  # (b, C)
        votes = ops.convert_to_numpy(votes)
        truth = test_labels[start : start + batch_size]
        true_votes = votes[np.arange(len(truth)), truth][:, None]
        # The true class's place in a stable descending sort of the votes: the classes
        # with more votes, and those tied with it at a lower index, come first.
        lower_index = np.arange(num_classes)[None, :] < truth[:, None]
        rank = np.sum(votes > true_votes, axis=1)
        rank += np.sum((votes == true_votes) & lower_index, axis=1)
        correct += int(np.sum(rank < min(top, k)))
    return correct / len(test_features)
