import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import (
    cosine_schedule,
    linear_schedule,
    linear_warmup_cosine,
    linspace_schedule,
)


def _value(x):
    assert keras.backend.standardize_dtype(x.dtype) == "float32"
    return float(ops.convert_to_numpy(x))


def test_cosine_schedule():
    cases = [
        (0, 0.996),
        (25, 1.0 - 0.004 * (1 + math.cos(math.pi / 4)) / 2),
        (50, 0.998),
        (100, 1.0),
        (250, 1.0),
    ]
    for step, expected in cases:
        got = _value(cosine_schedule(step, 100, 0.996, 1.0))
        np.testing.assert_allclose(got, expected, rtol=1e-7, err_msg=f"step {step}")


def test_cosine_schedule_decreasing_and_tensor_steps():
    # DINO's weight decay 0.04 -> 0.4 and a decreasing learning rate, with an int64 step variable.
    step = keras.Variable(30, dtype="int64", trainable=False)
    np.testing.assert_allclose(
        _value(cosine_schedule(step, 40, 0.04, 0.4)),
        0.4 - 0.36 * (1 + math.cos(math.pi * 0.75)) / 2,
        rtol=1e-6,
    )
    step.assign(60)
    np.testing.assert_allclose(_value(cosine_schedule(step, 40, 0.04, 0.4)), 0.4, rtol=1e-7)
    np.testing.assert_allclose(
        _value(cosine_schedule(ops.convert_to_tensor(5), 10, 1.0, 0.0)), 0.5, atol=1e-7
    )


def test_linear_schedule():
    for step, expected in [(0, 0.04), (10, 0.05), (15, 0.055), (30, 0.07), (1000, 0.07)]:
        got = _value(linear_schedule(step, 30, 0.04, 0.07))
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"step {step}")


@pytest.mark.parametrize("num", [1, 2, 5, 30])
def test_linspace_schedule_indexes_numpy_linspace(num):
    reference = np.concatenate((np.linspace(0.04, 0.07, num), np.full(5, 0.07)))
    for index, expected in enumerate(reference):
        got = _value(linspace_schedule(index, num, 0.04, 0.07))
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"index {index}")
    step = keras.Variable(1, dtype="int64", trainable=False)  # a step counter as index
    np.testing.assert_allclose(_value(linspace_schedule(step, num, 0.04, 0.07)), reference[1])
    with pytest.raises(ValueError, match="num must be > 0"):
        linspace_schedule(0, 0, 0.04, 0.07)


def _dino_cosine_scheduler(base, final, total, warmup, warmup_start):
    """DINO's `utils.cosine_scheduler` (Caron et al. 2021), written from its definition: a
    `linspace` warm-up of `warmup` values, then a half cosine over the remaining steps."""
    warm = np.linspace(warmup_start, base, warmup)
    steps = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / len(steps)))
    return np.concatenate([warm, cosine])


@pytest.mark.parametrize("warmup", [1, 2, 10])
def test_linear_warmup_cosine_is_dinos_cosine_scheduler(warmup):
    total = 40
    reference = _dino_cosine_scheduler(1.0, 0.01, total, warmup, warmup_start=0.1)
    got = [
        _value(linear_warmup_cosine(step, warmup, total, 1.0, 0.01, warmup_start=0.1))
        for step in range(total + 3)
    ]
    np.testing.assert_allclose(got[:total], reference, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[total:], 0.01, rtol=1e-6)  # `final` from step K on


def test_linear_warmup_cosine_without_warmup_is_cosine():
    for step in (0, 7, 20, 30):
        np.testing.assert_allclose(
            _value(linear_warmup_cosine(step, 0, 20, 0.5, 0.0)),
            _value(cosine_schedule(step, 20, 0.5, 0.0)),
            rtol=1e-6,
            atol=1e-8,
        )


def test_rejects_bad_lengths():
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(0, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="larger"):
        linear_warmup_cosine(0, 10, 10, 1.0, 0.0)
