"""Private, backend-parametrised image kernels shared by the augmentation layers.

Every function takes ``B``, a backend dispatcher (``layer.backend`` or
:func:`keras_ssl.augment._base.current_backend`), and works on float32 batches
``(N, H, W, C)`` with per-image parameters of shape ``(N,)``. No per-image Python loops,
no ``affine_transform`` / ``crop_and_resize``: everything is einsum / elementwise so it
compiles under XLA (TF and JAX) and runs eagerly on torch.
"""

import numpy as np

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def static_image_size(images, layer_name):
    """``(height, width)`` of a batch, which the crop and blur matrices are built for."""
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(
            f"{layer_name} needs images of a known height and width, got shape "
            f"{tuple(images.shape)}. In a tf.data pipeline, resize the images to one size "
            "before augmenting, e.g. `tf.image.resize(image, size) / 255.0` for uint8 images "
            "(it returns floats in [0, 255]), or read them with keras_ssl.data.image_folder("
            "..., image_size=...), and batch them with drop_remainder or a static shape."
        )
    return int(height), int(width)


def check_color_channels(images, layer_name):
    """Colour augmentations take RGB (3 channels) or grayscale (1 channel) images."""
    channels = images.shape[-1]
    if channels not in (1, 3):
        raise ValueError(
            f"{layer_name} takes RGB (3 channels) or grayscale (1 channel) images, got "
            f"shape {tuple(images.shape)}. Drop an alpha channel (`images[..., :3]`); in "
            "tf.data, decode with a fixed channel count (`tf.io.decode_image(..., "
            "channels=3)`)."
        )


# --------------------------------------------------------------------------------------------
# Separable per-image linear resampling.
# --------------------------------------------------------------------------------------------
def apply_separable(B, images, ry, rx):
    """``out[n] = ry[n] @ images[n] @ rx[n]^T`` per channel.

    Args:
        images: ``(N, H, W, C)``.
        ry: ``(N, Ho, H)`` row-mixing matrices.
        rx: ``(N, Wo, W)`` column-mixing matrices.

    Returns:
        ``(N, Ho, Wo, C)``.
    """
    rows = B.numpy.einsum("nih,nhwc->niwc", ry, images)
    out = B.numpy.einsum("niwc,njw->nijc", rows, rx)
    if B.name == "torch":
        # torch's einsum returns a permuted view of its batched matmul's (N, Ho, C, Wo)
        # memory. A ResNet on PyTorch runs channels-last convolutions on dense (N, H, W, C)
        # images (resnet.py) but channels-first ones on this order: 10% slower MoCo-v2
        # steps in `fit` (ResNet-18, 32 px, 2 CPU cores).
        out = out.contiguous()
    return out


INTERPOLATIONS = ("bilinear", "bicubic")

# Keys' cubic convolution parameter of PIL's and torch's antialiased bicubic resize.
_CUBIC_A = -0.5


def _filter_weights(B, distance, interpolation):
    """Filter of ``interpolation`` at ``distance`` (in units of the filter's scale).

    ``bilinear`` is the triangle ``max(1 - |x|, 0)`` (support 1); ``bicubic`` is Keys' cubic
    convolution kernel with ``a = -0.5`` (support 2), the filter of PIL's ``BICUBIC`` and of
    torch's ``interpolate(mode="bicubic", antialias=True)``:
    ``(a + 2)|x|^3 - (a + 3)|x|^2 + 1`` for ``|x| < 1``, ``a|x|^3 - 5a|x|^2 + 8a|x| - 4a``
    for ``1 <= |x| < 2``, else 0.
    """
    np_ = B.numpy
    x = np_.abs(distance)
    if interpolation == "bilinear":
        return np_.maximum(1.0 - x, 0.0)
    a = _CUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np_.where(np_.less(x, 1.0), near, np_.where(np_.less(x, 2.0), far, 0.0))


