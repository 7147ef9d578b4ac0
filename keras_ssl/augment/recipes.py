"""Ready-made multi-view recipes (SimCLR, MoCo-v2, BYOL, DINO multi-crop).

Every recipe is a list of per-view pipelines built by one function, :func:`view_pipeline`
(crop -> flip -> colour jitter -> grayscale -> Gaussian blur -> solarize, each step with its own
probability), wrapped in a serialisable :class:`MultiViewAugment` subclass that stores the
recipe's arguments. View ``k`` of a recipe seeded with ``seed`` uses ``derive_seed(seed, k)``
and its layers use fixed sub-offsets of that seed (crop 0, flip 1, jitter 2, grayscale 3,
blur 4, solarize 5), so removing one step leaves the random draws of the others unchanged.
"""

import math
import numbers

import keras

from keras_ssl.augment._base import derive_seed
from keras_ssl.augment.blur import GaussianBlur
from keras_ssl.augment.color import ColorJitter, RandomGrayscale, Solarize
from keras_ssl.augment.containers import AugmentationPipeline, MultiViewAugment
from keras_ssl.augment.geometric import (
    RandomHorizontalFlip,
    RandomResizedCrop,
    check_interpolation,
)

# DINOv2's crop areas (``ssl_default_config.yaml``), where DINO's are 0.4-1 / 0.05-0.4.
DINOV2_CROP_SCALES = dict(global_crop_scale=(0.32, 1.0), local_crop_scale=(0.05, 0.32))
# DINOv2's blur kernel, the same for every crop (``dinov2/data/transforms.py``, class
# ``GaussianBlur``: ``transforms.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))``).
DINOV2_BLUR_KERNEL_SIZE = 9
# DINO blurs with PIL's `ImageFilter.GaussianBlur(radius=sigma)`, whose kernel is not cut
# short: the recipe's kernel reaches at least 3 sigma either side at the largest sigma, 2.
_DINO_BLUR_TAPS = 2 * math.ceil(3 * 2.0) + 1


def _size_pair(image_size):
    if isinstance(image_size, numbers.Integral):
        return int(image_size), int(image_size)
    height, width = (int(s) for s in image_size)
    return height, width


def _floats(values, length, name):
    values = [float(v) for v in values]
    if len(values) != length:
        raise ValueError(f"`{name}` must have {length} values. Received: {values}")
    return values


def blur_kernel_size(image_size, fraction=0.1):
    """Odd Gaussian kernel size of ``fraction`` of the (smaller) image side, at least 3."""
    side = min(_size_pair(image_size))
    kernel = int(fraction * side)
    if kernel % 2 == 0:
        kernel += 1
    return max(kernel, 3)


def _odd_kernel_size_or_none(value, name="blur_kernel_size"):
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or value < 1 or value % 2 == 0:
        raise ValueError(
            f"`{name}` must be a positive odd integer (the blur's number of taps), or None "
            f"for 10% of the crop side. Received: {name}={value!r}"
        )
    return int(value)


def _blur_taps(value, image_size):
    """A checked ``blur_kernel_size`` argument, or the default for ``image_size`` if None."""
    value = _odd_kernel_size_or_none(value)
    return blur_kernel_size(image_size) if value is None else value


