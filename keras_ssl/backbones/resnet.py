"""ResNet backbones (He et al., 2016), torchvision "v1.5" variant.

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016 (https://arxiv.org/abs/1512.03385).

The architecture follows torchvision's ``torchvision.models.resnet`` ("ResNet v1.5"):
in a bottleneck block the stride sits on the 3x3 convolution (``conv2``), not on
the first 1x1 convolution as in the original paper; the shortcut is a 1x1 strided
projection convolution followed by BatchNorm whenever the spatial size or the
channel count changes, and the identity otherwise.

Two stems are available:

* ``stem="imagenet"``: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool
  (feature maps at stage 1 are 1/4 of the input).
* ``stem="cifar"``: 3x3 stride-1 conv, BN, ReLU and *no* max-pool, the stem used
  for 32x32 images by SimCLR (CIFAR experiments), solo-learn and lightly (feature
  maps at stage 1 keep the input resolution).

Converter notes (for loading torchvision weights)
-------------------------------------------------
Every layer carries a deterministic name that mirrors the torchvision
``state_dict`` key with dots replaced by underscores:

==============================  ===========================================
Keras layer name                torchvision module
==============================  ===========================================
``conv1``                       ``conv1``
``bn1``                         ``bn1``
``layer{s}_{b}_conv{k}``        ``layer{s}.{b}.conv{k}``
``layer{s}_{b}_bn{k}``          ``layer{s}.{b}.bn{k}``
``layer{s}_{b}_downsample_0``   ``layer{s}.{b}.downsample.0`` (1x1 conv)
``layer{s}_{b}_downsample_1``   ``layer{s}.{b}.downsample.1`` (BatchNorm)
==============================  ===========================================

(``s`` is 1-based, ``b`` and ``k`` as in torchvision: ``b`` 0-based, ``k`` 1-based.)
Weight layout: a Keras ``Conv2D`` kernel is ``(kh, kw, in, out)``, i.e. the torch
weight ``(out, in, kh, kw)`` transposed with ``(2, 3, 1, 0)``. A Keras
``BatchNormalization`` holds ``[gamma, beta, moving_mean, moving_variance]`` =
torch ``[weight, bias, running_mean, running_var]``. There is no ``fc`` layer:
the backbone ends with global average pooling (``avg_pool``).

Parity details: convolutions have no bias, BatchNorm uses ``epsilon=1e-5`` and
``momentum=0.9`` (torch's ``momentum=0.1``), and every strided convolution and the
max-pool use an explicit symmetric ``ZeroPadding2D`` (layers ``*_pad``) followed by
``padding="valid"``: Keras' ``"same"`` pads asymmetrically (bottom/right only) at
stride 2 on even inputs, which would break numerical parity. Stride-1 3x3
convolutions use ``"same"``, which is symmetric there. The max-pool's zero
padding equals torch's ``-inf`` padding because its input is post-ReLU
(non-negative). Known tiny difference: torch updates ``running_var`` with the
unbiased batch variance, Keras with the biased one (training statistics only).
"""

import keras

from keras_ssl.backbones import _direct_calls
from keras_ssl.backbones._arguments import adopt_policy, check_model_arguments, layer_policy
from keras_ssl.layers import fused_batch_norm, small_map_conv

_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9
_DATA_FORMATS = ("channels_last", "channels_first")


def _kernel_initializer():
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def _conv(filters, kernel_size, strides, name, data_format, dtype=None):
    """Bias-free conv; stride-2 convs get explicit symmetric padding by the caller."""
    return small_map_conv.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same" if strides == 1 else "valid",
        use_bias=False,
        data_format=data_format,
        kernel_initializer=_kernel_initializer(),
        name=name,
        dtype=dtype,
    )


def _bn(name, data_format, zero_gamma=False, dtype=None):
    return fused_batch_norm.BatchNormalization(
        axis=-1 if data_format == "channels_last" else 1,
        epsilon=_BN_EPSILON,
        momentum=_BN_MOMENTUM,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
        dtype=dtype,
    )


