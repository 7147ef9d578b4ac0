"""The iBOT / DINOv2 masked-patch self-distillation loss."""

from keras import ops


def ibot_patch_loss(student_patch_logits, teacher_patch_probs, masks, student_temperature=0.1):
    """iBOT masked image modelling loss (Zhou et al. 2022, "iBOT: Image BERT
    Pre-Training with Online Tokenizer", eq. 2; DINOv2's `iBOTPatchLoss`).

    For image `n` with mask `m_n` over its `P` patches, teacher patch
    distributions `P_t^{n,p}` (centred and sharpened, or Sinkhorn-Knopp
    normalised, by the caller) and student patch logits `s^{n,p}` on the
    masked input,

        P_s^{n,p} = softmax(s^{n,p} / tau_s)
        L_n = -1 / max(sum_p m_{n,p}, 1) * sum_p m_{n,p} sum_k P_t^{n,p,k} log P_s^{n,p,k}
        L   = 1 / N * sum_n L_n

    i.e. each image's masked patches are averaged, then images are averaged
    (an image with no masked patch contributes 0 but still counts in `N`), as
    DINOv2's `forward_masked` weighting every patch by `1 / num_masked`.
    Unmasked patches do not contribute. The teacher probabilities are wrapped
    in `ops.stop_gradient`. Computed in float32 whatever the inputs' dtype.

    Args:
        student_patch_logits: `(N, P, K)` student logits of the patch tokens.
        teacher_patch_probs: `(N, P, K)` teacher probabilities of the patches.
        masks: boolean `(N, P)`, True for the patches masked in the student's input.
        student_temperature: `tau_s` (0.1).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import ibot_patch_loss
    >>> probs = np.full((2, 4, 8), 1 / 8, "float32")
    >>> masks = np.array([[True, False, True, False], [False] * 4])
    >>> round(float(ibot_patch_loss(np.zeros((2, 4, 8), "float32"), probs, masks)), 4)
    1.0397
    """
    student = ops.convert_to_tensor(student_patch_logits)
    teacher = ops.convert_to_tensor(teacher_patch_probs)
    masks = ops.convert_to_tensor(masks)
    if len(student.shape) != 3 or tuple(student.shape) != tuple(teacher.shape):
        raise ValueError(
            "ibot_patch_loss expects student logits and teacher probabilities of the same "
            f"(N, P, K) shape, got {tuple(student.shape)} and {tuple(teacher.shape)}."
        )
    if tuple(masks.shape) != tuple(student.shape[:2]):
        raise ValueError(
            f"ibot_patch_loss expects masks of shape (N, P) = {tuple(student.shape[:2])}, "
            f"got {tuple(masks.shape)}."
        )
    # The row form with every patch a row, weighted 1 / (its image's masked count).
    masks = ops.cast(masks, "bool")
    num_masked = ops.maximum(ops.sum(ops.cast(masks, "float32"), axis=-1, keepdims=True), 1.0)
    weights = ops.where(masks, 1.0 / num_masked, ops.zeros_like(num_masked))
    return ibot_patch_loss_from_rows(
        ops.reshape(student, (-1, student.shape[-1])),
        ops.reshape(teacher, (-1, teacher.shape[-1])),
        ops.reshape(weights, (-1,)),
        ops.shape(student)[0],
        student_temperature=student_temperature,
    )


