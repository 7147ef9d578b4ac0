"""The evaluation preprocessing of a preset as a serialisable Keras layer."""

import keras
import numpy as np
from keras import ops

from keras_ssl.augment._base import to_unit_float

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@keras.saving.register_keras_serializable(package="keras_ssl")
class Preprocessing(keras.layers.Layer):
    """Resize, centre-crop, scale and normalise: a preset's evaluation transform.

    The torchvision evaluation pipeline of DINO / DINOv2 / MoCo papers,
    ``Resize(resize_size) -> CenterCrop(crop_size) -> ToTensor -> Normalize(mean, std)``,
    for a batch ``(N, H, W, C)`` (or one image ``(H, W, C)``) of channels_last images:

    1. integer images are scaled to ``[0, 1]`` as the augmentation layers scale them:
       ``uint16`` (16-bit PNG) divided by 65535, as torchvision's ``convert_image_dtype``,
       every other integer dtype (``uint8``) divided by 255, as ``ToTensor`` (float images
       are taken as ``[0, 1]``);
    2. an int ``resize_size`` resizes the shorter side to it keeping the aspect ratio
       (``long = int(resize_size * long / short)``, torchvision's rule); a pair
       ``(height, width)`` resizes to exactly that size (torchvision's ``Resize((h, w))``,
       transformers' ``ViTImageProcessor``);
    3. a centred ``crop_size`` square is cut (offset ``round((H - crop) / 2)``, halves to
       even as Python's ``round`` and torchvision);
    4. ``(x - mean) / std`` per channel.

    Resizing uses ``keras.ops.image.resize`` with antialiasing; it is close to, not
    bit-identical with, PIL's resize used by the original pipelines (the models are
    evaluated on images resized by PIL).

    Args:
        resize_size: target of the shorter side (an int), the output size
            ``(height, width)``, or None to skip resizing.
        crop_size: side of the centre crop, or None to skip cropping.
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
        mean, std: per-channel statistics of the ``[0, 1]`` images (ImageNet's by
            default; ``(0, 0, 0)`` and ``(1, 1, 1)`` for SimCLR, which takes raw
            ``[0, 1]`` pixels).
        antialias: antialias when downsampling (as PIL does).

    Example:

    ```python
    import numpy as np
    from keras_ssl.presets import Preprocessing

    preprocess = Preprocessing(resize_size=256, crop_size=224)
    preprocess(np.zeros((2, 300, 400, 3), "uint8")).shape  # (2, 224, 224, 3)
    ```
    """

    def __init__(
        self,
        resize_size=256,
        crop_size=224,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        antialias=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"`interpolation` must be one of {_INTERPOLATIONS}, got {interpolation!r}."
            )
        if len(mean) != len(std) or min(float(s) for s in std) <= 0:
            raise ValueError(
                f"`mean` and `std` need one value per channel and std > 0, got {mean}, {std}."
            )
        self.resize_size = _resize_size(resize_size)
        self.crop_size = None if crop_size is None else int(crop_size)
        self.interpolation = interpolation
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.antialias = bool(antialias)

    def output_size(self, height, width):
        """``(height, width)`` of the output for an input of that size."""
        if self.resize_size is not None:
            height, width = self._resized(height, width)
        if self.crop_size is not None:
            return self.crop_size, self.crop_size
        return height, width

    def _resized(self, height, width):
        if isinstance(self.resize_size, tuple):
            return self.resize_size
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize_size * long / short)
        if height <= width:
            return self.resize_size, new_long
        return new_long, self.resize_size

    def __call__(self, *args, **kwargs):
        # NumPy images are scaled here, before Keras makes them tensors: the torch backend
        # turns a uint16 array into an int32 tensor, which would be read as 8-bit values.
        if args and isinstance(args[0], np.ndarray):
            args = (to_unit_float(args[0]), *args[1:])
        if isinstance(kwargs.get("images"), np.ndarray):
            kwargs["images"] = to_unit_float(kwargs["images"])
        return super().__call__(*args, **kwargs)

    def call(self, images):
        single = len(images.shape) == 3
        if single:
            images = ops.expand_dims(images, 0)
        self._check_channels(images.shape)
        images = to_unit_float(images)
        images = ops.cast(images, self.compute_dtype)
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ValueError(
                "Preprocessing needs images with a static height and width, got shape "
                f"{tuple(images.shape)}."
            )
        if self.resize_size is not None:
            size = self._resized(height, width)
            if size != (height, width):
                images = ops.image.resize(
                    images,
                    size,
                    interpolation=self.interpolation,
                    antialias=self.antialias,
                    data_format="channels_last",
                )
            height, width = size
        if self.crop_size is not None:
            crop = self.crop_size
            if crop > height or crop > width:
                raise ValueError(
                    f"Cannot centre-crop {crop} px from {height}x{width} images; resize first "
                    "(resize_size >= crop_size)."
                )
            # torchvision's CenterCrop: Python's round, which takes halves to even
            top = int(round((height - crop) / 2.0))
            left = int(round((width - crop) / 2.0))
            images = images[:, top : top + crop, left : left + crop, :]
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
        images = (images - mean) / std
        return images[0] if single else images

    def _check_channels(self, shape):
        if len(shape) != 4:
            raise ValueError(
                "Preprocessing takes images (H, W, C) or a batch (N, H, W, C), got shape "
                f"{tuple(shape)}."
            )
        channels, expected = shape[-1], len(self.mean)
        if channels is None or channels == expected:
            return
        if shape[1] == expected:
            hint = (
                "They look channels_first: transpose them to channels_last "
                "(`images.transpose(0, 2, 3, 1)`)."
            )
        elif channels == 1:
            hint = (
                f"For grayscale images, repeat the channel (`keras.ops.repeat(images, "
                f"{expected}, axis=-1)`), as the model was trained on colour images."
            )
        else:
            hint = f"Pass images with {expected} channels, or a mean and std per channel."
        raise ValueError(
            f"The images have {channels} channel(s) (shape {tuple(shape)}, channels_last) but "
            f"the preprocessing's mean and std have {expected}. {hint}"
        )

    def compute_output_shape(self, input_shape):
        *lead, height, width, channels = input_shape
        if height is not None and width is not None:
            height, width = self.output_size(height, width)
        elif self.crop_size is not None:
            height = width = self.crop_size
        elif isinstance(self.resize_size, tuple):
            height, width = self.resize_size
        return (*lead, height, width, channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "resize_size": (
                    list(self.resize_size)
                    if isinstance(self.resize_size, tuple)
                    else self.resize_size
                ),
                "crop_size": self.crop_size,
                "interpolation": self.interpolation,
                "mean": list(self.mean),
                "std": list(self.std),
                "antialias": self.antialias,
            }
        )
        return config

    @classmethod
    def from_card(cls, spec):
        """From a card's ``preprocessing`` dict (extra descriptive keys are ignored)."""
        keys = ("resize_size", "crop_size", "interpolation", "mean", "std", "antialias")
        return cls(**{k: spec[k] for k in keys if k in spec})


def _resize_size(value):
    """None, an int (the shorter side) or a ``(height, width)`` tuple, checked."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or min(int(v) for v in value) < 1:
            raise ValueError(
                "`resize_size` as a size must be (height, width) with positive sides, got "
                f"{value!r}."
            )
        return tuple(int(v) for v in value)
    if int(value) < 1:
        raise ValueError(f"`resize_size` must be positive, got {value!r}.")
    return int(value)
