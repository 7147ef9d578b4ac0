import numpy as np
import pytest

from keras_ssl.eval import knn_accuracy


def _reference_hits(train_x, train_y, test_x, test_y, k, temperature, num_classes, top=1):
    """Per test point, 1 if its class is among the `top` of largest vote: a loop written
    from DINO's eval_knn.py formula."""
    train_x = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test_x = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    hits = []
    for x, y in zip(test_x, test_y, strict=True):
        sim = train_x @ x
        neighbours = np.argsort(-sim)[:k]
        votes = np.zeros(num_classes)
        for j in neighbours:
            votes[train_y[j]] += np.exp(sim[j] / temperature)
        # DINO's `probs.sort(1, True)` then the first `min(top, k)` places; ties in a
        # stable order (lower class first)
        hits.append(int(y in np.argsort(-votes, kind="stable")[: min(top, k)]))
    return np.array(hits)


def _reference_knn(*args, **kwargs):
    return float(_reference_hits(*args, **kwargs).mean())


@pytest.mark.parametrize("k", [1, 5])
def test_matches_numpy_reference(k):
    rng = np.random.default_rng(k)
    train_x = rng.normal(size=(120, 8)).astype("float32")
    train_y = rng.integers(0, 4, size=120)
    test_x = rng.normal(size=(50, 8)).astype("float32")
    test_y = rng.integers(0, 4, size=50)
    expected = _reference_knn(train_x, train_y, test_x, test_y, k, 0.07, 4)
    got = knn_accuracy(train_x, train_y, test_x, test_y, k=k, batch_size=16)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, abs=1e-9)
    # a different temperature changes the weighting but must still agree
    expected = _reference_knn(train_x, train_y, test_x, test_y, k, 0.5, 4)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=0.5) == (
        pytest.approx(expected, abs=1e-9)
    )
    # top-3 of 4 classes: the true class among the three of largest vote (with k = 1 DINO
    # counts min(top, k) = 1 place, so top-3 is top-1)
    expected = _reference_knn(train_x, train_y, test_x, test_y, k, 0.07, 4, top=3)
    got = knn_accuracy(train_x, train_y, test_x, test_y, k=k, top=3, batch_size=16)
    assert got == pytest.approx(expected, abs=1e-9)
    top1 = knn_accuracy(train_x, train_y, test_x, test_y, k=k)
    assert got > top1 if k > 1 else got == top1


def test_each_row_is_classified_as_the_reference_classifies_it():
    # An accuracy can agree while rows disagree (one wrong hit, one wrong miss): each test
    # row alone, scored against every class, must match the reference's prediction.
    rng = np.random.default_rng(7)
    train_x = rng.normal(size=(60, 5)).astype("float32")
    train_y = rng.integers(0, 3, size=60)
    test_x = rng.normal(size=(12, 5)).astype("float32")
    for label in range(3):
        labels = np.full(12, label)
        expected = _reference_hits(train_x, train_y, test_x, labels, 5, 0.07, 3)
        got = [
            knn_accuracy(train_x, train_y, test_x[i : i + 1], labels[i : i + 1], k=5, num_classes=3)
            for i in range(12)
        ]
        np.testing.assert_array_equal(got, expected, err_msg=f"class {label}")
    # every row is predicted as exactly one class
    predicted = [
        _reference_hits(train_x, train_y, test_x, np.full(12, c), 5, 0.07, 3) for c in range(3)
    ]
    np.testing.assert_array_equal(np.sum(predicted, axis=0), np.ones(12))


def test_perfect_clusters_and_k_larger_than_bank():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 6) * 10
    train_y = np.repeat(np.arange(3), 10)
    test_y = np.tile(np.arange(3), 5)
    train_x = centres[train_y] + 0.1 * rng.normal(size=(30, 6))
    test_x = centres[test_y] + 0.1 * rng.normal(size=(15, 6))
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5) == 1.0
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=500, num_classes=3) == 1.0