def view_pipeline(
    image_size,
    crop_scale=(0.08, 1.0),
    crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
    horizontal_flip=True,
    jitter=(0.4, 0.4, 0.4, 0.1),
    jitter_probability=0.8,
    grayscale_probability=0.2,
    blur_probability=0.5,
    blur_sigma=(0.1, 2.0),
    solarize_probability=0.0,
    solarize_threshold=0.5,
    seed=None,
    blur_kernel_size=None,
    interpolation="bilinear",
):
    """One view of a contrastive / self-distillation recipe, the builder shared by all recipes.

    The torchvision pipeline of SimCLR, MoCo-v2, BYOL and DINO: ``RandomResizedCrop`` to
    ``image_size`` (area ``crop_scale``, aspect ratio ``crop_ratio``, ``interpolation``)
    -> horizontal flip
    (p = 0.5) -> ``ColorJitter(*jitter)`` with probability ``jitter_probability`` -> grayscale
    with probability ``grayscale_probability`` -> Gaussian blur (sigma ~ U(``blur_sigma``),
    kernel ``blur_kernel_size``, by default 10% of the output side as in SimCLR, Appendix A)
    with probability ``blur_probability`` -> solarize
    (``x >= solarize_threshold`` -> ``1 - x``) with probability ``solarize_probability``.
    A step whose probability is 0 (or a jitter with all strengths 0) is left out.

    Args:
        image_size: Output size, int or ``(height, width)``.
        crop_scale: Area range of the random resized crop.
        crop_ratio: Aspect-ratio range of the random resized crop.
        horizontal_flip: Whether to randomly flip horizontally.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths.
        jitter_probability: Probability of the colour jitter.
        grayscale_probability: Probability of the grayscale conversion.
        blur_probability: Probability of the Gaussian blur.
        blur_sigma: ``(min, max)`` range of the blur's sigma.
        solarize_probability: Probability of the solarization.
        solarize_threshold: Solarization threshold on [0, 1] images.
        seed: Optional integer seed; each layer gets a fixed derived sub-seed.
        blur_kernel_size: Odd number of taps of the blur kernel, or None (default) for
            ``blur_kernel_size(image_size)``, 10% of the smaller output side (at least 3).
        interpolation: The crop's resampling, ``"bilinear"`` (torchvision's default) or
            ``"bicubic"``.

    Returns:
        An :class:`AugmentationPipeline`.
    """
    height, width = _size_pair(image_size)
    blur_kernel_size = _blur_taps(blur_kernel_size, (height, width))
    brightness, contrast, saturation, hue = _floats(jitter, 4, "jitter")
    layers = [
        RandomResizedCrop(
            height,
            width,
            scale=crop_scale,
            ratio=crop_ratio,
            interpolation=interpolation,
            seed=derive_seed(seed, 0),
        )
    ]
    if horizontal_flip:
        layers.append(RandomHorizontalFlip(0.5, seed=derive_seed(seed, 1)))
    if jitter_probability > 0 and any((brightness, contrast, saturation, hue)):
        layers.append(
            ColorJitter(
                brightness,
                contrast,
                saturation,
                hue,
                probability=jitter_probability,
                seed=derive_seed(seed, 2),
            )
        )
    if grayscale_probability > 0:
        layers.append(RandomGrayscale(grayscale_probability, seed=derive_seed(seed, 3)))
    if blur_probability > 0:
        layers.append(
            GaussianBlur(
                blur_kernel_size,
                sigma=blur_sigma,
                probability=blur_probability,
                seed=derive_seed(seed, 4),
            )
        )
    if solarize_probability > 0:
        layers.append(
            Solarize(
                solarize_threshold, probability=solarize_probability, seed=derive_seed(seed, 5)
            )
        )
    return AugmentationPipeline(layers)


def simclr_pipeline(
    image_size,
    crop_scale=(0.08, 1.0),
    jitter_strength=1.0,
    jitter_probability=0.8,
    grayscale_probability=0.2,
    blur_probability=0.5,
    horizontal_flip=True,
    seed=None,
    interpolation="bicubic",
):
    """One SimCLR view: crop -> flip -> colour jitter -> grayscale -> blur.

    Chen et al. 2020, Appendix A: ``RandomResizedCrop(scale=crop_scale)`` with bicubic
    resampling (``interpolation``, as the official TensorFlow code), horizontal flip
    (p = 0.5), colour jitter ``(0.8 s, 0.8 s, 0.8 s, 0.2 s)`` applied with probability
    ``jitter_probability``, grayscale with probability ``grayscale_probability``, Gaussian blur
    with sigma ~ U(0.1, 2.0), kernel 10% of the image side, probability ``blur_probability``
    (the blur is omitted when that probability is 0). A thin wrapper of :func:`view_pipeline`.

    Returns:
        An :class:`AugmentationPipeline`.
    """
    s = float(jitter_strength)
    return view_pipeline(
        image_size,
        crop_scale=crop_scale,
        horizontal_flip=horizontal_flip,
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5)),
        jitter_probability=jitter_probability if s > 0 else 0.0,
        grayscale_probability=grayscale_probability,
        blur_probability=blur_probability,
        seed=seed,
        interpolation=interpolation,
    )


