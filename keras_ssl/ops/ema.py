"""Exponential moving average of weights: the momentum (teacher / target) encoder update."""

from keras import ops

from keras_ssl.ops._multi_tensor import lerp_variables


def ema_update(teacher_variables, student_variables, momentum):
    """Momentum update of the teacher's weights (MoCo, He et al. 2020, eq. 2;
    BYOL, Grill et al. 2020, Sec. 3.1; DINO, Caron et al. 2021, Sec. 3.1).

        theta_teacher <- m * theta_teacher + (1 - m) * theta_student

    for every pair of variables, assigned in place; nothing is returned. The
    arithmetic is done in float32 for 16-bit teacher variables and in the teacher's
    dtype otherwise, rounded to the teacher's dtype once (on PyTorch, eagerly, as one
    multi-tensor `lerp` towards the students with weight `1 - m`). Works eagerly, inside
    a `keras.StatelessScope` (the new values are recorded in the scope) and
    under `torch.no_grad()`. The caller chooses which variables to average
    (typically `teacher.weights` and `student.weights`, so batch-norm
    statistics follow too, or only the trainable ones).

    Args:
        teacher_variables: list of `keras.Variable` to update.
        student_variables: list of tensors or variables of the same shapes,
            in the same order.
        momentum: the momentum `m`, a float or scalar tensor (MoCo 0.999;
            BYOL 0.996 -> 1 and DINO 0.996 -> 1 with `cosine_schedule`).

    Example:

    >>> import keras
    >>> from keras_ssl.ops import ema_update
    >>> teacher, student = keras.Variable([0.0, 1.0]), keras.Variable([1.0, 1.0])
    >>> ema_update([teacher], [student], momentum=0.9)
    >>> [round(float(x), 6) for x in keras.ops.convert_to_numpy(teacher)]
    [0.1, 1.0]
    """
    teacher_variables = list(teacher_variables)
    student_variables = list(student_variables)
    if len(teacher_variables) != len(student_variables):
        raise ValueError(
            "ema_update expects as many teacher as student variables, got "
            f"{len(teacher_variables)} and {len(student_variables)}."
        )
    for teacher, student in zip(teacher_variables, student_variables, strict=True):
        if tuple(teacher.shape) != tuple(student.shape):
            raise ValueError(
                f"ema_update: teacher variable {getattr(teacher, 'path', teacher)} has shape "
                f"{tuple(teacher.shape)} but its student has {tuple(student.shape)}."
            )
    # A lerp towards the student with weight 1 - m: in Python's float64 for a number (cast
    # once per teacher dtype), else in the tensor's dtype, where 1 - m is exact for m >= 0.5.
    if isinstance(momentum, (int, float)):
        weight = 1.0 - momentum
    else:
        weight = 1 - ops.convert_to_tensor(momentum)
    lerp_variables(teacher_variables, student_variables, weight)