def test_bad_inputs():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="differ"):
        knn_accuracy(x, [0, 1, 0, 1], np.ones((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="k must"):
        knn_accuracy(x, [0, 1, 0, 1], x, [0, 1, 0, 1], k=0)
    with pytest.raises(ValueError, match="top must be between 1 and the 2 classes"):
        knn_accuracy(x, [0, 1, 0, 1], x, [0, 1, 0, 1], top=5)


def test_vote_weights_follow_exp_of_similarity_over_temperature():
    # one very close neighbour of class 0 against two farther ones of class 1 (k = 3):
    # exp(0.99 / T) beats 2 exp(0.5 / T) for T = 0.07, loses for a flat T = 10.
    bank = np.array([[0.99, np.sqrt(1 - 0.99**2)], [0.5, np.sqrt(0.75)], [0.5, -np.sqrt(0.75)]])
    labels = np.array([0, 1, 1])
    query = np.array([[3.0, 0.0]])  # only the direction counts
    assert knn_accuracy(bank, labels, query, [0], k=3, temperature=0.07) == 1.0
    assert knn_accuracy(bank, labels, query, [1], k=3, temperature=10.0) == 1.0
    # k = 1 keeps only the nearest neighbour whatever the temperature
    assert knn_accuracy(bank, labels, query, [0], k=1, temperature=10.0) == 1.0


def test_small_temperatures_do_not_overflow_the_votes():
    # exp(s / T) overflows float32 once s / T > 88. Class 1's two neighbours (s = 0.999,
    # 0.99) outvote class 0's one (s = 1) at T = 0.01 and lose at T = 0.005, in float64.
    cosines = np.array([1.0, 0.999, 0.99])
    bank = np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1)
    labels = np.array([0, 1, 1])
    assert knn_accuracy(bank, labels, [[1.0, 0.0]], [1], k=3, temperature=0.01) == 1.0
    assert knn_accuracy(bank, labels, [[1.0, 0.0]], [0], k=3, temperature=0.005) == 1.0


def test_tied_votes_are_one_prediction_not_a_hit_for_every_tied_class():
    # Collapsed features: every neighbour equally similar, so the classes' votes are the
    # counts of their neighbours. Two balanced classes tie: one prediction (class 0),
    # right for half of the test rows, as DINO's sort gives.
    train_x = np.ones((40, 4), "float32")
    train_y = np.repeat([0, 1], 20)
    test_x = np.ones((10, 4), "float32")
    test_y = np.repeat([0, 1], 5)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=40) == 0.5
    expected = _reference_knn(train_x, train_y, test_x, test_y, 40, 0.07, 2)
    assert expected == 0.5
    # Ten classes, two of them with (tied) votes: 7 ranks before 9, the other eight tie at
    # zero, and top-5 takes the three of lowest index among them.
    labels = np.arange(10)
    train_y = np.repeat([7, 9], 20)
    for top, accuracy in ((1, 0.1), (5, 0.5)):
        got = knn_accuracy(train_x, train_y, test_x, labels, k=40, num_classes=10, top=top)
        expected = _reference_knn(train_x, train_y, test_x, labels, 40, 0.07, 10, top=top)
        assert got == expected == accuracy


def test_non_finite_features_are_refused_with_their_rows():
    # A NaN similarity makes the votes NaN, and NaN compares false with every vote, so a
    # NaN row used to rank every true class first: about 1.0 instead of the clean 0.05.
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(50, 8)), rng.normal(size=(20, 8))
    train_y, test_y = np.arange(50) % 5, np.arange(20) % 5
    assert knn_accuracy(train_x, train_y, test_x, test_y) == pytest.approx(0.05)
    train_x[7] = np.nan
    with pytest.raises(
        ValueError, match=r"NaN or infinite train_features in 1 of 50 rows \(rows 7\)"
    ):
        knn_accuracy(train_x, train_y, test_x, test_y)
    train_x[7] = 0.0
    test_x[[2, 4]] = np.inf
    with pytest.raises(ValueError, match=r"test_features in 2 of 20 rows \(rows 2, 4\)"):
        knn_accuracy(train_x, train_y, test_x, test_y)


def test_labels_must_be_class_indices_below_num_classes():
    x = np.eye(4, 3)
    labels = [0, 1, 2, 0]
    with pytest.raises(ValueError, match=r"test_labels must be below num_classes=3.*largest 5"):
        knn_accuracy(x, labels, x[:1], [5], num_classes=3)
    with pytest.raises(ValueError, match="train_labels must be below num_classes=2"):
        knn_accuracy(x, labels, x[:1], [0], num_classes=2)
    # A negative label used to vote for the last class (votes[:, -1]) without a word.
    with pytest.raises(ValueError, match="test_labels must be class indices.*got -1"):
        knn_accuracy(x, labels, x[:1], [-1], num_classes=3)
    with pytest.raises(ValueError, match="integer class indices, got the value 1.5"):
        knn_accuracy(x, labels, x[:1], [1.5])
    # Integral floats are class indices too.
    assert knn_accuracy(x, np.asarray(labels, "float32"), x[1:2], [1.0], k=1) == 1.0