def _strided_conv(x, filters, kernel_size, strides, name, data_format, dtype=None):
    """Torch-style conv: symmetric ``kernel_size // 2`` zero padding, then "valid" conv."""
    pad = kernel_size // 2
    if strides != 1 and pad > 0:
        x = keras.layers.ZeroPadding2D(
            pad, data_format=data_format, name=f"{name}_pad", dtype=dtype
        )(x)
    return _conv(filters, kernel_size, strides, name, data_format, dtype)(x)


def _channels(x, data_format):
    return x.shape[-1] if data_format == "channels_last" else x.shape[1]


def _shortcut(x, filters, strides, prefix, data_format, dtype):
    if strides == 1 and _channels(x, data_format) == filters:
        return x
    # 1x1 stride-s "valid" conv samples pixels 0, s, 2s, ... exactly like torch.
    x = _conv(filters, 1, strides, f"{prefix}_downsample_0", data_format, dtype)(x)
    return _bn(f"{prefix}_downsample_1", data_format, dtype=dtype)(x)


def _basic_block(x, filters, strides, prefix, zero_init_residual, data_format, dtype):
    shortcut = _shortcut(x, filters, strides, prefix, data_format, dtype)
    y = _strided_conv(x, filters, 3, strides, f"{prefix}_conv1", data_format, dtype)
    y = _bn(f"{prefix}_bn1", data_format, dtype=dtype)(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu1", dtype=dtype)(y)
    y = _conv(filters, 3, 1, f"{prefix}_conv2", data_format, dtype)(y)
    y = _bn(f"{prefix}_bn2", data_format, zero_gamma=zero_init_residual, dtype=dtype)(y)
    y = keras.layers.Add(name=f"{prefix}_add", dtype=dtype)([shortcut, y])
    return keras.layers.ReLU(name=f"{prefix}_out", dtype=dtype)(y)


def _bottleneck_block(x, filters, strides, prefix, zero_init_residual, data_format, dtype):
    out_filters = filters * 4
    shortcut = _shortcut(x, out_filters, strides, prefix, data_format, dtype)
    y = _conv(filters, 1, 1, f"{prefix}_conv1", data_format, dtype)(x)
    y = _bn(f"{prefix}_bn1", data_format, dtype=dtype)(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu1", dtype=dtype)(y)
    # v1.5: the stride sits on the 3x3 conv.
    y = _strided_conv(y, filters, 3, strides, f"{prefix}_conv2", data_format, dtype)
    y = _bn(f"{prefix}_bn2", data_format, dtype=dtype)(y)
    y = keras.layers.ReLU(name=f"{prefix}_relu2", dtype=dtype)(y)
    y = _conv(out_filters, 1, 1, f"{prefix}_conv3", data_format, dtype)(y)
    y = _bn(f"{prefix}_bn3", data_format, zero_gamma=zero_init_residual, dtype=dtype)(y)
    y = keras.layers.Add(name=f"{prefix}_add", dtype=dtype)([shortcut, y])
    return keras.layers.ReLU(name=f"{prefix}_out", dtype=dtype)(y)


_BLOCKS = {"basic": (_basic_block, 1), "bottleneck": (_bottleneck_block, 4)}
_STEMS = ("imagenet", "cifar")
_POOLINGS = ("avg", "max", None)


def _apply_pooling(x, pooling, data_format, dtype=None):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(
            data_format=data_format, name="avg_pool", dtype=dtype
        )(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(
            data_format=data_format, name="max_pool", dtype=dtype
        )(x)
    if data_format == "channels_first":  # feature maps leave channels_last, as images enter
        return keras.layers.Permute((2, 3, 1), name="to_channels_last", dtype=dtype)(x)
    return x


def _enter_layout(images, data_format, dtype=None):
    """The channels_last images as the layers' layout (a permuted view for channels_first)."""
    if data_format == "channels_first":
        return keras.layers.Permute((3, 1, 2), name="to_channels_first", dtype=dtype)(images)
    return images


def _resolve_data_format(data_format):
    if data_format is None:
        # PyTorch's convolutions and batch norm take (N, C, H, W): in that order the
        # backbone runs without a transpose around every layer. The images' own
        # channels-last memory is kept (a permuted view), which oneDNN prefers
        # on large maps (small ones: small_map_conv.Conv2D).
        return "channels_first" if keras.backend.backend() == "torch" else "channels_last"
    if data_format not in _DATA_FORMATS:
        raise ValueError(
            f"`data_format` must be one of {_DATA_FORMATS} or None, got {data_format!r}."
        )
    return data_format


def _check_pooling(pooling):
    if pooling not in _POOLINGS:
        raise ValueError(f"`pooling` must be one of {_POOLINGS}, got {pooling!r}.")


@keras.saving.register_keras_serializable(package="keras_ssl")
class ResNet(_direct_calls.DirectCalls, keras.Model):
    """ResNet backbone (He et al., 2016), torchvision v1.5 variant, any input size.

    A functional ``keras.Model`` mapping images ``(batch, H, W, input_channels)``
    (channels_last, any ``H``/``W``) to the global-average-pooled feature vector
    ``(batch, output_dim)``, or with ``pooling=None`` to the last feature map
    ``(batch, H / 32, W / 32, output_dim)`` (ImageNet stem; ``H / 8`` with the CIFAR
    stem). Layer names mirror torchvision (see the module docstring).

    Args:
        block_type: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101/152,
            expansion 4, stride on the 3x3 conv as in torchvision v1.5).
        stackwise_num_blocks: number of blocks in each stage, e.g. ``(2, 2, 2, 2)``
            for ResNet-18 and ``(3, 4, 6, 3)`` for ResNet-50. Stage ``i`` has
            ``width * 2**i`` filters (times 4 at the output of bottleneck blocks)
            and stride 2 for every stage but the first.
        stem: ``"imagenet"`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) or ``"cifar"``
            (3x3/1 conv, BN, ReLU, no max-pool) for small images.
        input_channels: number of image channels (3 for RGB, 1 for grayscale).
        width: filters of the stem and of the first stage (64 in the paper).
        pooling: ``"avg"`` (default) global average pooling, ``"max"`` global max
            pooling, or ``None`` to return the last feature map.
        zero_init_residual: if True, the last BatchNorm of every residual branch
            starts with ``gamma = 0`` so each block starts as the identity
            (Goyal et al., 2017; torchvision's ``zero_init_residual``).
        data_format: the layout the layers compute in, ``"channels_last"`` or
            ``"channels_first"``; images enter and features leave channels_last
            either way, and the weights are the same. ``None`` (default) picks the
            backend's fast layout: channels_first on PyTorch (no transpose around
            each convolution), channels_last on TensorFlow and JAX.
        dtype: dtype policy of every layer, e.g. ``"mixed_bfloat16"`` (float32
            weights, bfloat16 computations and features); None takes the global policy.
        **kwargs: ``keras.Model`` arguments such as ``name`` or ``trainable``.

    Attributes:
        output_dim: channels of the output features (512 for ResNet-18, 2048 for
            ResNet-50 at ``width=64``).

    Example:

    ```python
    import numpy as np
    from keras_ssl.backbones import ResNet

    model = ResNet(block_type="basic", stackwise_num_blocks=(2, 2, 2, 2), stem="cifar")
    features = model(np.zeros((2, 32, 32, 3), "float32"))  # shape (2, 512)
    ```
    """

    def __init__(
        self,
        block_type="basic",
        stackwise_num_blocks=(2, 2, 2, 2),
        stem="imagenet",
        input_channels=3,
        width=64,
        pooling="avg",
        zero_init_residual=False,
        data_format=None,
        dtype=None,
        **kwargs,
    ):
        check_model_arguments("ResNet", kwargs)
        requested_data_format = data_format
        data_format = _resolve_data_format(data_format)
        if block_type not in _BLOCKS:
            raise ValueError(f"`block_type` must be one of {sorted(_BLOCKS)}, got {block_type!r}.")
        if stem not in _STEMS:
            raise ValueError(f"`stem` must be one of {_STEMS}, got {stem!r}.")
        _check_pooling(pooling)
        stackwise_num_blocks = tuple(int(n) for n in stackwise_num_blocks)
        if not stackwise_num_blocks or min(stackwise_num_blocks) < 1:
            raise ValueError(
                "`stackwise_num_blocks` must be a non-empty sequence of positive ints, "
                f"got {stackwise_num_blocks!r}."
            )
        block_fn, expansion = _BLOCKS[block_type]
        policy = layer_policy(dtype)

        # === Functional model ===
        inputs = keras.Input(shape=(None, None, input_channels), name="images")
        x = _enter_layout(inputs, data_format, policy)
        if stem == "imagenet":
            x = _strided_conv(x, width, 7, 2, "conv1", data_format, policy)
        else:
            x = _conv(width, 3, 1, "conv1", data_format, policy)(x)
        x = _bn("bn1", data_format, dtype=policy)(x)
        x = keras.layers.ReLU(name="relu", dtype=policy)(x)
        if stem == "imagenet":
            x = keras.layers.ZeroPadding2D(
                1, data_format=data_format, name="maxpool_pad", dtype=policy
            )(x)
            x = keras.layers.MaxPooling2D(
                3, strides=2, padding="valid", data_format=data_format, name="maxpool", dtype=policy
            )(x)
        for stage, num_blocks in enumerate(stackwise_num_blocks):
            filters = width * 2**stage
            for block in range(num_blocks):
                strides = 2 if (stage > 0 and block == 0) else 1
                prefix = f"layer{stage + 1}_{block}"
                x = block_fn(x, filters, strides, prefix, zero_init_residual, data_format, policy)
        outputs = _apply_pooling(x, pooling, data_format, policy)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        adopt_policy(self, policy)

        # === Config ===
        self.block_type = block_type
        self.stackwise_num_blocks = stackwise_num_blocks
        self.stem = stem
        self.input_channels = input_channels
        self.width = width
        self.pooling = pooling
        self.zero_init_residual = zero_init_residual
        self.data_format = data_format
        self._requested_data_format = requested_data_format
        self.output_dim = width * 2 ** (len(stackwise_num_blocks) - 1) * expansion

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "block_type": self.block_type,
            "stackwise_num_blocks": list(self.stackwise_num_blocks),
            "stem": self.stem,
            "input_channels": self.input_channels,
            "width": self.width,
            "pooling": self.pooling,
            "zero_init_residual": self.zero_init_residual,
            # None (the default) resolves per backend again when the model is loaded.
            "data_format": self._requested_data_format,
            "dtype": self._dtype_argument,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def ResNet18(stem="imagenet", **kwargs):
    """ResNet-18 (He et al., 2016; torchvision layout): basic blocks ``(2, 2, 2, 2)``.

    11,176,512 trainable parameters with the ImageNet stem and 3 input channels
    (torchvision's ``resnet18`` without its ``fc`` layer); ``output_dim`` is 512.

    Args:
        stem: ``"imagenet"`` or ``"cifar"`` (3x3 stride-1 stem, no max-pool).
        **kwargs: any other :class:`ResNet` argument (``input_channels``, ``pooling``,
            ``zero_init_residual``, ``width``, ``name``, ...).

    Example:

    ```python
    import numpy as np
    from keras_ssl.backbones import ResNet18

    model = ResNet18(stem="cifar")
    model(np.zeros((2, 32, 32, 3), "float32")).shape  # (2, 512)
    ```
    """
    kwargs.setdefault("block_type", "basic")
    kwargs.setdefault("stackwise_num_blocks", (2, 2, 2, 2))
    return ResNet(stem=stem, **kwargs)


def ResNet50(stem="imagenet", **kwargs):
    """ResNet-50 v1.5 (He et al., 2016; torchvision): bottleneck blocks ``(3, 4, 6, 3)``.

    23,508,032 trainable parameters with the ImageNet stem and 3 input channels
    (torchvision's ``resnet50`` without its ``fc`` layer); ``output_dim`` is 2048.

    Args:
        stem: ``"imagenet"`` or ``"cifar"`` (3x3 stride-1 stem, no max-pool).
        **kwargs: any other :class:`ResNet` argument.

    Example:

    ```python
    import numpy as np
    from keras_ssl.backbones import ResNet50

    model = ResNet50()
    model(np.zeros((1, 64, 64, 3), "float32")).shape  # (1, 2048)
    ```
    """
    kwargs.setdefault("block_type", "bottleneck")
    kwargs.setdefault("stackwise_num_blocks", (3, 4, 6, 3))
    return ResNet(stem=stem, **kwargs)