def interpolation_matrix(B, start, length, in_size, out_size, interpolation="bilinear"):
    """Per-image resampling matrix ``(N, out_size, in_size)`` of a crop-and-resize.

    Output sample ``i`` of image ``n`` sits at source coordinate
    ``start[n] + (i + 0.5) * length[n] / out_size - 0.5`` (half-pixel centres). Source
    pixels outside ``[start, start + length)`` get zero weight, which reproduces "crop then
    resize". When downscaling (``length > out_size``) the filter is widened by the scale
    factor (antialiasing, as PIL / torchvision ``antialias=True``). Rows are normalised to
    sum to one, so a filter cut by the crop's border is renormalised over the pixels left,
    as PIL does. ``interpolation`` is ``"bilinear"`` (triangle filter) or ``"bicubic"``
    (see :func:`_filter_weights`).
    """
    np_ = B.numpy
    start = B.core.cast(start, "float32")
    length = B.core.cast(length, "float32")
    k = B.core.convert_to_tensor(np.arange(in_size, dtype="float32"))
    i = B.core.convert_to_tensor(np.arange(out_size, dtype="float32"))
    # Written so that TensorFlow's graph optimizer (constant folding) has nothing to rewrite,
    # as it does `x / c` (into `x * (1 / c)`) and `x + y - c`: a graph gives the views of an
    # eager call to the last bit (`AugmentationLayer._tf_function`).
    scale = length * (1.0 / out_size)
    src = (start - 0.5)[:, None] + (i[None, :] + 0.5) * scale[:, None]  # (N, Ho)
    support = np_.maximum(scale, 1.0)[:, None, None]
    weights = _filter_weights(B, (k[None, None, :] - src[:, :, None]) / support, interpolation)
    inside = np_.logical_and(
        np_.greater_equal(k[None, :], start[:, None] - 0.5),
        np_.less(k[None, :], start[:, None] + length[:, None] - 0.5),
    )
    weights = weights * B.core.cast(inside, "float32")[:, None, :]
    total = np_.sum(weights, axis=-1, keepdims=True)
    return weights / np_.maximum(total, 1e-12)


def crop_resize(B, images, boxes, height, width, interpolation="bilinear"):
    """Crops ``boxes`` = ``(N, 4)`` rows ``(top, left, box_h, box_w)`` (pixels) and resizes
    each crop to ``(height, width)`` with antialiased ``interpolation`` (see
    :func:`interpolation_matrix`). Bicubic output can overshoot the input's range; it is
    not clipped here."""
    in_h, in_w = static_image_size(images, "RandomResizedCrop")
    boxes = B.core.cast(boxes, "float32")
    ry = interpolation_matrix(B, boxes[:, 0], boxes[:, 2], in_h, height, interpolation)
    rx = interpolation_matrix(B, boxes[:, 1], boxes[:, 3], in_w, width, interpolation)
    return apply_separable(B, images, ry, rx)


# --------------------------------------------------------------------------------------------
# Gaussian blur with reflect padding, as per-image separable matrices.
# --------------------------------------------------------------------------------------------
def reflect_index(index, size):
    """Mirror indices into ``[0, size)`` without repeating the edge (``numpy.pad`` 'reflect')."""
    index = np.asarray(index)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def _reflect_shift_tensor(size, kernel_size):
    """Static ``(K, size, size)`` 0/1 tensor: ``P[t, i, reflect(i + t - r)] += 1``."""
    radius = kernel_size // 2
    shifts = np.zeros((kernel_size, size, size), dtype="float32")
    rows = np.arange(size)
    for t in range(kernel_size):
        np.add.at(shifts[t], (rows, reflect_index(rows + t - radius, size)), 1.0)
    return shifts


def gaussian_kernels(B, sigma, kernel_size):
    """Normalised 1-D Gaussian kernels ``(N, kernel_size)`` for per-image ``sigma`` ``(N,)``."""
    radius = kernel_size // 2
    offsets = B.core.convert_to_tensor(np.linspace(-radius, radius, kernel_size).astype("float32"))
    sigma = B.core.cast(sigma, "float32")
    kernel = B.numpy.exp(-0.5 * B.numpy.square(offsets[None, :] / sigma[:, None]))
    return kernel / B.numpy.sum(kernel, axis=-1, keepdims=True)


def blur_matrix(B, sigma, size, kernel_size):
    """Per-image ``(N, size, size)`` matrix of a 1-D Gaussian blur with reflect padding."""
    kernel = gaussian_kernels(B, sigma, kernel_size)
    shifts = B.core.convert_to_tensor(_reflect_shift_tensor(size, kernel_size))
    return B.numpy.einsum("nt,tik->nik", kernel, shifts)


def gaussian_blur(B, images, sigma, kernel_size):
    """Separable Gaussian blur (same ``sigma`` along both axes), reflect padding.

    Matches torchvision's ``gaussian_blur`` (kernel ``exp(-x^2 / 2 sigma^2)`` on
    ``linspace(-r, r, kernel_size)``, normalised; reflect padding).
    """
    in_h, in_w = static_image_size(images, "GaussianBlur")
    ry = blur_matrix(B, sigma, in_h, kernel_size)
    rx = ry if in_h == in_w else blur_matrix(B, sigma, in_w, kernel_size)
    return apply_separable(B, images, ry, rx)


