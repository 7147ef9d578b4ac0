"""Geometric augmentations: random resized crop and horizontal flip (per image)."""

import math
import numbers

import keras

from keras_ssl.augment import _ops
from keras_ssl.augment._base import AugmentationLayer, check_probability

_NUM_CANDIDATES = 10


def check_interpolation(interpolation):
    """``interpolation`` if it is one of ``_ops.INTERPOLATIONS``, else a clear error."""
    if interpolation not in _ops.INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {_ops.INTERPOLATIONS}. "
            f"Received: interpolation={interpolation!r}"
        )
    return interpolation


def _pair(value, name):
    if isinstance(value, numbers.Real):
        return float(value), float(value)
    value = tuple(float(v) for v in value)
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"`{name}` must be a (min, max) pair. Received: {name}={value}")
    return value


@keras.saving.register_keras_serializable(package="keras_ssl")
class RandomResizedCrop(AugmentationLayer):
    """Crops a random box of each image and resizes it to ``(height, width)``.

    Follows ``torchvision.transforms.RandomResizedCrop`` (Szegedy et al. 2015, "Inception"
    crop, used by SimCLR/MoCo/BYOL/DINO): for each image, the box area is a fraction
    ``U(scale)`` of the image area and its aspect ratio is ``exp(U(log ratio))``;
    ``h = round(sqrt(area / ratio))``, ``w = round(sqrt(area * ratio))`` and the box position
    is uniform among positions where it fits. Ten candidates are drawn per image (vectorised)
    and the first that fits is used; if none fits, the whole image centre-cropped to the
    nearest allowed aspect ratio is used (torchvision's fallback).

    The crop + resize is a per-image separable linear map (half-pixel centres, antialiased
    when downscaling as PIL and torchvision's ``antialias=True``, the filter renormalised at
    the box border) applied with two einsums, so it runs under XLA (``jit_compile``) and
    ``jax.jit`` without per-image loops. Each image in a batch gets its own box.

    ``interpolation="bicubic"`` is the crop of DINO, DINOv2 (``Image.BICUBIC``), BYOL
    (Appendix B) and SimCLR's TensorFlow code; torchvision's default, used by MoCo-v2, is
    bilinear. Bicubic output is clipped to [0, 1], as an 8-bit PIL image is to [0, 255].

    Args:
        height: Output height.
        width: Output width.
        scale: ``(min, max)`` fraction of the image area covered by the box.
        ratio: ``(min, max)`` aspect ratio (width / height) of the box.
        interpolation: ``"bilinear"`` (default) or ``"bicubic"``.
        seed: Optional integer seed.
        **kwargs: Base layer arguments (``name``, ``dtype``...).

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import RandomResizedCrop
    >>> images = np.random.uniform(size=(4, 32, 32, 3)).astype("float32")
    >>> tuple(RandomResizedCrop(16, 16, seed=0)(images).shape)
    (4, 16, 16, 3)
    """

    @property
    def _unit_range_use(self):
        if self.interpolation == "bicubic":
            return "bicubic RandomResizedCrop clips to [0, 1]"
        return None

    def __init__(
        self,
        height,
        width,
        scale=(0.08, 1.0),
        ratio=(3.0 / 4.0, 4.0 / 3.0),
        interpolation="bilinear",
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.interpolation = check_interpolation(interpolation)
        self.height = int(height)
        self.width = int(width)
        self.scale = _pair(scale, "scale")
        self.ratio = _pair(ratio, "ratio")
        if self.scale[0] <= 0 or self.ratio[0] <= 0:
            raise ValueError("`scale` and `ratio` must be positive.")

    def sample_boxes(self, images):
        """Per-image boxes ``(N, 4)`` = ``(top, left, box_h, box_w)`` in pixels (float32)."""
        B = self.backend
        np_ = B.numpy
        in_h, in_w = _ops.static_image_size(images, type(self).__name__)
        n = self.batch_size(images)
        k = _NUM_CANDIDATES
        u = self.uniform((n, 4 * k))
        u_area, u_ratio, u_top, u_left = (u[:, i * k : (i + 1) * k] for i in range(4))
        area = float(in_h * in_w) * (self.scale[0] + (self.scale[1] - self.scale[0]) * u_area)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = np_.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = np_.round(np_.sqrt(area * aspect))
        h = np_.round(np_.sqrt(area / aspect))
        valid = np_.logical_and(
            np_.logical_and(np_.greater(w, 0.0), np_.less_equal(w, float(in_w))),
            np_.logical_and(np_.greater(h, 0.0), np_.less_equal(h, float(in_h))),
        )
        valid = B.core.cast(valid, "float32")
        first = valid * B.core.cast(np_.equal(np_.cumsum(valid, axis=1), 1.0), "float32")
        found = np_.sum(first, axis=1)  # 1.0 if any candidate fits, else 0.0
        top = np_.minimum(np_.floor(u_top * (float(in_h) - h + 1.0)), float(in_h) - h)
        left = np_.minimum(np_.floor(u_left * (float(in_w) - w + 1.0)), float(in_w) - w)
        chosen = [np_.sum(first * v, axis=1) for v in (top, left, h, w)]

        # Fallback: central crop, clamped to the ratio range (static, computed in NumPy).
        in_ratio = in_w / in_h
        if in_ratio < self.ratio[0]:
            fb_w = in_w
            fb_h = int(round(fb_w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fb_h = in_h
            fb_w = int(round(fb_h * self.ratio[1]))
        else:
            fb_w, fb_h = in_w, in_h
        fallback = ((in_h - fb_h) // 2, (in_w - fb_w) // 2, fb_h, fb_w)
        boxes = [c + (1.0 - found) * float(f) for c, f in zip(chosen, fallback, strict=True)]
        return np_.stack(boxes, axis=1)

    def augment(self, images):
        boxes = self.sample_boxes(images)
        images = _ops.crop_resize(
            self.backend, images, boxes, self.height, self.width, self.interpolation
        )
        if self.interpolation == "bicubic":
            images = self.backend.numpy.clip(images, 0.0, 1.0)
        return images

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        return input_shape[:-3] + (self.height, self.width, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            height=self.height,
            width=self.width,
            scale=list(self.scale),
            ratio=list(self.ratio),
            interpolation=self.interpolation,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class RandomHorizontalFlip(AugmentationLayer):
    """Flips each image left-right independently with probability ``probability``.

    Same semantics as ``torchvision.transforms.RandomHorizontalFlip``, but the coin is
    tossed per image rather than per call.

    Args:
        probability: Probability of flipping each image.
        seed: Optional integer seed.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import RandomHorizontalFlip
    >>> images = np.random.uniform(size=(4, 8, 8, 3)).astype("float32")
    >>> tuple(RandomHorizontalFlip(probability=0.5, seed=0)(images).shape)
    (4, 8, 8, 3)
    """

    def __init__(self, probability=0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = check_probability("probability", probability)

    def augment(self, images):
        flip = self.per_image_mask(images, self.probability)
        return self.select(flip, self.backend.numpy.flip(images, axis=2), images)

    def get_config(self):
        config = super().get_config()
        config["probability"] = self.probability
        return config


__all__ = ["RandomHorizontalFlip", "RandomResizedCrop"]
