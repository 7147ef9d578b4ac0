"""Ready-made multi-view recipes (SimCLR) and their per-view pipeline builder."""

import keras

from keras_ssl.augment._base import derive_seed
from keras_ssl.augment.blur import GaussianBlur
from keras_ssl.augment.color import ColorJitter, RandomGrayscale
from keras_ssl.augment.containers import AugmentationPipeline, MultiViewAugment
from keras_ssl.augment.geometric import RandomHorizontalFlip, RandomResizedCrop


def _size_pair(image_size):
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = (int(s) for s in image_size)
    return height, width


def blur_kernel_size(image_size, fraction=0.1):
    """Odd Gaussian kernel size of ``fraction`` of the (smaller) image side, at least 3."""
    side = min(_size_pair(image_size))
    kernel = int(fraction * side)
    if kernel % 2 == 0:
        kernel += 1
    return max(kernel, 3)


def simclr_pipeline(
    image_size,
    crop_scale=(0.08, 1.0),
    jitter_strength=1.0,
    jitter_probability=0.8,
    grayscale_probability=0.2,
    blur_probability=0.5,
    horizontal_flip=True,
    seed=None,
):
    """One SimCLR view: crop -> flip -> colour jitter -> grayscale -> blur.

    Chen et al. 2020, Appendix A: ``RandomResizedCrop(scale=crop_scale)``, horizontal flip
    (p = 0.5), colour jitter ``(0.8 s, 0.8 s, 0.8 s, 0.2 s)`` applied with probability
    ``jitter_probability``, grayscale with probability ``grayscale_probability``, Gaussian blur
    with sigma ~ U(0.1, 2.0), kernel 10% of the image side, probability ``blur_probability``
    (the blur is omitted when that probability is 0).

    Returns:
        An :class:`AugmentationPipeline`.
    """
    height, width = _size_pair(image_size)
    s = float(jitter_strength)
    layers = [RandomResizedCrop(height, width, scale=crop_scale, seed=derive_seed(seed, 0))]
    if horizontal_flip:
        layers.append(RandomHorizontalFlip(0.5, seed=derive_seed(seed, 1)))
    if jitter_probability > 0 and s > 0:
        layers.append(
            ColorJitter(
                0.8 * s,
                0.8 * s,
                0.8 * s,
                min(0.2 * s, 0.5),
                probability=jitter_probability,
                seed=derive_seed(seed, 2),
            )
        )
    if grayscale_probability > 0:
        layers.append(RandomGrayscale(grayscale_probability, seed=derive_seed(seed, 3)))
    if blur_probability > 0:
        layers.append(
            GaussianBlur(
                blur_kernel_size((height, width)),
                sigma=(0.1, 2.0),
                probability=blur_probability,
                seed=derive_seed(seed, 4),
            )
        )
    return AugmentationPipeline(layers)


@keras.saving.register_keras_serializable(package="keras_ssl")
class SimCLRAugment(MultiViewAugment):
    """SimCLR's two-view augmentation (Chen et al. 2020, "A Simple Framework for Contrastive
    Learning of Visual Representations", Appendix A).

    Each view independently goes through: random resized crop (``crop_scale``, ratio 3/4-4/3)
    to ``image_size`` -> horizontal flip (p = 0.5) -> colour jitter with brightness, contrast,
    saturation ``0.8 * jitter_strength`` and hue ``0.2 * jitter_strength`` applied with
    probability ``jitter_probability`` (random op order per image) -> grayscale with probability
    ``grayscale_probability`` -> Gaussian blur with sigma ~ U(0.1, 2.0) and a kernel of 10% of
    the image side, with probability ``blur_probability``. Parameters are drawn per image and
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
        seed=None,
        **kwargs,
    ):
        kwargs.pop("pipelines", None)
        self.recipe = dict(
            image_size=list(_size_pair(image_size)),
            crop_scale=[float(v) for v in crop_scale],
            jitter_strength=float(jitter_strength),
            jitter_probability=float(jitter_probability),
            grayscale_probability=float(grayscale_probability),
            blur_probability=float(blur_probability),
            horizontal_flip=bool(horizontal_flip),
        )
        pipelines = [
            simclr_pipeline(seed=derive_seed(seed, view), **self.recipe) for view in range(2)
        ]
        super().__init__(pipelines, **kwargs)
        self.seed = seed

    @classmethod
    def small_images(cls, image_size=32, **overrides):
        """The paper's CIFAR-10 recipe: jitter strength 0.5, no blur (overridable)."""
        config = dict(jitter_strength=0.5, blur_probability=0.0)
        config.update(overrides)
        return cls(image_size, **config)

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(self.recipe)
        config["seed"] = self.seed
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


__all__ = ["SimCLRAugment", "blur_kernel_size", "simclr_pipeline"]
