"""Step-indexed schedules of SSL hyper-parameters (momentum, temperature, weight decay)."""

import math

from keras import ops


def _progress(step, total_steps):
    """`clip(step / total_steps, 0, 1)` in float32."""
    if isinstance(total_steps, (int, float)) and total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}.")
    step = ops.cast(step, "float32")
    total = ops.cast(total_steps, "float32")
    return ops.clip(step / total, 0.0, 1.0)


def cosine_schedule(step, total_steps, start, end):
    """Cosine interpolation from `start` at step 0 to `end` at `total_steps`.

        value(k) = end - (end - start) * (1 + cos(pi * k / K)) / 2

    clamped to `end` for `k >= K` (and to `start` for `k <= 0`). BYOL's
    target decay rate (Grill et al. 2020, Sec. 3.2: `tau = 1 - (1 - tau_base)
    (cos(pi k / K) + 1) / 2`, 0.996 -> 1), DINO's teacher momentum (0.996 -> 1)
    and weight decay (0.04 -> 0.4).

    Args:
        step: the current step `k`, a scalar tensor or number
            (e.g. `optimizer.iterations`).
        total_steps: `K`.
        start: value at step 0.
        end: value at step `K` and after.

    Returns:
        A float32 scalar tensor.

    Example:

    >>> from keras_ssl.ops import cosine_schedule
    >>> round(float(cosine_schedule(50, 100, 0.996, 1.0)), 6)
    0.998
    """
    progress = _progress(step, total_steps)
    start = ops.cast(start, "float32")
    end = ops.cast(end, "float32")
    return end - (end - start) * (1.0 + ops.cos(math.pi * progress)) / 2.0


def linear_schedule(step, total_steps, start, end):
    """Linear interpolation from `start` at step 0 to `end` at `total_steps`, then constant.

        value(k) = start + (end - start) * min(max(k / K, 0), 1)

    For the official DINO and DINOv2 warm-ups, which reach `end` one index earlier, see
    `linspace_schedule`.

    Args:
        step: the current step `k`, a scalar tensor or number.
        total_steps: `K`, the length of the ramp.
        start: value at step 0.
        end: value at step `K` and after.

    Returns:
        A float32 scalar tensor.

    Example:

    >>> from keras_ssl.ops import linear_schedule
    >>> round(float(linear_schedule(10, 30, 0.04, 0.07)), 6)
    0.05
    """
    progress = _progress(step, total_steps)
    start = ops.cast(start, "float32")
    end = ops.cast(end, "float32")
    return start + (end - start) * progress


def linspace_schedule(index, num, start, end):
    """`numpy.linspace(start, end, num)[index]`, then `end` from index `num` on.

        value(i) = start + (end - start) * min(i / (num - 1), 1)       (num > 1)

    and, with `num = 1`, `start` at index 0 and `end` after. The warm-ups of the
    official DINO and DINOv2 code index such an array: DINO's teacher temperature by
    epoch (`np.linspace(0.04, 0.07, 30)[epoch]`, 0.07 from epoch 29 on), DINOv2's by
    iteration (its `CosineScheduler`'s `np.linspace` warm-up). Unlike
    `linear_schedule(i, num, ...)`, `end` is reached at index `num - 1`.

    Args:
        index: the counter `i` (epoch or step), a scalar tensor or number.
        num: the number of warm-up values (> 0).
        start: value at index 0.
        end: value at index `num - 1` and after.

    Returns:
        A float32 scalar tensor.

    Example:

    >>> from keras_ssl.ops import linspace_schedule
    >>> [round(float(linspace_schedule(i, 4, 0.04, 0.07)), 6) for i in (0, 1, 3, 9)]
    [0.04, 0.05, 0.07, 0.07]
    """
    if isinstance(num, (int, float)) and num <= 0:
        raise ValueError(f"num must be > 0, got {num}.")
    index = ops.cast(index, "float32")
    steps = ops.maximum(ops.cast(num, "float32") - 1.0, 1.0)
    progress = ops.clip(index / steps, 0.0, 1.0)
    start = ops.cast(start, "float32")
    end = ops.cast(end, "float32")
    return start + (end - start) * progress


def linear_warmup_cosine(step, warmup_steps, total_steps, base, final, warmup_start=0.0):
    """Linear warm-up then cosine decay (DINO's `cosine_scheduler`, Caron et al.
    2021, App. B: learning rate warmed up over 10 epochs, then cosine to its
    final value; SimCLR and BYOL use the same shape for the learning rate).

        value(k) = warmup_start + (base - warmup_start) * k / (W - 1)           for k < W
        value(k) = cosine_schedule(k - W, K - W, base, final)                   for k >= W

    The warm-up is DINO's `np.linspace(warmup_start, base, W)`: it reaches `base` at
    its last step `W - 1` (and is `warmup_start` alone for `W = 1`); the cosine starts
    from `base` again at step `W`. `K` (`total_steps`) counts the warm-up steps; the
    value is `final` from step `K` on. With `W = 0` it is a plain cosine schedule.

    Args:
        step: the current step `k`, a scalar tensor or number.
        warmup_steps: `W`, the length of the linear warm-up (>= 0).
        total_steps: `K`, warm-up included (> W).
        base: value reached at the end of the warm-up.
        final: value at step `K` and after.
        warmup_start: value at step 0.

    Returns:
        A float32 scalar tensor.

    Example:

    >>> from keras_ssl.ops import linear_warmup_cosine
    >>> [round(float(linear_warmup_cosine(k, 11, 111, 1.0, 0.0)), 6) for k in (5, 10, 61, 200)]
    [0.5, 1.0, 0.5, 0.0]
    """
    if isinstance(warmup_steps, (int, float)) and warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    if (
        isinstance(warmup_steps, (int, float))
        and isinstance(total_steps, (int, float))
        and total_steps <= warmup_steps
    ):
        raise ValueError(
            f"total_steps ({total_steps}) must be larger than warmup_steps ({warmup_steps})."
        )
    step = ops.cast(step, "float32")
    warmup = ops.cast(warmup_steps, "float32")
    total = ops.cast(total_steps, "float32")
    warmup_start = ops.cast(warmup_start, "float32")
    base = ops.cast(base, "float32")
    warm = warmup_start + (base - warmup_start) * ops.maximum(step, 0.0) / ops.maximum(
        warmup - 1.0, 1.0
    )
    cosine = cosine_schedule(step - warmup, total - warmup, base, final)
    return ops.where(step < warmup, warm, cosine)
