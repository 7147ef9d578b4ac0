import threading

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import sinkhorn_knopp


def _reference_sinkhorn(logits, temperature, iterations):
    """SwAV Algorithm 1 / DINOv2's sinkhorn_knopp_teacher, in float64."""
    q = np.exp(logits.astype(np.float64) / temperature).T  # (K, B)
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


@pytest.mark.parametrize("b,k,temperature", [(4, 3, 0.05), (6, 10, 0.1), (16, 5, 0.5)])
def test_equals_reference(b, k, temperature):
    rng = np.random.default_rng(b * k)
    logits = rng.uniform(-1, 1, size=(b, k)).astype("float32")
    got = ops.convert_to_numpy(sinkhorn_knopp(logits, temperature, num_iterations=3))
    assert got.shape == (b, k)
    np.testing.assert_allclose(
        got, _reference_sinkhorn(logits, temperature, 3), rtol=1e-4, atol=1e-6
    )


def test_marginals_converge():
    rng = np.random.default_rng(0)
    b, k = 12, 4
    logits = rng.normal(size=(b, k)).astype("float32")
    q = ops.convert_to_numpy(sinkhorn_knopp(logits, 0.5, num_iterations=50))
    np.testing.assert_allclose(q.sum(axis=1), np.ones(b), atol=1e-5)
    np.testing.assert_allclose(q.sum(axis=0), np.full(k, b / k), atol=1e-3)
    # Three iterations leave the prototype marginals visibly off: the test above can fail.
    q3 = ops.convert_to_numpy(sinkhorn_knopp(logits, 0.5, num_iterations=3))
    assert np.abs(q3.sum(axis=0) - b / k).max() > 1e-3


def test_large_logits_stay_finite():
    logits = np.array([[10.0, -10.0, 0.0], [9.0, 0.0, 10.0], [0.0, 10.0, 1.0]], "float32")
    q = ops.convert_to_numpy(sinkhorn_knopp(logits, 0.01))  # exp(1000) without the shift
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)
    shifted = logits - logits.max()
    np.testing.assert_allclose(q, _reference_sinkhorn(shifted, 0.01, 3), rtol=1e-4, atol=1e-6)


def test_reduce_sum_hook_matches_a_global_batch():
    # Two identical replicas: every global sum is twice the local one, so each replica's
    # result must equal its rows of the Sinkhorn-Knopp of the concatenated batch.
    rng = np.random.default_rng(1)
    logits = rng.uniform(-1, 1, size=(5, 7)).astype("float32")
    calls = []

    def all_reduce(x):
        calls.append(tuple(x.shape))
        return 2.0 * x

    local = ops.convert_to_numpy(
        sinkhorn_knopp(logits, 0.1, reduce_sum=all_reduce, reduce_max=lambda x: x)
    )
    both = ops.convert_to_numpy(sinkhorn_knopp(np.concatenate([logits, logits]), 0.1))
    np.testing.assert_allclose(local, both[:5], rtol=1e-5, atol=1e-7)
    assert (1, 7) in calls and () in calls


