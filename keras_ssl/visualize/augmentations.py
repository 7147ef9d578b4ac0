"""A grid of the views an augmentation recipe makes of a few images."""

from __future__ import annotations

import matplotlib
import numpy as np
from keras import ops

from keras_ssl.augment._base import to_unit_float

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["augmentation_grid"]


def augmentation_grid(recipe, images, path, title=None):
    """Writes a PNG with one row per image: the image, then every view ``recipe`` makes.

    Shows what a multi-view recipe (`keras_ssl.augment.SimCLRAugment`, `MoCoV2Augment`,
    `BYOLAugment`, `DINOMultiCrop`, ... or any layer returning a tuple of views) does to
    your data: too weak augmentations make the pretext task trivial, too strong ones
    destroy the content; both show up here first. Views of different sizes (DINO's local
    crops) are drawn at their own resolution.

    Args:
        recipe: a layer mapping a batch of images to a tuple (or list) of views, or to
            one batch of augmented images.
        images: ``(N, H, W[, C])`` NumPy images (a handful: one row each).
        path: output PNG path.
        title: optional figure title (default: the recipe's class name).

    Returns:
        The views as a list of NumPy arrays ``(N, h_v, w_v, C)``.

    Example:

    ```python
    from keras_ssl.augment import DINOMultiCrop
    from keras_ssl.datasets import fashion_mnist
    from keras_ssl.visualize import augmentation_grid

    (x, _), _ = fashion_mnist.load_data("embedded")
    views = augmentation_grid(DINOMultiCrop.small_images(28, num_local_crops=4),
                              x[:4, ..., None], "/tmp/dino_views.png")
    len(views)  # 6: 2 global crops, 4 local ones
    ```
    """
    if not callable(recipe):
        raise TypeError(f"recipe must be an augmentation layer, got {type(recipe).__name__}.")
    original = np.asarray(images)
    if original.ndim == 3:
        original = original[..., None]
    if original.ndim != 4 or len(original) == 0:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got {np.shape(images)}.")
    outputs = recipe(original, training=True) if _takes_training(recipe) else recipe(original)
    if not isinstance(outputs, (tuple, list)):
        outputs = [outputs]
    views = [np.asarray(ops.convert_to_numpy(ops.cast(v, "float32"))) for v in outputs]
    shown = to_unit_float(original)
    columns = [shown, *views]
    n = len(original)
    figure, axes = plt.subplots(
        n, len(columns), figsize=(1.5 * len(columns), 1.5 * n + 0.5), squeeze=False
    )
    for i in range(n):
        for j, batch in enumerate(columns):
            image = np.clip(batch[i], 0.0, 1.0)
            gray = image.shape[-1] == 1
            axes[i, j].imshow(image[..., 0] if gray else image, cmap="gray" if gray else None,
                              vmin=0.0, vmax=1.0)  # fmt: skip
            axes[i, j].set_axis_off()
            if i == 0:
                label = "image" if j == 0 else f"view {j} ({batch.shape[1]}px)"
                axes[i, j].set_title(label, fontsize=7)
    figure.suptitle(title or type(recipe).__name__)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return views


def _takes_training(recipe):
    import inspect

    try:
        return "training" in inspect.signature(recipe.call).parameters
    except (AttributeError, TypeError, ValueError):
        return False