def masked_patch_rows(masks, num_rows):
    """The rows of the masked patches, padded to a fixed count, for a patch head that
    runs on the masked patches only (as DINOv2's `mask_indices_list` and `upperbound`).

    Flattening the `(N, P)` patch tokens to `N * P` rows, returns the indices of
    `num_rows` rows: first every masked row (in row-major order), then unmasked rows as
    padding; and each row's weight in the masked patch loss,

        w_r = 1 / sum_p m_{n(r),p}   for a masked row r of image n(r),   0 for padding,

    so that `ibot_patch_loss_from_rows` over these rows equals `ibot_patch_loss` over
    the full tensors. `num_rows` must be at least the number of masked patches (the
    masked rows past it are dropped) and at most `N * P`; a static integer keeps every
    shape static (`jax.jit`, compiled torch), a scalar tensor (TensorFlow, with a dynamic
    batch size) works too. Gradient-free.

    Args:
        masks: boolean `(N, P)`, True for the masked patches.
        num_rows: the number of rows `M` to return.

    Returns:
        `(rows, weights)`: int32 `(M,)` indices into the `N * P` flattened rows and
        float32 `(M,)` weights, positive exactly for the masked rows.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import masked_patch_rows
    >>> masks = np.array([[False, True, True], [False, False, True]])
    >>> rows, weights = masked_patch_rows(masks, 4)
    >>> [int(r) for r in rows], [float(w) for w in weights]
    ([1, 2, 5, 0], [0.5, 0.5, 1.0, 0.0])
    """
    masks = ops.cast(ops.convert_to_tensor(masks), "bool")
    if len(masks.shape) != 2 or masks.shape[1] is None:
        raise ValueError(
            f"masked_patch_rows expects (N, P) masks with a known P, got {tuple(masks.shape)}."
        )
    num_patches = int(masks.shape[1])
    flat = ops.reshape(masks, (-1,))
    index = ops.arange(ops.shape(flat)[0], dtype="int32")
    # Masked rows score above every unmasked one, each group in increasing index order.
    total = ops.cast(ops.shape(flat)[0], "int32")
    score = ops.where(flat, total - index, -index)
    _, rows = ops.top_k(score, num_rows)
    rows = ops.cast(rows, "int32")
    counts = ops.sum(ops.cast(masks, "float32"), axis=1)
    image_counts = ops.take(counts, rows // num_patches, axis=0)
    valid = ops.take(flat, rows, axis=0)
    weights = ops.where(valid, 1.0 / ops.maximum(image_counts, 1.0), ops.zeros_like(image_counts))
    return rows, weights


def ibot_patch_loss_from_rows(
    student_patch_logits, teacher_patch_probs, weights, num_images, student_temperature=0.1
):
    """`ibot_patch_loss` on gathered patch rows (see `masked_patch_rows`):

        L = 1 / N * sum_r w_r * (-sum_k P_t^{r,k} log P_s^{r,k}),   P_s^r = softmax(s^r / tau_s)

    With `w_r = 1 / (masked patches of row r's image)` on the masked rows, this is iBOT's
    loss (Zhou et al. 2022, eq. 2) with DINOv2's weights: each image's masked patches
    averaged, then the `N` images averaged (unmasked images included). Rows of weight 0
    (padding) contribute nothing, even with non-finite values, and pass no gradient.
    The teacher probabilities are wrapped in `ops.stop_gradient`; float32 whatever the
    inputs' dtype.

    Args:
        student_patch_logits: `(M, K)` student logits of the gathered patch tokens.
        teacher_patch_probs: `(M, K)` teacher probabilities of the same patches.
        weights: `(M,)` non-negative row weights (0 for padding).
        num_images: `N`, the number of images the rows come from (an int or scalar).
        student_temperature: `tau_s` (0.1).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import ibot_patch_loss_from_rows
    >>> probs = np.full((3, 8), 1 / 8, "float32")
    >>> weights = np.array([0.5, 0.5, 0.0], "float32")  # two masked patches of one image
    >>> round(float(ibot_patch_loss_from_rows(np.zeros((3, 8), "float32"), probs, weights, 2)), 4)
    1.0397
    """
    student = ops.convert_to_tensor(student_patch_logits)
    teacher = ops.convert_to_tensor(teacher_patch_probs)
    weights = ops.cast(ops.convert_to_tensor(weights), "float32")
    if len(student.shape) != 2 or tuple(student.shape) != tuple(teacher.shape):
        raise ValueError(
            "ibot_patch_loss_from_rows expects student logits and teacher probabilities of "
            f"the same (M, K) shape, got {tuple(student.shape)} and {tuple(teacher.shape)}."
        )
    if len(weights.shape) != 1:
        raise ValueError(
            f"ibot_patch_loss_from_rows expects (M,) weights, got {tuple(weights.shape)}."
        )
    # where, not products: padding rows with non-finite values cannot leak into the sum or
    # (through a 0 * inf derivative) into the gradient.
    kept = ops.reshape(weights > 0, (-1, 1))
    teacher = ops.cast(ops.stop_gradient(teacher), "float32")
    teacher = ops.where(kept, teacher, ops.zeros_like(teacher))
    student = ops.cast(student, "float32")
    student = ops.where(kept, student, ops.zeros_like(student))
    log_probs = ops.log_softmax(student / student_temperature, axis=-1)
    row_loss = -ops.sum(teacher * log_probs, axis=-1)
    row_loss = ops.where(weights > 0, weights * row_loss, ops.zeros_like(row_loss))
    return ops.sum(row_loss) / ops.cast(num_images, "float32")
