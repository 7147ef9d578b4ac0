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
    teacher = ops.cast(ops.stop_gradient(teacher), "float32")
    log_probs = ops.log_softmax(ops.cast(student, "float32") / student_temperature, axis=-1)
    patch_loss = -ops.sum(teacher * log_probs, axis=-1)
    masks = ops.cast(masks, "bool")
    # where, not a product: a masked-out patch with non-finite values cannot leak into the sum.
    patch_loss = ops.where(masks, patch_loss, ops.zeros_like(patch_loss))
    num_masked = ops.maximum(ops.sum(ops.cast(masks, "float32"), axis=-1), 1.0)
    return ops.mean(ops.sum(patch_loss, axis=-1) / num_masked)