class _MultiViewRecipe(MultiViewAugment):
    """Base of the recipes: stores the recipe's (JSON-friendly) arguments and the seed.

    Subclasses set ``self.recipe`` through ``super().__init__(recipe, seed, **kwargs)`` and
    implement ``_build_pipelines(seed)``; ``get_config`` returns the recipe's arguments, so a
    recipe is rebuilt (not deserialised layer by layer) by ``from_config``.
    """

    def __init__(self, recipe, seed=None, **kwargs):
        kwargs.pop("pipelines", None)
        self.recipe = recipe
        super().__init__(self._build_pipelines(seed), **kwargs)
        self.seed = seed

    def _build_pipelines(self, seed):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(self.recipe)
        config["seed"] = self.seed
        return config

    @classmethod
    def from_config(cls, config):
        # Recipes saved before `interpolation` existed cropped bilinearly: a resumed run keeps it.
        return cls(**{"interpolation": "bilinear", **config})


@keras.saving.register_keras_serializable(package="keras_ssl")
class SimCLRAugment(_MultiViewRecipe):
    """SimCLR's two-view augmentation (Chen et al. 2020, "A Simple Framework for Contrastive
    Learning of Visual Representations", Appendix A).

    Each view independently goes through: random resized crop (``crop_scale``, ratio 3/4-4/3)
    to ``image_size`` -> horizontal flip (p = 0.5) -> colour jitter with brightness, contrast,
    saturation ``0.8 * jitter_strength`` and hue ``min(0.2 * jitter_strength, 0.5)`` (half
    a turn of the hue circle at most) applied with probability ``jitter_probability``
    (random op order per image) -> grayscale with probability ``grayscale_probability`` ->
    Gaussian blur with sigma ~ U(0.1, 2.0) and a kernel of 10% of the image side, with
    probability ``blur_probability``. Parameters are drawn per image and
    per view. ``uint8`` images are accepted and scaled to [0, 1].

    For small images (CIFAR-10/100, 32x32) use :meth:`SimCLRAugment.small_images`, the paper's
    CIFAR recipe (Appendix B.9): colour-jitter strength 0.5 and no Gaussian blur.

    Works eagerly, inside compiled train steps (``jax.jit``, ``tf.function(jit_compile=True)``,
    torch) and inside ``tf.data`` whatever the Keras backend.

    Args:
        image_size: Output size, int or ``(height, width)``.
        crop_scale: Area range of the random resized crop.
        jitter_strength: Colour-distortion strength ``s``.
        jitter_probability: Probability of the colour jitter.
        grayscale_probability: Probability of the grayscale conversion.
        blur_probability: Probability of the Gaussian blur (0 removes it).
        horizontal_flip: Whether to randomly flip horizontally.
        interpolation: The crop's resampling, ``"bicubic"`` (default, as the official
            TensorFlow code) or ``"bilinear"`` (torchvision's default, as lightly).
        seed: Optional integer seed; the two views get different derived seeds.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import SimCLRAugment
    >>> images = np.random.randint(0, 256, size=(4, 32, 32, 3), dtype="uint8")
    >>> augment = SimCLRAugment.small_images(32, seed=0)
    >>> view_1, view_2 = augment(images)
    >>> tuple(view_1.shape), augment.num_views
    ((4, 32, 32, 3), 2)

    In a ``tf.data`` pipeline (any Keras backend; use a separate instance):

    >>> import tensorflow as tf
    >>> ds = tf.data.Dataset.from_tensor_slices(images).batch(2)
    >>> ds = ds.map(SimCLRAugment.small_images(32, seed=1))
    >>> [tuple(v.shape) for v in next(iter(ds))]
    [(2, 32, 32, 3), (2, 32, 32, 3)]
    """

    def __init__(
        self,
        image_size,
        crop_scale=(0.08, 1.0),
        jitter_strength=1.0,
        jitter_probability=0.8,
        grayscale_probability=0.2,
        blur_probability=0.5,
        horizontal_flip=True,
        interpolation="bicubic",
        seed=None,
        **kwargs,
    ):
        recipe = dict(
            image_size=list(_size_pair(image_size)),
            crop_scale=_floats(crop_scale, 2, "crop_scale"),
            jitter_strength=float(jitter_strength),
            jitter_probability=float(jitter_probability),
            grayscale_probability=float(grayscale_probability),
            blur_probability=float(blur_probability),
            horizontal_flip=bool(horizontal_flip),
            interpolation=check_interpolation(interpolation),
        )
        super().__init__(recipe, seed=seed, **kwargs)

    def _build_pipelines(self, seed):
        return [simclr_pipeline(seed=derive_seed(seed, view), **self.recipe) for view in range(2)]

    @classmethod
    def small_images(cls, image_size=32, **overrides):
        """The paper's CIFAR-10 recipe: jitter strength 0.5, no blur (overridable)."""
        config = dict(jitter_strength=0.5, blur_probability=0.0)
        config.update(overrides)
        return cls(image_size, **config)


