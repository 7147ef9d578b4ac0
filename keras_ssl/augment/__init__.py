"""Per-image random augmentations for self-supervised learning (Keras 3, any backend).

All layers draw their random parameters independently for every image of a batch, work
inside compiled train steps (``jax.jit``, ``tf.function(jit_compile=True)``, torch) and inside
``tf.data`` pipelines whatever ``KERAS_BACKEND`` is, and in host pipelines (a torch
``DataLoader``'s workers, grain's ``random_map`` through ``augment_with_rng``). Images are
channels-last floats in [0, 1].
"""

from keras_ssl.augment.blur import GaussianBlur
from keras_ssl.augment.color import ColorJitter, RandomGrayscale, Solarize
from keras_ssl.augment.containers import AugmentationPipeline, MultiViewAugment, RandomApply
from keras_ssl.augment.geometric import RandomHorizontalFlip, RandomResizedCrop
from keras_ssl.augment.host import augment_with_rng
from keras_ssl.augment.recipes import (
    BYOLAugment,
    DINOMultiCrop,
    MoCoV2Augment,
    SimCLRAugment,
    blur_kernel_size,
    simclr_pipeline,
    view_pipeline,
)

__all__ = [
    "AugmentationPipeline",
    "BYOLAugment",
    "ColorJitter",
    "DINOMultiCrop",
    "GaussianBlur",
    "MoCoV2Augment",
    "MultiViewAugment",
    "RandomApply",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "SimCLRAugment",
    "Solarize",
    "augment_with_rng",
    "blur_kernel_size",
    "simclr_pipeline",
    "view_pipeline",
]
