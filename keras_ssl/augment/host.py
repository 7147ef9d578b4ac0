"""Augmentation in a host data pipeline that gives each element its own random generator."""

import keras
import numpy as np

from keras_ssl.augment._base import AugmentationLayer
from keras_ssl.augment._random_streams import eager_calls, reseed


def augment_with_rng(augmenter, images, rng):
    """Runs `augmenter` on `images` with its randomness taken from `rng` alone.

    For pipelines that hand every element a random generator of its own, as grain's
    `random_map` does (seeded from the pipeline's seed and the element's index): the views
    then depend on the images and on `rng` only, not on which worker thread or process
    makes them or in which order, so a pipeline with workers gives what it gives without
    them, run after run. The recipe's generators are restarted from one draw of `rng`
    (each sublayer's stream its own) under the lock that keeps concurrent eager calls
    apart.

    Args:
        augmenter: a keras_ssl augmentation layer or recipe (`SimCLRAugment`, ...).
        images: a batch `(N, H, W, C)` or one image `(H, W, C)`: float in [0, 1] or
            integer (uint8 `/ 255`, uint16 `/ 65535`).
        rng: a `numpy.random.Generator`.

    Returns:
        The augmenter's output as NumPy arrays: one array, or a tuple of views for a
        multi-view recipe.

    Example:

    ```python
    import functools

    import grain
    import numpy as np
    import keras_ssl

    images = np.random.default_rng(0).uniform(size=(64, 32, 32, 3)).astype("float32")
    augment = keras_ssl.augment.SimCLRAugment.small_images(32)
    views = (
        grain.MapDataset.source(images)
        .batch(16)
        .random_map(functools.partial(keras_ssl.augment.augment_with_rng, augment), seed=0)
    )
    view_1, view_2 = views[0]  # (16, 32, 32, 3) each; the same every time
    ```
    """
    if not isinstance(augmenter, AugmentationLayer):
        raise TypeError(
            "augment_with_rng takes a keras_ssl augmentation layer or recipe (such as "
            f"keras_ssl.augment.SimCLRAugment), got {type(augmenter).__name__}."
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (grain's random_map passes one), got "
            f"{type(rng).__name__}. Make one with numpy.random.default_rng(seed)."
        )
    with eager_calls():
        reseed(augmenter._layers_with_generators(), int(rng.integers(2**31 - 1)))
        outputs = augmenter(images)
    if isinstance(outputs, (tuple, list)):
        return tuple(keras.ops.convert_to_numpy(view) for view in outputs)
    return keras.ops.convert_to_numpy(outputs)