@keras.saving.register_keras_serializable(package="keras_ssl")
class MoCoV2Augment(_MultiViewRecipe):
    """MoCo-v2's two-view augmentation (Chen, Fan, Girshick, He 2020, "Improved Baselines with
    Momentum Contrastive Learning", Section 2 and the official ``main_moco.py --aug-plus``).

    Both views come from the same distribution: random resized crop (area ``crop_scale``,
    0.2-1 in MoCo-v2) to ``image_size`` -> horizontal flip -> colour jitter
    ``(0.4, 0.4, 0.4, 0.1)`` with probability 0.8 -> grayscale with probability 0.2 ->
    Gaussian blur with sigma ~ U(0.1, 2.0) (kernel 10% of the side) with probability 0.5.
    (The official code flips after the blur; the two commute.) Parameters are drawn per image
    and per view; ``uint8`` images are scaled to [0, 1].

    For 28-96 px data use :meth:`MoCoV2Augment.small_images`.

    Args:
        image_size: Output size, int or ``(height, width)``.
        crop_scale: Area range of the random resized crop.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths.
        jitter_probability: Probability of the colour jitter.
        grayscale_probability: Probability of the grayscale conversion.
        blur_probability: Probability of the Gaussian blur (0 removes it).
        horizontal_flip: Whether to randomly flip horizontally.
        interpolation: The crop's resampling, ``"bilinear"`` (default, torchvision's, as
            the official code) or ``"bicubic"``.
        seed: Optional integer seed; view ``k`` uses ``derive_seed(seed, k)``.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import MoCoV2Augment
    >>> images = np.random.randint(0, 256, size=(4, 32, 32, 3), dtype="uint8")
    >>> query, key = MoCoV2Augment.small_images(32, seed=0)(images)
    >>> tuple(query.shape), tuple(key.shape)
    ((4, 32, 32, 3), (4, 32, 32, 3))
    """

    def __init__(
        self,
        image_size,
        crop_scale=(0.2, 1.0),
        jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_probability=0.8,
        grayscale_probability=0.2,
        blur_probability=0.5,
        horizontal_flip=True,
        interpolation="bilinear",
        seed=None,
        **kwargs,
    ):
        recipe = dict(
            image_size=list(_size_pair(image_size)),
            crop_scale=_floats(crop_scale, 2, "crop_scale"),
            jitter=_floats(jitter, 4, "jitter"),
            jitter_probability=float(jitter_probability),
            grayscale_probability=float(grayscale_probability),
            blur_probability=float(blur_probability),
            horizontal_flip=bool(horizontal_flip),
            interpolation=check_interpolation(interpolation),
        )
        super().__init__(recipe, seed=seed, **kwargs)

    def _build_pipelines(self, seed):
        return [view_pipeline(seed=derive_seed(seed, view), **self.recipe) for view in range(2)]

    @classmethod
    def small_images(cls, image_size=32, **overrides):
        """MoCo-v2 for 28-96 px images (CIFAR, STL-10 at 96 px...).

        Choices: no Gaussian blur (as in SimCLR's CIFAR recipe and the MoCo CIFAR-10 demo /
        solo-learn's CIFAR configs: on a few-pixel kernel it mostly destroys the little
        detail there is); everything else, including MoCo-v2's crop scale 0.2-1 and jitter
        ``(0.4, 0.4, 0.4, 0.1)``, is kept. Any argument can be overridden.
        """
        config = dict(blur_probability=0.0)
        config.update(overrides)
        return cls(image_size, **config)