# --------------------------------------------------------------------------------------------
# Colour ops (torchvision.transforms.functional semantics, float images in [0, 1]).
# --------------------------------------------------------------------------------------------
def _per_image(B, factor):
    return B.numpy.reshape(B.core.cast(factor, "float32"), (-1, 1, 1, 1))


def _clip01(B, x):
    return B.numpy.clip(x, 0.0, 1.0)


def grayscale(B, images):
    """Luma ``0.299 R + 0.587 G + 0.114 B`` with shape ``(N, H, W, 1)`` (identity for C=1)."""
    if int(images.shape[-1]) == 1:
        return images
    r, g, b = images[..., 0:1], images[..., 1:2], images[..., 2:3]
    return GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b


def to_grayscale(B, images):
    """Grayscale image broadcast back to the input's number of channels."""
    gray = grayscale(B, images)
    return B.numpy.broadcast_to(gray, B.core.shape(images))


def _blend(B, images, other, factor):
    factor = _per_image(B, factor)
    return _clip01(B, factor * images + (1.0 - factor) * other)


def adjust_brightness(B, images, factor):
    """``clip(factor * x)`` per image."""
    return _clip01(B, images * _per_image(B, factor))


def adjust_contrast(B, images, factor):
    """Blend with the mean of the image's grayscale version."""
    mean = B.numpy.mean(grayscale(B, images), axis=(1, 2, 3), keepdims=True)
    return _blend(B, images, mean, factor)


def adjust_saturation(B, images, factor):
    """Blend with the grayscale image (identity for C=1)."""
    if int(images.shape[-1]) == 1:
        return images
    return _blend(B, images, grayscale(B, images), factor)


def rgb_to_hsv(B, images):
    np_ = B.numpy
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    maxc = np_.maximum(np_.maximum(r, g), b)
    minc = np_.minimum(np_.minimum(r, g), b)
    equal = np_.equal(maxc, minc)
    chroma = maxc - minc
    ones = np_.ones_like(maxc)
    sat = chroma / np_.where(equal, ones, maxc)
    divisor = np_.where(equal, ones, chroma)
    rc = (maxc - r) / divisor
    gc = (maxc - g) / divisor
    bc = (maxc - b) / divisor
    is_r = np_.equal(maxc, r)
    is_g = np_.logical_and(np_.equal(maxc, g), np_.logical_not(is_r))
    hue = np_.where(is_r, bc - gc, np_.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = np_.mod(hue * (1.0 / 6.0) + 1.0, 1.0)  # a product: see `interpolation_matrix`
    return hue, sat, maxc


def hsv_to_rgb(B, hue, sat, val):
    np_ = B.numpy
    h6 = hue * 6.0
    sector = np_.floor(h6)
    frac = h6 - sector
    sector = np_.mod(sector, 6.0)
    p = np_.clip(val * (1.0 - sat), 0.0, 1.0)
    q = np_.clip(val * (1.0 - sat * frac), 0.0, 1.0)
    t = np_.clip(val * (1.0 - sat * (1.0 - frac)), 0.0, 1.0)

    def pick(c0, c1, c2, c3, c4, c5):
        out = c5
        for idx, c in ((4, c4), (3, c3), (2, c2), (1, c1), (0, c0)):
            out = np_.where(np_.equal(sector, float(idx)), c, out)
        return out

    r = pick(val, q, p, p, t, val)
    g = pick(t, val, val, q, p, p)
    b = pick(p, p, t, val, val, q)
    return np_.stack([r, g, b], axis=-1)


def adjust_hue(B, images, shift):
    """Rotate hue by ``shift`` (fraction of a turn, in [-0.5, 0.5]) in HSV space."""
    if int(images.shape[-1]) == 1:
        return images
    hue, sat, val = rgb_to_hsv(B, images)
    shift = B.numpy.reshape(B.core.cast(shift, "float32"), (-1, 1, 1))
    hue = B.numpy.mod(hue + shift, 1.0)
    return _clip01(B, hsv_to_rgb(B, hue, sat, val))


def solarize(B, images, threshold):
    """``1 - x`` where ``x >= threshold``."""
    return B.numpy.where(B.numpy.greater_equal(images, threshold), 1.0 - images, images)
