"""Input checks shared by the evaluation functions and `KNNMonitor`: features, labels,
images."""

from __future__ import annotations

import numpy as np


def non_finite_rows(features):
    """Indices of the rows of a 2-D array holding a NaN or an infinity."""
    return np.flatnonzero(~np.isfinite(features).all(axis=1))


def check_finite(features, name, caller):
    """Refuses features with NaN or infinite values, naming how many rows and which.

    A NaN feature makes every similarity and vote it touches NaN, and NaN compares false
    with everything, so an accuracy computed from it is meaningless (not merely low).
    """
    rows = non_finite_rows(features)
    if len(rows) == 0:
        return
    shown = ", ".join(str(i) for i in rows[:10]) + (", ..." if len(rows) > 10 else "")
    raise ValueError(
        f"{caller} got NaN or infinite {name} in {len(rows)} of {len(features)} rows "
        f"(rows {shown}). The model producing them has probably diverged; check its loss, "
        "or drop those rows."
    )


def check_labels(labels, name, caller):
    """``labels`` (any shape) as an int64 vector; refuses non-integer and negative values."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        integral = np.isfinite(labels) & (labels == np.round(labels))
        if not integral.all():
            bad = labels[~integral].reshape(-1)[0]
            raise ValueError(
                f"{caller}: {name} must be integer class indices, got the value {bad}."
            )
    elif labels.dtype.kind not in "biu":
        raise ValueError(
            f"{caller}: {name} must be integer class indices, got dtype {labels.dtype}."
        )
    labels = labels.astype("int64").reshape(-1)
    if len(labels) and labels.min() < 0:
        raise ValueError(
            f"{caller}: {name} must be class indices 0, 1, ..., num_classes - 1, got "
            f"{labels.min()}. Map the labels to 0 .. C - 1 first."
        )
    return labels


def check_label_range(labels, num_classes, name, caller):
    """Refuses labels (checked by `check_labels`) not below ``num_classes``."""
    if len(labels) and labels.max() >= num_classes:
        count = int(np.sum(labels >= num_classes))
        raise ValueError(
            f"{caller}: {name} must be below num_classes={num_classes}, but {count} of "
            f"{len(labels)} are not (largest {labels.max()}). Pass "
            f"num_classes={labels.max() + 1} or leave it None to count the classes."
        )


def input_channels(model):
    """The channel count of ``model``'s ``(B, H, W, C)`` image input, or None if unknown."""
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):  # a subclassed model not built yet
        return None
    if isinstance(shape, tuple) and len(shape) == 4 and isinstance(shape[-1], int):
        return shape[-1]
    return None


def check_images(images, channels, caller):
    """``images`` as a 4-D channels_last batch; clear errors for the layouts that are not."""
    given = images.shape
    if images.ndim == 3 and given[-1] in {1, 3, channels}:
        raise ValueError(
            f"{caller} got images of shape {given}, which looks like one image "
            "(H, W, C) without a batch axis. Pass a batch: `images[None]`. (A batch of "
            "grey-scale images (N, H, W) gets its channel axis added.)"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{caller}: images must be (N, H, W) or (N, H, W, C), got shape {given}.")
    if len(images) == 0:
        raise ValueError(f"{caller} got no images.")
    if channels is None or images.shape[-1] == channels:
        return images
    if images.shape[1] == channels:
        hint = (
            "They look channels_first (N, C, H, W): transpose them to channels_last with "
            "`images.transpose(0, 2, 3, 1)`."
        )
    else:
        hint = f"Convert them to {channels} channels, or use a model built for {images.shape[-1]}."
    raise ValueError(
        f"{caller} got images of shape {given} ({images.shape[-1]} channel(s) "
        f"last), but the model takes channels_last images (N, H, W, {channels}). {hint}"
    )
