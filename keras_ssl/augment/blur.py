"""Gaussian blur with a per-image random sigma."""

import numbers

import keras

from keras_ssl.augment import _ops
from keras_ssl.augment._base import AugmentationLayer, check_probability


@keras.saving.register_keras_serializable(package="keras_ssl")
class GaussianBlur(AugmentationLayer):
    """Blurs each image with probability ``probability`` using a random Gaussian sigma.

    Semantics of ``torchvision.transforms.GaussianBlur`` as used by SimCLR (Chen et al. 2020,
    Appendix A: sigma ~ U(0.1, 2.0), kernel 10% of the image side, p = 0.5): the kernel is
    ``exp(-x^2 / (2 sigma^2))`` on ``x = -r..r`` (``kernel_size = 2r + 1``), normalised, applied
    separably along height and width with reflect padding. Sigma is drawn per image (the same
    for both axes). The padding is folded into per-image ``(N, H, H)`` / ``(N, W, W)`` matrices
    applied with two einsums, so the layer compiles under XLA.

    Args:
        kernel_size: Odd kernel size (an even value is rejected).
        sigma: ``(min, max)`` range of the per-image sigma, or a fixed float.
        probability: Probability of blurring each image.
        seed: Optional integer seed.
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import GaussianBlur
    >>> images = np.random.uniform(size=(4, 16, 16, 3)).astype("float32")
    >>> blur = GaussianBlur(kernel_size=3, sigma=(0.1, 2.0), probability=0.5, seed=0)
    >>> tuple(blur(images).shape)
    (4, 16, 16, 3)
    """

    def __init__(self, kernel_size, sigma=(0.1, 2.0), probability=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        kernel_size = int(kernel_size)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be a positive odd integer. Got {kernel_size}.")
        self.kernel_size = kernel_size
        if isinstance(sigma, numbers.Real):
            sigma = (float(sigma), float(sigma))
        self.sigma = tuple(float(s) for s in sigma)
        if len(self.sigma) != 2 or not 0 < self.sigma[0] <= self.sigma[1]:
            raise ValueError(f"`sigma` must be a positive (min, max) pair. Got {sigma}.")
        self.probability = check_probability("probability", probability)

    def augment(self, images):
        n = self.batch_size(images)
        u = self.uniform((n, 2))
        sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u[:, 0]
        blurred = _ops.gaussian_blur(self.backend, images, sigma, self.kernel_size)
        apply = self.backend.numpy.less(u[:, 1], self.probability)
        return self.select(apply, blurred, images)

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=self.kernel_size, sigma=list(self.sigma), probability=self.probability
        )
        return config


__all__ = ["GaussianBlur"]
