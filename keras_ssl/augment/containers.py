"""Composition: random apply wrapper, sequential pipeline and multi-view container."""

import keras

from keras_ssl.augment._base import (
    AugmentationLayer,
    check_probability,
    config_without_sublayers,
    to_unit_float,
)


def _serialize_layers(layers):
    return [keras.saving.serialize_keras_object(layer) for layer in layers]


def _deserialize_layer(config):
    if isinstance(config, keras.layers.Layer):
        return config
    if isinstance(config, (list, tuple)):
        return [_deserialize_layer(c) for c in config]
    return keras.saving.deserialize_keras_object(config)


def _deserialize_layers(configs):
    return [_deserialize_layer(c) for c in configs]


@keras.saving.register_keras_serializable(package="keras_ssl")
class RandomApply(AugmentationLayer):
    """Applies ``layer`` to each image with probability ``probability``, else passes it through.

    Per-image version of ``torchvision.transforms.RandomApply``. The wrapped layer must keep the
    image shape; it is evaluated on the whole batch and the result is selected per image. To be
    usable inside ``tf.data`` under any backend, the wrapped layer should itself be a
    ``DataLayer`` (all ``keras_ssl.augment`` layers and Keras' image preprocessing layers are).

    Args:
        layer: The layer to apply.
        probability: Probability of applying it to each image.
        seed: Optional integer seed (for the coin; the wrapped layer has its own seed).
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import RandomApply, Solarize
    >>> images = np.random.uniform(size=(4, 8, 8, 3)).astype("float32")
    >>> tuple(RandomApply(Solarize(0.5), probability=0.2, seed=0)(images).shape)
    (4, 8, 8, 3)
    """

    def __init__(self, layer, probability=0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not isinstance(layer, keras.layers.Layer):
            layer = keras.saving.deserialize_keras_object(layer)
        self.layer = layer
        self.probability = check_probability("probability", probability)

    def augment(self, images):
        apply = self.per_image_mask(images, self.probability)
        return self.select(apply, self.layer(images), images)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["probability"] = self.probability
        if not config_without_sublayers():
            config["layer"] = keras.saving.serialize_keras_object(self.layer)
        return config

    def _sublayers_in_call_order(self):
        return [self.layer]


@keras.saving.register_keras_serializable(package="keras_ssl")
class AugmentationPipeline(AugmentationLayer):
    """Applies ``layers`` in sequence (a ``tf.data``-safe, serialisable ``Sequential``).

    ``keras.Sequential`` is not a ``DataLayer`` and so cannot run inside ``tf.data`` when the
    Keras backend is JAX or torch; this container can. Use it to describe one view of a
    multi-view recipe.

    Args:
        layers: List of augmentation layers (e.g. ``keras_ssl.augment`` layers).
        **kwargs: Base layer arguments.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import AugmentationPipeline, RandomHorizontalFlip, RandomResizedCrop
    >>> images = np.random.uniform(size=(4, 32, 32, 3)).astype("float32")
    >>> pipeline = AugmentationPipeline(
    ...     [RandomResizedCrop(16, 16, seed=0), RandomHorizontalFlip(seed=1)]
    ... )
    >>> tuple(pipeline(images).shape)
    (4, 16, 16, 3)
    """

    def __init__(self, layers, **kwargs):
        kwargs.pop("seed", None)
        super().__init__(seed=None, **kwargs)
        self.layers = _deserialize_layers(list(layers))

    def augment(self, images):
        for layer in self.layers:
            images = layer(images)
        return images

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def get_config(self):
        config = super().get_config()
        config.pop("seed", None)
        if not config_without_sublayers():
            config["layers"] = _serialize_layers(self.layers)
        return config

    def _sublayers_in_call_order(self):
        return list(self.layers)


@keras.saving.register_keras_serializable(package="keras_ssl")
class MultiViewAugment(AugmentationLayer):
    """Turns a batch of images into a tuple of augmented views, one per pipeline.

    This is the building block of the recipes: symmetric two-view recipes (SimCLR, MoCo),
    asymmetric ones (BYOL: a different blur/solarize probability per view) and multi-crop
    (DINO: several pipelines with different ``RandomResizedCrop`` output sizes) are all lists
    of pipelines. Each pipeline has its own random state, so the views are independent.
    Integer (``uint8``) images are converted to float32 in [0, 1] first.

    Args:
        pipelines: List of layers, or of lists of layers (wrapped in an
            ``AugmentationPipeline``), one per view.
        **kwargs: Base layer arguments.

    Attributes:
        num_views: Number of views returned by ``call``.

    Example:

    >>> import numpy as np
    >>> from keras_ssl.augment import MultiViewAugment, RandomHorizontalFlip, RandomResizedCrop
    >>> images = np.random.randint(0, 256, size=(4, 32, 32, 3), dtype="uint8")
    >>> augment = MultiViewAugment([
    ...     [RandomResizedCrop(24, 24, seed=0), RandomHorizontalFlip(seed=1)],
    ...     [RandomResizedCrop(12, 12, scale=(0.05, 0.4), seed=2)],
    ... ])
    >>> [tuple(v.shape) for v in augment(images)]
    [(4, 24, 24, 3), (4, 12, 12, 3)]
    """

    def __init__(self, pipelines, **kwargs):
        kwargs.pop("seed", None)
        super().__init__(seed=None, **kwargs)
        pipelines = _deserialize_layers(list(pipelines)) if pipelines else []
        self.pipelines = [
            AugmentationPipeline(p) if isinstance(p, (list, tuple)) else p for p in pipelines
        ]
        if not self.pipelines:
            raise ValueError("`pipelines` must contain at least one pipeline.")

    @property
    def num_views(self):
        return len(self.pipelines)

    def call(self, inputs):
        images = to_unit_float(inputs)
        images = self.backend.core.cast(self.backend.core.convert_to_tensor(images), "float32")
        return tuple(pipeline(images) for pipeline in self.pipelines)

    def compute_output_shape(self, input_shape):
        return tuple(tuple(p.compute_output_shape(input_shape)) for p in self.pipelines)

    def get_config(self):
        config = super().get_config()
        config.pop("seed", None)
        if not config_without_sublayers():
            config["pipelines"] = _serialize_layers(self.pipelines)
        return config

    def _sublayers_in_call_order(self):
        return list(self.pipelines)


__all__ = ["AugmentationPipeline", "MultiViewAugment", "RandomApply"]
