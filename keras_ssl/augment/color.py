"""Photometric augmentations: colour jitter, random grayscale, solarize (per image)."""

import numbers

import keras

from keras_ssl.augment import _ops
from keras_ssl.augment._base import AugmentationLayer, check_probability


def _factor_range(value, name, center=1.0, bound=None, clip_min=0.0):
    """torchvision's ``ColorJitter._check_input``: ``x -> [max(clip_min, c - x), c + x]``."""
    if isinstance(value, numbers.Real):
        value = float(value)
        if value < 0:
            raise ValueError(f"`{name}` must be non-negative. Received: {value}")
        lo, hi = center - value, center + value
        if clip_min is not None:
            lo = max(clip_min, lo)
    else:
        lo, hi = (float(v) for v in value)
        if lo > hi:
            raise ValueError(f"`{name}` must be a (min, max) pair. Received: {value}")
        if clip_min is not None and lo < clip_min:
            raise ValueError(f"`{name}` factors must be >= {clip_min}. Received: {value}")
    if bound is not None and (lo < bound[0] or hi > bound[1]):
        raise ValueError(f"`{name}` values must lie in {bound}. Received: {(lo, hi)}")
    return lo, hi


@keras.saving.register_keras_serializable(package="keras_ssl")
class ColorJitter(AugmentationLayer):
    """Randomly changes brightness, contrast, saturation and hue, in a random order per image.

    Semantics of ``torchvision.transforms.ColorJitter`` (used by SimCLR, Chen et al. 2020,
    Appendix A), with parameters drawn **per image**:

    - brightness: ``x * b``, ``b ~ U[max(0, 1 - brightness), 1 + brightness]``;
    - contrast: blend with the mean of the image's grayscale version,
      ``c ~ U[max(0, 1 - contrast), 1 + contrast]``;
    - saturation: blend with the grayscale image (weights 0.299, 0.587, 0.114),
      ``s ~ U[max(0, 1 - saturation), 1 + saturation]``;
    - hue: rotate the hue channel by ``U[-hue, hue]`` turns (RGB -> HSV -> RGB).

    Each op clips to [0, 1]. The four ops are applied in an independent random order for every
    image (each candidate op is evaluated at each of the four positions and selected per image).
    A range ``(min, max)`` may be given instead of a number. For single-channel images only
    brightness and contrast apply. The whole jitter is applied to each image with probability
    ``probability`` (SimCLR uses 0.8).

    Args:
        brightness: Brightness strength (float >= 0) or ``(min, max)`` factor range.
        contrast: Contrast strength or ``(min, max)`` factor range.
        saturation: Saturation strength or ``(min, max)`` factor range.
        hue: Hue strength in [0, 0.5] or ``(min, max)`` shift range within [-0.5, 0.5].
        probability: Probability of jittering each image.
        seed: Optional integer seed.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import ColorJitter
    >>> images = np.random.uniform(size=(4, 8, 8, 3)).astype("float32")
    >>> jitter = ColorJitter(0.4, 0.4, 0.4, 0.1, probability=0.8, seed=0)
    >>> tuple(jitter(images).shape)
    (4, 8, 8, 3)
    """

    _unit_range_use = "ColorJitter clips to [0, 1]"

    def __init__(
        self,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.0,
        probability=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.brightness = _factor_range(brightness, "brightness")
        self.contrast = _factor_range(contrast, "contrast")
        self.saturation = _factor_range(saturation, "saturation")
        self.hue = _factor_range(hue, "hue", center=0.0, bound=(-0.5, 0.5), clip_min=None)
        self.probability = check_probability("probability", probability)

    def _active_ops(self, channels):
        ops = []
        if self.brightness != (1.0, 1.0):
            ops.append((_ops.adjust_brightness, self.brightness))
        if self.contrast != (1.0, 1.0):
            ops.append((_ops.adjust_contrast, self.contrast))
        if channels != 1:
            if self.saturation != (1.0, 1.0):
                ops.append((_ops.adjust_saturation, self.saturation))
            if self.hue != (0.0, 0.0):
                ops.append((_ops.adjust_hue, self.hue))
        return ops

    def augment(self, images):
        B = self.backend
        np_ = B.numpy
        _ops.check_color_channels(images, "ColorJitter")
        ops = self._active_ops(int(images.shape[-1]))
        n = self.batch_size(images)
        num = len(ops)
        # One draw: [apply coin | num factors | num order keys].
        u = self.uniform((n, 1 + 2 * num))
        if num == 0:
            return images
        factors = [lo + (hi - lo) * u[:, 1 + i] for i, (_, (lo, hi)) in enumerate(ops)]
        if num == 1:
            out = ops[0][0](B, images, factors[0])
        else:
            # Random permutation per image: order[position, n] = index of the op applied at
            # that position. A loop over positions (compiled once under XLA) evaluates every
            # candidate op and keeps, per image, the one scheduled at that position.
            order = np_.transpose(np_.argsort(u[:, 1 + num :], axis=1))

            def body(position, x):
                op_here = np_.take(order, position, axis=0)
                chosen = ops[-1][0](B, x, factors[-1])
                for i in range(num - 2, -1, -1):
                    candidate = ops[i][0](B, x, factors[i])
                    chosen = self.select(np_.equal(op_here, i), candidate, chosen)
                return chosen

            out = B.core.fori_loop(0, num, body, images)
        apply = np_.less(u[:, 0], self.probability)
        return self.select(apply, out, images)

    def get_config(self):
        config = super().get_config()
        config.update(
            brightness=list(self.brightness),
            contrast=list(self.contrast),
            saturation=list(self.saturation),
            hue=list(self.hue),
            probability=self.probability,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class RandomGrayscale(AugmentationLayer):
    """Converts each image to grayscale with probability ``probability`` (keeps C channels).

    Semantics of ``torchvision.transforms.RandomGrayscale``: luma
    ``0.299 R + 0.587 G + 0.114 B`` replicated on the three channels. Single-channel images are
    returned unchanged.

    Args:
        probability: Probability of converting each image.
        seed: Optional integer seed.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import RandomGrayscale
    >>> images = np.random.uniform(size=(4, 8, 8, 3)).astype("float32")
    >>> tuple(RandomGrayscale(probability=0.2, seed=0)(images).shape)
    (4, 8, 8, 3)
    """

    def __init__(self, probability=0.1, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = check_probability("probability", probability)

    def augment(self, images):
        _ops.check_color_channels(images, "RandomGrayscale")
        apply = self.per_image_mask(images, self.probability)
        if int(images.shape[-1]) == 1:
            return images
        return self.select(apply, _ops.to_grayscale(self.backend, images), images)

    def get_config(self):
        config = super().get_config()
        config["probability"] = self.probability
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class Solarize(AugmentationLayer):
    """Inverts pixels ``>= threshold`` (``x -> 1 - x``) in each image with probability ``p``.

    Semantics of ``torchvision.transforms.RandomSolarize`` on [0, 1] images (used by BYOL,
    Grill et al. 2020, with threshold 0.5 and probability 0.0 / 0.2 for the two views).

    Args:
        threshold: Pixels greater or equal to this are inverted, in [0, 1] (0.5 is
            torchvision's 128 on uint8 images).
        probability: Probability of solarizing each image.
        seed: Optional integer seed.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import Solarize
    >>> images = np.random.uniform(size=(4, 8, 8, 3)).astype("float32")
    >>> tuple(Solarize(threshold=0.5, probability=0.2, seed=0)(images).shape)
    (4, 8, 8, 3)
    """

    _unit_range_use = "Solarize inverts x -> 1 - x above a threshold in [0, 1]"

    def __init__(self, threshold=0.5, probability=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.threshold = float(threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(
                "`threshold` is on the [0, 1] scale of the images this layer sees (integer "
                f"images are converted to [0, 1] first). Received: threshold={threshold}; "
                "for a threshold of 128 on 0-255 pixels (torchvision's RandomSolarize on "
                f"uint8, PIL's solarize) pass threshold={float(threshold) / 255:.4g}."
            )
        self.probability = check_probability("probability", probability)

    def augment(self, images):
        apply = self.per_image_mask(images, self.probability)
        solarized = _ops.solarize(self.backend, images, self.threshold)
        return self.select(apply, solarized, images)

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold, probability=self.probability)
        return config


__all__ = ["ColorJitter", "RandomGrayscale", "Solarize"]
