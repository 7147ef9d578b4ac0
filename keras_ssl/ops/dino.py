"""The DINO self-distillation loss and its teacher centring."""

import functools

from keras import ops


def _as_view_list(views, name):
    if not isinstance(views, (list, tuple)) or len(views) == 0:
        raise ValueError(f"dino_loss expects {name} as a non-empty list of (N, K) tensors.")
    views = [ops.convert_to_tensor(v) for v in views]
    shape = tuple(views[0].shape)
    for v in views:
        if len(v.shape) != 2 or tuple(v.shape) != shape:
            raise ValueError(
                f"dino_loss expects every tensor of {name} to have the same (N, K) shape, "
                f"got {[tuple(v.shape) for v in views]}."
            )
    return views


def dino_loss(
    student_logits,
    teacher_logits,
    center,
    student_temperature=0.1,
    teacher_temperature=0.04,
):
    """DINO loss (Caron et al. 2021, "Emerging Properties in Self-Supervised
    Vision Transformers", eq. 1 and Algorithm 1).

    The teacher's output on each global view `x in {x1_g, x2_g}` is centred
    by `c` and sharpened by `tau_t`, the student's output on every view `x'`
    is softened by `tau_s`:

        P_t(x)  = softmax((g_t(x) - c) / tau_t)        (stop-gradient)
        P_s(x') = softmax(g_s(x') / tau_s)

        L = 1 / |pairs| * sum_{x in global} sum_{x' in views, x' != x} H(P_t(x), P_s(x'))

    with `H(a, b) = -sum_k a_k log b_k` averaged over the batch. Pairs where the
    student and teacher see the same view are excluded; as in the official
    `DINOLoss`, student view `v` is the same view as teacher view `i` when
    `v == i`, so `student_logits` must list the global views first, in the same
    order as `teacher_logits`, then the local views. With V student views and
    2 teacher views there are `2 (V - 1)` pairs. Computed in float32 whatever
    the inputs' dtype.

    Args:
        student_logits: list of the V student views' `(N, K)` logits, global
            views first.
        teacher_logits: list of the global views' `(N, K)` teacher logits
            (2 in DINO).
        center: `(K,)` or `(1, K)` centre `c` (see `dino_center_update`).
        student_temperature: `tau_s` (0.1).
        teacher_temperature: `tau_t`, a float or scalar tensor (0.04, warmed up
            to 0.07 over 30 epochs in the paper; see `linspace_schedule`).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import dino_loss
    >>> rng = np.random.default_rng(0)
    >>> views = [rng.normal(size=(4, 32)).astype("float32") for _ in range(4)]
    >>> loss = dino_loss(views, views[:2], np.zeros(32, "float32"))
    >>> float(loss) > 0
    True
    """
    students = _as_view_list(student_logits, "student_logits")
    teachers = _as_view_list(teacher_logits, "teacher_logits")
    if tuple(students[0].shape) != tuple(teachers[0].shape):
        raise ValueError(
            "dino_loss expects student and teacher logits of the same (N, K) shape, got "
            f"{tuple(students[0].shape)} and {tuple(teachers[0].shape)}."
        )
    pairs = [(i, v) for i in range(len(teachers)) for v in range(len(students)) if v != i]
    if not pairs:
        raise ValueError("dino_loss needs at least one (teacher view, other student view) pair.")
    center = ops.cast(ops.stop_gradient(ops.convert_to_tensor(center)), "float32")
    teacher_temperature = ops.cast(teacher_temperature, "float32")
    teacher_probs = [
        ops.softmax(
            (ops.cast(ops.stop_gradient(t), "float32") - center) / teacher_temperature, axis=-1
        )
        for t in teachers
    ]
    student_log_probs = [
        ops.log_softmax(ops.cast(s, "float32") / student_temperature, axis=-1) for s in students
    ]
    # The sum over pairs, grouped by student view: each view's cross-entropy is taken
    # once, against the sum of the teacher distributions it is paired with.
    targets, total = {}, 0.0
    for v, log_probs in enumerate(student_log_probs):
        paired = tuple(i for i in range(len(teacher_probs)) if i != v)
        if not paired:
            continue
        if paired not in targets:
            targets[paired] = functools.reduce(ops.add, [teacher_probs[i] for i in paired])
        total = total + ops.mean(-ops.sum(targets[paired] * log_probs, axis=-1))
    return total / len(pairs)


def _batch_mean(x):
    return ops.mean(x, axis=0)


def dino_center_update(center, teacher_logits, momentum=0.9, reduce_mean=None, valid=None):
    """The new DINO centre (Caron et al. 2021, eq. 4 and Algorithm 1).

        c <- m c + (1 - m) * 1 / (2B) * sum_{i=1}^{2B} g_t(x_i)

    the mean running over the batch and both global views of the teacher's
    logits (before centring). Pure: returns the new value, the method assigns
    it to its centre variable. Gradient-free, float32.

    Args:
        center: `(K,)` or `(1, K)` current centre `c`; the result has its shape.
        teacher_logits: list of the global views' `(N, K)` teacher logits (or
            one `(M, K)` tensor of them concatenated).
        momentum: the centre momentum `m` (0.9).
        reduce_mean: callable mapping the `(M, K)` concatenated logits to their
            `(K,)` mean over axis 0; defaults to the local batch mean. A
            distributed method passes one that averages across replicas.
        valid: optional boolean `(M,)` over the concatenated logits: the mean runs over
            the True rows only (`sum of valid rows / number of valid rows`, both through
            `reduce_mean`, so across replicas too); the other rows are ignored (non-finite
            ones too), and without any valid row the centre stays as it is. DINOv2 uses it
            for the patch centre over the masked patches, padded to a fixed count.

    Returns:
        A float32 tensor of `center`'s shape.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import dino_center_update
    >>> t = [np.ones((2, 3), "float32"), 3 * np.ones((2, 3), "float32")]
    >>> [float(x) for x in dino_center_update(np.zeros(3, "float32"), t, momentum=0.5)]
    [1.0, 1.0, 1.0]
    """
    if isinstance(teacher_logits, (list, tuple)):
        logits = ops.concatenate([ops.convert_to_tensor(t) for t in teacher_logits], axis=0)
    else:
        logits = ops.convert_to_tensor(teacher_logits)
    logits = ops.cast(ops.stop_gradient(logits), "float32")
    center = ops.cast(ops.stop_gradient(ops.convert_to_tensor(center)), "float32")
    momentum = ops.cast(momentum, "float32")
    if valid is None:
        batch_center = (reduce_mean or _batch_mean)(logits)
        new_center = momentum * center + (1.0 - momentum) * batch_center
        return ops.reshape(new_center, ops.shape(center))
    keep = ops.reshape(ops.cast(ops.convert_to_tensor(valid), "bool"), (-1, 1))
    # mean(valid rows, 0 elsewhere) / mean(valid flags) = sum of valid rows / their count,
    # one reduction for both (a global mean divides both by the same number of rows).
    stats = (reduce_mean or _batch_mean)(
        ops.concatenate(
            [ops.where(keep, logits, ops.zeros_like(logits)), ops.cast(keep, "float32")], axis=1
        )
    )
    count = stats[-1]
    batch_center = stats[:-1] / ops.maximum(count, 1e-30)
    new_center = ops.reshape(momentum * center, (-1,)) + (1.0 - momentum) * batch_center
    new_center = ops.where(count > 0, new_center, ops.reshape(center, (-1,)))
    return ops.reshape(new_center, ops.shape(center))