def _run_replicas_in_lockstep(logits_per_replica, **kwargs):
    """Each replica's `sinkhorn_knopp` in its own thread, the hooks exchanging their values
    through a barrier as an all-reduce does: replicas with different data and sizes."""
    count = len(logits_per_replica)
    barrier = threading.Barrier(count, timeout=60)
    slots = [None] * count

    def hook(replica, reduce):
        def all_reduce(x):
            slots[replica] = ops.convert_to_numpy(x)
            barrier.wait()
            result = reduce(np.stack(slots), axis=0)
            barrier.wait()  # every replica has read the slots before they are reused
            return ops.convert_to_tensor(result)

        return all_reduce

    results, errors = [None] * count, []

    def run(replica):
        try:
            q = sinkhorn_knopp(
                logits_per_replica[replica],
                0.1,
                reduce_sum=hook(replica, np.sum),
                reduce_max=hook(replica, np.max),
                **{k: v[replica] for k, v in kwargs.items()},
            )
            results[replica] = ops.convert_to_numpy(q)
        except Exception as error:  # surfaced below; the other replicas stop waiting
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_reduce_hooks_over_replicas_with_different_data():
    # Different logits, sizes and maxima on each replica (one replica's logits far below
    # the other's, so a shift that is not the global maximum would show): each replica's
    # rows of the global batch's Sinkhorn-Knopp.
    rng = np.random.default_rng(6)
    first = rng.uniform(-1, 1, size=(5, 7)).astype("float32")
    second = (rng.uniform(-1, 1, size=(3, 7)) - 4.0).astype("float32")
    local = _run_replicas_in_lockstep([first, second])
    both = _reference_sinkhorn(np.concatenate([first, second]), 0.1, 3)
    np.testing.assert_allclose(np.concatenate(local), both, rtol=1e-4, atol=1e-6)
    # With padding rows, a different number on each replica.
    valid = [np.array([True, False, True, True, True]), np.array([False, True, True])]
    local = _run_replicas_in_lockstep([first, second], valid=valid)
    rows = np.concatenate([first[valid[0]], second[valid[1]]])
    both = _reference_sinkhorn(rows, 0.1, 3)
    np.testing.assert_allclose(
        np.concatenate([local[0][valid[0]], local[1][valid[1]]]), both, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_array_equal(local[0][~valid[0]], 0.0)
    np.testing.assert_array_equal(local[1][~valid[1]], 0.0)


def test_samples_far_below_the_maximum_stay_finite():
    # At T = 0.04 a spread of 20 in the logits is exp(-500): in the linear domain whole
    # prototype sums underflow to zero and the result is NaN.
    rng = np.random.default_rng(3)
    logits = rng.uniform(-1, 1, size=(8, 5)).astype("float32")
    logits[:4] -= 20.0
    q = ops.convert_to_numpy(sinkhorn_knopp(logits, 0.04))
    assert np.all(np.isfinite(q))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-5)
    # float64 still holds exp(-560): the textbook iterations are the reference there.
    reference = _reference_sinkhorn(logits - logits.max(), 0.04, 3)
    np.testing.assert_allclose(q, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32(dtype):
    logits = ops.cast(np.random.default_rng(2).uniform(-1, 1, (6, 4)).astype("float32"), dtype)
    q = sinkhorn_knopp(logits, 0.1)
    assert keras.backend.standardize_dtype(q.dtype) == "float32"
    rounded = ops.convert_to_numpy(ops.cast(logits, "float32"))
    np.testing.assert_allclose(
        ops.convert_to_numpy(q), _reference_sinkhorn(rounded, 0.1, 3), rtol=1e-4, atol=1e-6
    )


def test_valid_rows_only():
    # DINOv2's masked patches padded to a fixed buffer: the padding rows must not count in
    # the prototype sums nor in B.
    rng = np.random.default_rng(4)
    logits = rng.uniform(-1, 1, size=(9, 6)).astype("float32")
    valid = np.array([True, False, True, True, False, True, False, True, True])
    noisy = logits.copy()
    noisy[~valid] = np.nan
    q = ops.convert_to_numpy(sinkhorn_knopp(noisy, 0.1, num_iterations=3, valid=valid))
    assert q.shape == (9, 6)
    np.testing.assert_allclose(
        q[valid], _reference_sinkhorn(logits[valid], 0.1, 3), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_array_equal(q[~valid], 0.0)
    # No valid row at all: zeros, not NaN.
    empty = ops.convert_to_numpy(sinkhorn_knopp(logits, 0.1, valid=np.zeros(9, bool)))
    np.testing.assert_array_equal(empty, 0.0)


def test_valid_rows_with_the_reduce_hooks():
    # Two identical replicas, each with padding: each replica's valid rows equal their rows
    # of the Sinkhorn-Knopp of both replicas' valid rows together.
    rng = np.random.default_rng(5)
    logits = rng.uniform(-1, 1, size=(6, 4)).astype("float32")
    valid = np.array([True, True, False, True, False, True])
    local = ops.convert_to_numpy(
        sinkhorn_knopp(
            logits, 0.1, reduce_sum=lambda x: 2.0 * x, reduce_max=lambda x: x, valid=valid
        )
    )
    both = _reference_sinkhorn(np.concatenate([logits[valid], logits[valid]]), 0.1, 3)
    np.testing.assert_allclose(local[valid], both[: valid.sum()], rtol=1e-4, atol=1e-6)
    # A replica with only padding rows still takes part (its rows are zeros, finite).
    padding = ops.convert_to_numpy(
        sinkhorn_knopp(
            logits,
            0.1,
            reduce_sum=lambda x: 2.0 * x,
            reduce_max=lambda x: x,
            valid=~np.ones(6, bool),
        )
    )
    np.testing.assert_array_equal(padding, 0.0)


def test_rejects_valid_of_the_wrong_shape():
    with pytest.raises(ValueError, match="valid"):
        sinkhorn_knopp(np.zeros((4, 3), "float32"), 0.1, valid=np.ones(5, bool))
