import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl.ops import ibot_patch_loss, ibot_patch_loss_from_rows, masked_patch_rows
from tests._support.gradients import assert_gradients_close, gradients, numeric_gradients


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _reference_ibot(student, teacher, masks, tau_s):
    """Zhou et al. 2022 eq. 2 with DINOv2's weights: mean over an image's masked patches,
    then a mean over all N images (unmasked images add 0)."""
    total = 0.0
    for n in range(len(student)):
        masked = [p for p in range(student.shape[1]) if masks[n, p]]
        image_loss = 0.0
        for p in masked:
            log_p_s = _log_softmax(student[n, p].astype(np.float64) / tau_s)
            image_loss += -np.sum(teacher[n, p] * log_p_s)
        total += image_loss / max(len(masked), 1)
    return total / len(student)


def _inputs(rng, n, p, k, mask_ratio=0.4):
    student = rng.normal(size=(n, p, k)).astype("float32")
    teacher = rng.dirichlet(np.ones(k), size=(n, p)).astype("float32")
    masks = rng.random((n, p)) < mask_ratio
    masks[0, 0] = True
    return student, teacher, masks


@pytest.mark.parametrize("n,p,k,tau_s", [(1, 4, 3, 0.1), (3, 9, 8, 0.1), (3, 9, 8, 1.0)])
def test_equals_reference(n, p, k, tau_s):
    rng = np.random.default_rng(n * p)
    student, teacher, masks = _inputs(rng, n, p, k)
    got = float(ibot_patch_loss(student, teacher, masks, student_temperature=tau_s))
    np.testing.assert_allclose(got, _reference_ibot(student, teacher, masks, tau_s), rtol=1e-5)


def test_images_are_weighted_by_their_number_of_masked_patches():
    rng = np.random.default_rng(0)
    student, teacher, _ = _inputs(rng, 2, 6, 4)
    masks = np.array(
        [
            [True] * 5 + [False],
            [True] + [False] * 5,
        ]
    )
    got = float(ibot_patch_loss(student, teacher, masks))
    np.testing.assert_allclose(got, _reference_ibot(student, teacher, masks, 0.1), rtol=1e-5)
    # Not the mean over all masked patches pooled together.
    pooled = (
        _reference_ibot(student[:1], teacher[:1], masks[:1], 0.1) * 5
        + _reference_ibot(student[1:], teacher[1:], masks[1:], 0.1)
    ) / 6
    assert abs(got - pooled) > 1e-3
    # An image without masked patches adds 0 but still counts in the batch.
    none = np.zeros_like(masks[:1])
    both = float(ibot_patch_loss(student, teacher, np.concatenate([masks[:1], none])))
    np.testing.assert_allclose(
        both, _reference_ibot(student[:1], teacher[:1], masks[:1], 0.1) / 2, rtol=1e-5
    )


def test_unmasked_patches_do_not_matter():
    rng = np.random.default_rng(1)
    student, teacher, masks = _inputs(rng, 3, 8, 5)
    loss = float(ibot_patch_loss(student, teacher, masks))
    student2, teacher2 = student.copy(), teacher.copy()
    student2[~masks] = 100.0 * rng.normal(size=student2[~masks].shape)
    teacher2[~masks] = np.nan
    np.testing.assert_allclose(float(ibot_patch_loss(student2, teacher2, masks)), loss, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_computes_in_float32(dtype):
    rng = np.random.default_rng(2)
    student, teacher, masks = _inputs(rng, 2, 5, 16)
    student = ops.cast(3.0 * student, dtype)
    teacher = ops.cast(teacher, dtype)
    loss = ibot_patch_loss(student, teacher, masks)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    s, t = (ops.convert_to_numpy(ops.cast(x, "float32")) for x in (student, teacher))
    np.testing.assert_allclose(float(loss), _reference_ibot(s, t, masks, 0.1), rtol=1e-4)


def test_rejects_bad_shapes():
    x = np.zeros((2, 3, 4), "float32")
    with pytest.raises(ValueError, match="same"):
        ibot_patch_loss(x, np.zeros((2, 3, 5), "float32"), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="masks"):
        ibot_patch_loss(x, x, np.ones((2, 4), bool))


def _reference_rows(masks, num_rows):
    """Masked rows of the flattened (N * P) patches in order, then unmasked ones."""
    flat = masks.reshape(-1)
    order = np.concatenate([np.flatnonzero(flat), np.flatnonzero(~flat)])[:num_rows]
    counts = masks.sum(axis=1)
    weights = np.where(flat[order], 1.0 / np.maximum(counts[order // masks.shape[1]], 1), 0.0)
    return order, weights


@pytest.mark.parametrize("padding", [0, 3, None])
def test_masked_patch_rows_equals_reference(padding):
    rng = np.random.default_rng(7)
    masks = rng.random((4, 6)) < 0.3
    masks[0, :2] = True
    masks[2] = False  # an image without masked patches
    num_rows = masks.size if padding is None else int(masks.sum()) + padding
    rows, weights = masked_patch_rows(masks, num_rows)
    expected_rows, expected_weights = _reference_rows(masks, num_rows)
    assert tuple(rows.shape) == (num_rows,)
    np.testing.assert_array_equal(ops.convert_to_numpy(rows), expected_rows)
    np.testing.assert_allclose(ops.convert_to_numpy(weights), expected_weights, rtol=1e-6)


def test_loss_from_rows_equals_the_full_loss():
    rng = np.random.default_rng(5)
    student, teacher, masks = _inputs(rng, 4, 9, 8)
    masks[3] = False  # still counts in N
    rows, weights = masked_patch_rows(masks, int(masks.sum()) + 5)  # 5 padding rows
    rows = ops.convert_to_numpy(rows)
    k = student.shape[-1]
    student_rows = student.reshape(-1, k)[rows]
    teacher_rows = teacher.reshape(-1, k)[rows]
    got = float(ibot_patch_loss_from_rows(student_rows, teacher_rows, weights, 4, 0.1))
    np.testing.assert_allclose(got, _reference_ibot(student, teacher, masks, 0.1), rtol=1e-5)
    # Padding rows may hold anything.
    padding = ops.convert_to_numpy(weights) == 0
    assert padding.sum() == 5
    student_rows[padding], teacher_rows[padding] = np.inf, np.nan
    again = float(ibot_patch_loss_from_rows(student_rows, teacher_rows, weights, 4, 0.1))
    np.testing.assert_allclose(again, got, rtol=1e-6)


def test_loss_from_rows_rejects_bad_shapes():
    x = np.zeros((3, 4), "float32")
    with pytest.raises(ValueError, match="same"):
        ibot_patch_loss_from_rows(x, np.zeros((3, 5), "float32"), np.ones(3, "float32"), 1)
    with pytest.raises(ValueError, match="weights"):
        ibot_patch_loss_from_rows(x, x, np.ones((3, 1), "float32"), 1)
    with pytest.raises(ValueError, match="masks"):
        masked_patch_rows(np.ones((2, 3, 1), bool), 2)


def test_gradients_reach_the_student_only():
    rng = np.random.default_rng(7)
    student, teacher, masks = _inputs(rng, 2, 3, 4, mask_ratio=0.6)
    got = gradients(
        lambda s, t: ibot_patch_loss(s, t, masks, student_temperature=0.1), student, teacher
    )
    expected = numeric_gradients(lambda s: _reference_ibot(s, teacher, masks, 0.1), student)
    assert_gradients_close(got[:1], expected)
    np.testing.assert_array_equal(got[1], 0.0)
