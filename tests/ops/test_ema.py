import contextlib

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import cosine_schedule, ema_update


def _no_grad():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _pairs(rng):
    shapes = [(3, 2), (4,), ()]
    teacher = [rng.normal(size=s).astype("float32") for s in shapes]
    student = [rng.normal(size=s).astype("float32") for s in shapes]
    return teacher, student


def test_one_update_closed_form():
    rng = np.random.default_rng(0)
    teacher0, student0 = _pairs(rng)
    teacher = [keras.Variable(t) for t in teacher0]
    student = [keras.Variable(s) for s in student0]
    ema_update(teacher, student, momentum=0.99)
    for var, t, s in zip(teacher, teacher0, student0, strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(var), 0.99 * t + 0.01 * s, rtol=1e-6, atol=1e-7
        )
    # The students are untouched.
    for var, s in zip(student, student0, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(var), s)


@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_several_updates_are_a_power_mixture(momentum):
    rng = np.random.default_rng(1)
    teacher0, student0 = _pairs(rng)
    teacher = [keras.Variable(t) for t in teacher0]
    with _no_grad():
        for _ in range(5):
            # Students may be plain tensors as well as variables.
            ema_update(teacher, [ops.convert_to_tensor(s) for s in student0], momentum)
    m5 = momentum**5
    for var, t, s in zip(teacher, teacher0, student0, strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(var), m5 * t + (1 - m5) * s, rtol=1e-5, atol=1e-6
        )


def test_tensor_momentum_from_a_schedule():
    teacher = keras.Variable(np.zeros((2,), "float32"))
    student = keras.Variable(np.ones((2,), "float32"))
    step = keras.Variable(50, dtype="int64", trainable=False)
    momentum = cosine_schedule(step, 100, 0.996, 1.0)  # 0.998
    ema_update([teacher], [student], momentum)
    np.testing.assert_allclose(ops.convert_to_numpy(teacher), [0.002, 0.002], rtol=1e-4)


def test_inside_a_stateless_scope():
    teacher = keras.Variable(np.full((3,), 2.0, "float32"))
    student = keras.Variable(np.zeros((3,), "float32"))
    with keras.StatelessScope() as scope:
        ema_update([teacher], [student], 0.75)
        ema_update([teacher], [student], 0.75)
        inside = ops.convert_to_numpy(scope.get_current_value(teacher))
    np.testing.assert_allclose(inside, 2.0 * 0.75**2 * np.ones(3), rtol=1e-6)
    # Stateless: the variable itself keeps its value.
    np.testing.assert_array_equal(ops.convert_to_numpy(teacher), np.full((3,), 2.0))


def test_rejects_mismatches():
    a = keras.Variable(np.zeros((2,), "float32"))
    with pytest.raises(ValueError, match="as many"):
        ema_update([a], [a, a], 0.9)
    with pytest.raises(ValueError, match="shape"):
        ema_update([a], [np.zeros((3,), "float32")], 0.9)


def test_teachers_of_several_dtypes_keep_theirs():
    # One update over float16 and float32 teachers with float32 students: each teacher is
    # computed and stored in its own dtype.
    rng = np.random.default_rng(2)
    t16, t32, s16, s32 = (rng.normal(size=(5,)).astype("float32") for _ in range(4))
    teachers = [keras.Variable(t16, dtype="float16"), keras.Variable(t32)]
    ema_update(teachers, [s16, keras.Variable(s32)], momentum=0.75)
    assert [keras.backend.standardize_dtype(t.dtype) for t in teachers] == ["float16", "float32"]
    expected16 = 0.75 * t16.astype("float16").astype(np.float64) + 0.25 * s16
    np.testing.assert_allclose(ops.convert_to_numpy(teachers[0]), expected16, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(
        ops.convert_to_numpy(teachers[1]), 0.75 * t32 + 0.25 * s32, rtol=1e-6
    )


def _ulp(values, dtype):
    """Spacing of `dtype` at each of the float64 `values` (float16 or bfloat16)."""
    if dtype == "float16":
        return np.spacing(np.abs(values).astype(np.float16)).astype(np.float64)
    return np.spacing(np.abs(values).astype(np.float32)).astype(np.float64) * 2.0**16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["float", "tensor"])
def test_16_bit_teachers_are_rounded_once(dtype, as_tensor):
    # The update of a 16-bit teacher is its float64 value rounded once to the teacher's
    # dtype (within half a unit in the last place), whether the momentum is a number or a
    # tensor, and for float32 as well as 16-bit students.
    rng = np.random.default_rng(3)
    teachers = [keras.Variable(rng.normal(size=(2000,)), dtype=dtype) for _ in range(2)]
    students = [
        rng.normal(size=(2000,)).astype("float32"),
        keras.Variable(rng.normal(size=(2000,)), dtype=dtype),
    ]
    before = [_float64(t) for t in teachers]
    momentum = ops.convert_to_tensor(0.996) if as_tensor else 0.996
    ema_update(teachers, students, momentum)
    for t, t0, s in zip(teachers, before, students, strict=True):
        exact = 0.996 * t0 + 0.004 * _float64(s)
        assert np.max(np.abs(_float64(t) - exact) / _ulp(exact, dtype)) <= 0.51


def _float64(x):
    return ops.convert_to_numpy(ops.cast(ops.convert_to_tensor(x), "float32")).astype(np.float64)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_zero_copies_and_one_keeps_exactly(momentum):
    teacher0 = np.array([1e8, -3.0, 0.1], "float32")
    student0 = np.array([1.0, 7e-8, -2e7], "float32")
    teacher = keras.Variable(teacher0)
    ema_update([teacher], [keras.Variable(student0)], momentum)
    expected = student0 if momentum == 0.0 else teacher0
    np.testing.assert_array_equal(ops.convert_to_numpy(teacher), expected)


def test_one_multi_tensor_call_on_torch_and_no_update_lost_to_an_autocast_copy(monkeypatch):
    from keras.src.backend.common.variables import AutocastScope

    calls = []
    if keras.backend.backend() == "torch":
        import torch

        original = torch._foreach_lerp_
        monkeypatch.setattr(
            torch, "_foreach_lerp_", lambda *a: calls.append(len(a[0])) or original(*a)
        )
    teachers = [keras.Variable(np.full((3,), 0.1, "float32")) for _ in range(2)]
    students = [keras.Variable(np.full((3,), 1 / 3, "float32")) for _ in range(2)]
    ema_update(teachers, students, 0.75)
    # Inside a mixed-precision call `.value` is a 16-bit copy: the update must reach the
    # variables, computed from their float32 values (float16 reads would be ~1e-4 off).
    with AutocastScope("float16"):
        ema_update(teachers, students, 0.75)
    assert calls == ([2, 2] if keras.backend.backend() == "torch" else [])
    expected = 0.75**2 * np.float32(0.1) + (1 - 0.75**2) * np.float32(1 / 3)
    for teacher in teachers:
        np.testing.assert_allclose(ops.convert_to_numpy(teacher), expected, rtol=1e-6)
