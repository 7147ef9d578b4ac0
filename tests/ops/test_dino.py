import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import dino_center_update, dino_loss
from tests._support.gradients import assert_gradients_close, gradients, numeric_gradients


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _reference_dino(students, teachers, center, tau_s, tau_t, skip_same_view=True):
    """Caron et al. 2021, eq. 1 / Algorithm 1, one sample and one pair at a time."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teachers):
        for v, s in enumerate(students):
            if skip_same_view and v == i:
                continue
            p_t = _softmax((t.astype(np.float64) - center) / tau_t)
            p_s = _softmax(s.astype(np.float64) / tau_s)
            total += np.mean([-np.sum(p_t[n] * np.log(p_s[n])) for n in range(len(t))])
            pairs += 1
    return total / pairs


def _views(rng, count, n, k, scale=1.0):
    return [scale * rng.normal(size=(n, k)).astype("float32") for _ in range(count)]


@pytest.mark.parametrize(
    "num_views,n,k,tau_s,tau_t",
    [(2, 3, 5, 0.1, 0.04), (4, 2, 16, 0.1, 0.04), (4, 2, 16, 0.1, 0.07), (6, 3, 7, 0.5, 0.2)],
)
def test_equals_reference(num_views, n, k, tau_s, tau_t):
    rng = np.random.default_rng(num_views * 10 + n)
    students = _views(rng, num_views, n, k)
    teachers = _views(rng, 2, n, k)
    center = rng.normal(size=(k,)).astype("float32")
    got = float(dino_loss(students, teachers, center, tau_s, tau_t))
    expected = _reference_dino(students, teachers, center, tau_s, tau_t)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("num_teachers,num_views", [(1, 3), (3, 3), (3, 6)])
def test_equals_reference_for_other_teacher_counts(num_teachers, num_views):
    rng = np.random.default_rng(num_teachers * 10 + num_views)
    students, teachers = _views(rng, num_views, 3, 11), _views(rng, num_teachers, 3, 11)
    center = rng.normal(size=(11,)).astype("float32")
    got = float(dino_loss(students, teachers, center, 0.1, 0.04))
    expected = _reference_dino(students, teachers, center, 0.1, 0.04)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_same_view_pairs_are_excluded():
    rng = np.random.default_rng(0)
    teachers = _views(rng, 2, 4, 8, scale=3.0)
    # The student agrees with the teacher on its own views and disagrees elsewhere: the
    # same-view pairs would pull the loss down a lot if they were counted.
    students = [teachers[0], teachers[1], *_views(rng, 2, 4, 8, scale=3.0)]
    center = np.zeros(8, "float32")
    got = float(dino_loss(students, teachers, center, 0.1, 0.04))
    expected = _reference_dino(students, teachers, center, 0.1, 0.04)
    including = _reference_dino(students, teachers, center, 0.1, 0.04, skip_same_view=False)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert abs(got - including) > 0.5


def test_tensor_temperature_and_row_center():
    rng = np.random.default_rng(1)
    students, teachers = _views(rng, 3, 2, 6), _views(rng, 2, 2, 6)
    center = rng.normal(size=(1, 6)).astype("float32")
    tau_t = ops.convert_to_tensor(0.055)
    got = float(dino_loss(students, teachers, center, teacher_temperature=tau_t))
    expected = _reference_dino(students, teachers, center, 0.1, 0.055)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_uniform_teacher_gives_log_k():
    # A collapsed, uniform teacher and student: the loss is ln(K) (dino #43's plateau).
    k = 32
    zeros = [np.zeros((3, k), "float32")] * 4
    got = float(dino_loss(zeros, zeros[:2], np.zeros(k, "float32")))
    np.testing.assert_allclose(got, np.log(k), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32(dtype):
    rng = np.random.default_rng(2)
    students = [ops.cast(x, dtype) for x in _views(rng, 4, 3, 16, scale=2.0)]
    teachers = [ops.cast(x, dtype) for x in _views(rng, 2, 3, 16, scale=2.0)]
    center = ops.cast(np.full((16,), 0.1, "float32"), dtype)
    loss = dino_loss(students, teachers, center)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    as_np = [ops.convert_to_numpy(ops.cast(x, "float32")) for x in (*students, *teachers, center)]
    expected = _reference_dino(as_np[:4], as_np[4:6], as_np[6], 0.1, 0.04)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_center_update_closed_form():
    rng = np.random.default_rng(3)
    center = rng.normal(size=(1, 5)).astype("float32")
    teachers = _views(rng, 2, 4, 5)
    got = ops.convert_to_numpy(dino_center_update(center, teachers, momentum=0.9))
    expected = 0.9 * center + 0.1 * np.concatenate(teachers).mean(axis=0, keepdims=True)
    assert got.shape == (1, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    flat = ops.convert_to_numpy(dino_center_update(center[0], np.concatenate(teachers), 0.5))
    np.testing.assert_allclose(
        flat, 0.5 * center[0] + 0.5 * np.concatenate(teachers).mean(axis=0), rtol=1e-5, atol=1e-7
    )
    assert flat.shape == (5,)


def test_center_update_reduce_mean_hook():
    rng = np.random.default_rng(4)
    center = rng.normal(size=(5,)).astype("float32")
    teachers = _views(rng, 2, 3, 5)
    seen = []

    def global_mean(x):
        seen.append(tuple(x.shape))
        # Pretend the other replica's teacher logits were all zeros.
        return ops.sum(x, axis=0) / (2 * x.shape[0])

    got = ops.convert_to_numpy(dino_center_update(center, teachers, 0.9, reduce_mean=global_mean))
    assert seen == [(6, 5)]
    expected = 0.9 * center + 0.1 * np.concatenate(teachers).sum(axis=0) / 12
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_rejects_bad_inputs():
    x = np.zeros((2, 4), "float32")
    with pytest.raises(ValueError, match="list"):
        dino_loss(x, [x, x], np.zeros(4, "float32"))
    with pytest.raises(ValueError, match="same"):
        dino_loss([x, np.zeros((2, 5), "float32")], [x, x], np.zeros(4, "float32"))
    with pytest.raises(ValueError, match="pair"):
        dino_loss([x], [x], np.zeros(4, "float32"))


def test_center_update_over_valid_rows_only():
    rng = np.random.default_rng(5)
    center = rng.normal(size=(1, 5)).astype("float32")
    logits = rng.normal(size=(7, 5)).astype("float32")
    valid = np.array([True, False, True, True, False, False, True])
    noisy = logits.copy()
    noisy[~valid] = np.nan  # ignored rows may hold anything
    got = ops.convert_to_numpy(dino_center_update(center, noisy, 0.9, valid=valid))
    expected = 0.9 * center + 0.1 * logits[valid].mean(axis=0, keepdims=True)
    assert got.shape == (1, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # Without a valid row the centre stays.
    none = ops.convert_to_numpy(dino_center_update(center, logits, 0.9, valid=np.zeros(7, bool)))
    np.testing.assert_array_equal(none, center)


def test_center_update_over_valid_rows_of_all_replicas():
    # The other replica holds the same rows with the complementary flags: the global mean
    # of the valid rows is then the mean of all 6 local rows, through one reduction.
    rng = np.random.default_rng(6)
    center = rng.normal(size=(4,)).astype("float32")
    logits = rng.normal(size=(6, 4)).astype("float32")
    valid = np.array([True, True, False, True, False, False])
    seen = []

    def global_mean(x):
        seen.append(tuple(x.shape))
        flags = np.reshape(valid, (-1, 1))
        other = np.concatenate([np.where(flags, 0.0, logits), ~flags], axis=1)
        return (ops.sum(x, axis=0) + ops.sum(other.astype("float32"), axis=0)) / 12.0

    got = ops.convert_to_numpy(dino_center_update(center, logits, 0.8, global_mean, valid))
    assert seen == [(6, 5)]
    np.testing.assert_allclose(got, 0.8 * center + 0.2 * logits.mean(axis=0), rtol=1e-5, atol=1e-7)


def test_gradients_reach_the_students_only():
    rng = np.random.default_rng(6)
    s0, s1, s2, t0, t1 = _views(rng, 5, 2, 4)
    center = rng.normal(size=(4,)).astype("float32")

    def loss(s0, s1, s2, t0, t1, center):
        return dino_loss([s0, s1, s2], [t0, t1], center, 0.1, 0.04)

    def reference(s0, s1, s2):
        return _reference_dino([s0, s1, s2], [t0, t1], center, 0.1, 0.04)

    got = gradients(loss, s0, s1, s2, t0, t1, center)
    assert_gradients_close(got[:3], numeric_gradients(reference, s0, s1, s2))
    for teacher_side in got[3:]:  # the teachers' outputs and the center
        np.testing.assert_array_equal(teacher_side, 0.0)