@keras.saving.register_keras_serializable(package="keras_ssl")
class BYOLAugment(_MultiViewRecipe):
    """BYOL's asymmetric two-view augmentation (Grill et al. 2020, "Bootstrap Your Own Latent",
    Appendix B, Table 6).

    Each view: random resized crop (area ``crop_scale``, 0.08-1) to ``image_size`` ->
    horizontal flip -> colour jitter ``(0.4, 0.4, 0.2, 0.1)`` with probability 0.8 ->
    grayscale with probability 0.2 -> Gaussian blur (sigma ~ U(0.1, 2.0), kernel 10% of the
    side) -> solarize (threshold 0.5). The two views differ in the blur and solarize
    probabilities: ``blur_probabilities = (1.0, 0.1)`` and
    ``solarize_probabilities = (0.0, 0.2)`` for (view 1, view 2).

    For 28-96 px data use :meth:`BYOLAugment.small_images`.

    Args:
        image_size: Output size, int or ``(height, width)``.
        crop_scale: Area range of the random resized crop.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths.
        jitter_probability: Probability of the colour jitter.
        grayscale_probability: Probability of the grayscale conversion.
        blur_probabilities: Blur probability of view 1 and of view 2.
        solarize_probabilities: Solarize probability of view 1 and of view 2.
        horizontal_flip: Whether to randomly flip horizontally.
        interpolation: The crop's resampling, ``"bicubic"`` (default, Appendix B) or
            ``"bilinear"``.
        seed: Optional integer seed; view ``k`` uses ``derive_seed(seed, k)``.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import BYOLAugment
    >>> images = np.random.randint(0, 256, size=(4, 32, 32, 3), dtype="uint8")
    >>> view_1, view_2 = BYOLAugment.small_images(32, seed=0)(images)
    >>> tuple(view_1.shape), tuple(view_2.shape)
    ((4, 32, 32, 3), (4, 32, 32, 3))
    """

    def __init__(
        self,
        image_size,
        crop_scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.2, 0.1),
        jitter_probability=0.8,
        grayscale_probability=0.2,
        blur_probabilities=(1.0, 0.1),
        solarize_probabilities=(0.0, 0.2),
        horizontal_flip=True,
        interpolation="bicubic",
        seed=None,
        **kwargs,
    ):
        recipe = dict(
            image_size=list(_size_pair(image_size)),
            crop_scale=_floats(crop_scale, 2, "crop_scale"),
            jitter=_floats(jitter, 4, "jitter"),
            jitter_probability=float(jitter_probability),
            grayscale_probability=float(grayscale_probability),
            blur_probabilities=_floats(blur_probabilities, 2, "blur_probabilities"),
            solarize_probabilities=_floats(solarize_probabilities, 2, "solarize_probabilities"),
            horizontal_flip=bool(horizontal_flip),
            interpolation=check_interpolation(interpolation),
        )
        super().__init__(recipe, seed=seed, **kwargs)

    def _build_pipelines(self, seed):
        r = self.recipe
        return [
            view_pipeline(
                r["image_size"],
                crop_scale=r["crop_scale"],
                horizontal_flip=r["horizontal_flip"],
                jitter=r["jitter"],
                jitter_probability=r["jitter_probability"],
                grayscale_probability=r["grayscale_probability"],
                blur_probability=r["blur_probabilities"][view],
                solarize_probability=r["solarize_probabilities"][view],
                interpolation=r["interpolation"],
                seed=derive_seed(seed, view),
            )
            for view in range(2)
        ]

    @classmethod
    def small_images(cls, image_size=32, **overrides):
        """BYOL for 28-96 px images (CIFAR, STL-10 at 96 px...).

        Choices (as solo-learn's CIFAR BYOL configuration): no Gaussian blur in either view
        (``blur_probabilities=(0, 0)``), the asymmetric solarization ``(0.0, 0.2)`` is kept,
        as are the crop scale 0.08-1 and jitter ``(0.4, 0.4, 0.2, 0.1)``. Any argument can be
        overridden.
        """
        config = dict(blur_probabilities=(0.0, 0.0))
        config.update(overrides)
        return cls(image_size, **config)


