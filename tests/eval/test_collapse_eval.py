import math

import numpy as np
import pytest

from keras_ssl.eval import distribution_entropy, effective_rank, normalized_embedding_std


def _with_singular_values(rng, values, n=64, d=16):
    u, _ = np.linalg.qr(rng.normal(size=(n, len(values))))
    v, _ = np.linalg.qr(rng.normal(size=(d, len(values))))
    return u @ np.diag(values) @ v.T


def test_effective_rank_matches_the_rankme_formula():
    rng = np.random.default_rng(0)
    values = np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    z = _with_singular_values(rng, values)
    sigma = np.concatenate([values, np.zeros(16 - len(values))])  # all min(N, D) of them
    p = sigma / sigma.sum() + 1e-7
    expected = math.exp(-np.sum(p * np.log(p)))
    assert effective_rank(z) == pytest.approx(expected, rel=1e-5)
    # r equal singular values -> rank r; a rank-one matrix -> 1
    assert effective_rank(_with_singular_values(rng, np.ones(7))) == pytest.approx(7.0, rel=1e-4)
    assert effective_rank(np.outer(rng.normal(size=50), rng.normal(size=8))) == pytest.approx(
        1.0, abs=1e-4
    )


def test_normalized_std_of_collapsed_and_isotropic_embeddings():
    rng = np.random.default_rng(1)
    assert normalized_embedding_std(np.tile(rng.normal(size=(1, 32)), (100, 1))) < 1e-7
    d = 64
    z = rng.normal(size=(4000, d))
    assert normalized_embedding_std(z) * math.sqrt(d) == pytest.approx(1.0, abs=0.03)
    # the formula: mean over dimensions of the std of the row-normalised matrix
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert normalized_embedding_std(z) == pytest.approx(np.std(zn, axis=0).mean(), rel=1e-9)
    with pytest.raises(ValueError, match="at least two"):
        normalized_embedding_std(np.ones((1, 4)))


def test_distribution_entropy():
    p = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(distribution_entropy(p), [math.log(4), 0.0, math.log(2)], atol=1e-9)


def test_non_finite_embeddings_have_no_rank():
    z = np.random.default_rng(0).normal(size=(8, 4))
    for bad in (np.nan, np.inf):
        z[2, 1] = bad
        assert np.isnan(effective_rank(z))