@keras.saving.register_keras_serializable(package="keras_ssl")
class DINOMultiCrop(_MultiViewRecipe):
    """DINO's multi-crop augmentation (Caron et al. 2021, "Emerging Properties in
    Self-Supervised Vision Transformers", official ``DataAugmentationDINO``).

    Returns ``2 + num_local_crops`` views, the two global ones first:

    - global crops: random resized crop (area ``global_crop_scale``, 0.4-1) to
      ``global_size`` -> flip -> colour jitter ``(0.4, 0.4, 0.2, 0.1)`` p = 0.8 ->
      grayscale p = 0.2 -> Gaussian blur with probability ``global_blur_probabilities``
      (1.0 for view 1, 0.1 for view 2) -> solarize with probability
      ``global_solarize_probabilities`` (0.0 / 0.2);
    - ``num_local_crops`` local crops: random resized crop (area ``local_crop_scale``,
      0.05-0.4) to ``local_size`` -> flip -> jitter -> grayscale -> blur p = 0.5.

    Blur sigma ~ U(0.1, 2.0) with a kernel of ``blur_kernel_size`` taps, by default 10% of
    each crop's side but at least 13, 3 sigma on either side at sigma = 2: the official
    code blurs with PIL's ``GaussianBlur(radius=sigma)``, whose kernel is not cut short
    (23 taps at 224 px, 13 at 96 px, where 10% would cut it at 2 sigma). The teacher sees
    ``views[:num_global_views]``, the student all views.

    For DINOv2's multi-crop use :meth:`DINOMultiCrop.dinov2`; for 28-96 px data use
    :meth:`DINOMultiCrop.small_images`.

    Args:
        global_size: Global crop size, int or ``(height, width)``.
        local_size: Local crop size, int or ``(height, width)``.
        num_local_crops: Number of local crops (0 gives plain two-view DINO).
        global_crop_scale: Area range of the global crops.
        local_crop_scale: Area range of the local crops.
        jitter: ``(brightness, contrast, saturation, hue)`` strengths.
        jitter_probability: Probability of the colour jitter.
        grayscale_probability: Probability of the grayscale conversion.
        global_blur_probabilities: Blur probability of global view 1 and of global view 2.
        local_blur_probability: Blur probability of the local crops.
        global_solarize_probabilities: Solarize probability of global views 1 and 2.
        horizontal_flip: Whether to randomly flip horizontally.
        blur_kernel_size: Odd number of taps of every crop's blur kernel (DINOv2: 9), or
            None (default) for 10% of each crop's side, at least 13.
        interpolation: The crops' resampling, ``"bicubic"`` (default, as the official
            ``Image.BICUBIC``) or ``"bilinear"``.
        seed: Optional integer seed; view ``k`` uses ``derive_seed(seed, k)``.
        **kwargs: Base layer arguments.

    Attributes:
        num_global_views: 2, the number of global views (first in the output).
        num_views: ``2 + num_local_crops``.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import DINOMultiCrop
    >>> images = np.random.randint(0, 256, size=(4, 32, 32, 3), dtype="uint8")
    >>> augment = DINOMultiCrop.small_images(32, num_local_crops=2, seed=0)
    >>> [tuple(v.shape) for v in augment(images)]
    [(4, 32, 32, 3), (4, 32, 32, 3), (4, 14, 14, 3), (4, 14, 14, 3)]
    """

    num_global_views = 2

    def __init__(
        self,
        global_size=224,
        local_size=96,
        num_local_crops=8,
        global_crop_scale=(0.4, 1.0),
        local_crop_scale=(0.05, 0.4),
        jitter=(0.4, 0.4, 0.2, 0.1),
        jitter_probability=0.8,
        grayscale_probability=0.2,
        global_blur_probabilities=(1.0, 0.1),
        local_blur_probability=0.5,
        global_solarize_probabilities=(0.0, 0.2),
        horizontal_flip=True,
        blur_kernel_size=None,
        interpolation="bicubic",
        seed=None,
        **kwargs,
    ):
        num_local_crops = int(num_local_crops)
        if num_local_crops < 0:
            raise ValueError(f"`num_local_crops` must be >= 0. Received: {num_local_crops}")
        recipe = dict(
            global_size=list(_size_pair(global_size)),
            local_size=list(_size_pair(local_size)),
            num_local_crops=num_local_crops,
            global_crop_scale=_floats(global_crop_scale, 2, "global_crop_scale"),
            local_crop_scale=_floats(local_crop_scale, 2, "local_crop_scale"),
            jitter=_floats(jitter, 4, "jitter"),
            jitter_probability=float(jitter_probability),
            grayscale_probability=float(grayscale_probability),
            global_blur_probabilities=_floats(
                global_blur_probabilities, 2, "global_blur_probabilities"
            ),
            local_blur_probability=float(local_blur_probability),
            global_solarize_probabilities=_floats(
                global_solarize_probabilities, 2, "global_solarize_probabilities"
            ),
            horizontal_flip=bool(horizontal_flip),
            interpolation=check_interpolation(interpolation),
            blur_kernel_size=_odd_kernel_size_or_none(blur_kernel_size),
        )
        super().__init__(recipe, seed=seed, **kwargs)

    def _build_pipelines(self, seed):
        r = self.recipe
        common = dict(
            horizontal_flip=r["horizontal_flip"],
            jitter=r["jitter"],
            jitter_probability=r["jitter_probability"],
            grayscale_probability=r["grayscale_probability"],
            interpolation=r["interpolation"],
        )

        def blur_taps(size):
            if r["blur_kernel_size"] is not None:
                return r["blur_kernel_size"]
            return max(blur_kernel_size(size), _DINO_BLUR_TAPS)

        pipelines = [
            view_pipeline(
                r["global_size"],
                crop_scale=r["global_crop_scale"],
                blur_kernel_size=blur_taps(r["global_size"]),
                blur_probability=r["global_blur_probabilities"][view],
                solarize_probability=r["global_solarize_probabilities"][view],
                seed=derive_seed(seed, view),
                **common,
            )
            for view in range(self.num_global_views)
        ]
        pipelines += [
            view_pipeline(
                r["local_size"],
                crop_scale=r["local_crop_scale"],
                blur_kernel_size=blur_taps(r["local_size"]),
                blur_probability=r["local_blur_probability"],
                solarize_probability=0.0,
                seed=derive_seed(seed, self.num_global_views + view),
                **common,
            )
            for view in range(r["num_local_crops"])
        ]
        return pipelines

    @classmethod
    def dinov2(cls, global_size=224, local_size=96, **overrides):
        """DINOv2's multi-crop (Oquab et al. 2023, "DINOv2: Learning Robust Visual Features
        without Supervision"; official ``ssl_default_config.yaml`` and
        ``dinov2/data/augmentations.py``): DINO's pipeline with the crop areas
        ``global_crop_scale=(0.32, 1.0)`` and ``local_crop_scale=(0.05, 0.32)``, and a
        9-tap blur kernel for every crop, global and local (``blur_kernel_size=9``: the
        official ``GaussianBlur`` of ``dinov2/data/transforms.py`` is
        ``transforms.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))``, not 10% of the side).
        Any argument can be overridden.

        Blur probabilities: this recipe keeps the intended ones, those of BYOL and DINO
        (global crops 1.0 and 0.1, local crops 0.5). The official ``GaussianBlur`` passes
        ``1 - p`` to torchvision's ``RandomApply``, which takes the probability of applying
        the blur, so the released code (and the checkpoints trained with it) blurs the
        first global crop never and the second with probability 0.9 (the local crops'
        0.5 is unaffected); the upstream bug is reported in facebookresearch/dinov2 pull
        request #411. To reproduce the released code's behaviour, pass
        ``global_blur_probabilities=(0.0, 0.9)``.

        >>> from keras_ssl.augment import DINOMultiCrop
        >>> augment = DINOMultiCrop.dinov2(seed=0)
        >>> augment.recipe["local_crop_scale"], augment.recipe["blur_kernel_size"]
        ([0.05, 0.32], 9)
        >>> released = DINOMultiCrop.dinov2(global_blur_probabilities=(0.0, 0.9), seed=0)
        >>> released.recipe["global_blur_probabilities"]
        [0.0, 0.9]
        """
        config = {
            **DINOV2_CROP_SCALES,
            "blur_kernel_size": DINOV2_BLUR_KERNEL_SIZE,
            **overrides,
        }
        return cls(global_size, local_size, **config)

    @classmethod
    def small_images(cls, image_size=32, **overrides):
        """DINO multi-crop for 28-96 px images (MNIST-like 28 px, CIFAR 32 px, STL-10 96 px).

        Choices: the global crops keep the full ``image_size``; local crops keep DINO's
        local / global side ratio 96 / 224 = 3 / 7 (rounded, at least 8 px): 28 -> 12,
        32 -> 14, 64 -> 27, 96 -> 41. No Gaussian blur anywhere (a 3-tap kernel on such
        small crops mostly erases them; solo-learn's CIFAR DINO drops it too); the
        asymmetric solarization ``(0.0, 0.2)``, the crop scales, the jitter and the 8 local
        crops are kept (pass ``num_local_crops=`` to trade views for speed). Any argument
        can be overridden.
        """
        global_size = _size_pair(image_size)
        local_size = tuple(max(8, int(round(side * 3 / 7))) for side in global_size)
        config = dict(
            local_size=local_size,
            global_blur_probabilities=(0.0, 0.0),
            local_blur_probability=0.0,
        )
        config.update(overrides)
        return cls(global_size, **config)


__all__ = [
    "BYOLAugment",
    "DINOMultiCrop",
    "MoCoV2Augment",
    "SimCLRAugment",
    "blur_kernel_size",
    "simclr_pipeline",
    "view_pipeline",
]
