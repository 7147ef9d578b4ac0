"""Vision Transformer backbones for DINO and DINOv2, channels_last, any input size.

References:

* A. Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
  Recognition at Scale", ICLR 2021 (https://arxiv.org/abs/2010.11929).
* M. Caron et al., "Emerging Properties in Self-Supervised Vision Transformers"
  (DINO), ICCV 2021 (https://arxiv.org/abs/2104.14294).
* M. Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
  TMLR 2024 (https://arxiv.org/abs/2304.07193).
* T. Darcet et al., "Vision Transformers Need Registers", ICLR 2024
  (https://arxiv.org/abs/2309.16588).

Architecture (as in the official DINO / DINOv2 ``vision_transformer.py`` and timm):
a ``Conv2D`` patch embedding (kernel = stride = ``patch_size``, ``"valid"``), a CLS
token, learnable position embeddings for the CLS token and a square
``pretrain_image_size / patch_size`` patch grid, optional register tokens (inserted
right after the CLS token *after* position embeddings are added, so they get none),
``depth`` pre-norm blocks ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``
(fused ``qkv`` projection with bias, scaled dot-product attention, exact erf GELU
MLP or the SwiGLU MLP of DINOv2 ViT-g, optional LayerScale) and a final LayerNorm
(``epsilon=1e-6``).

Position embeddings are interpolated on the fly for every input size, inside the
graph, exactly like DINO's ``interpolate_pos_encoding``: the patch-grid embeddings
are resized with torch-compatible bicubic interpolation (``align_corners=False``,
cubic convolution with ``a = -0.75``, border clamping) using the scale factors
``(h + interpolation_offset) / M`` and ``(w + interpolation_offset) / M`` (``M`` the
pretrain grid side, ``h x w`` the input grid). ``interpolation_offset=0`` means the
``size=(h, w)`` form of DINOv2 register models; ``interpolation_antialias=True``
reproduces torch's ``antialias=True`` bicubic (PIL-style ``a = -0.5`` kernel,
widened when downsampling, truncated and renormalised at the borders). The
interpolation is a pair of constant matrices computed with NumPy from the static
input size, so it is identical on every backend (when TensorFlow retraces a step
with an unknown image size the same matrices are computed in the graph with
``keras.ops``). The stored embeddings are used as they are only for a square image whose
grid is the pretrain grid: DINO and DINOv2 test the image's pixel height and width, not
the grid's, so a non-square image with an ``M x M`` grid (224 x 232 pixels at patch 16,
``M = 14``) is still resampled with the scale factor ``(M + offset) / M``, which moves
the values when ``interpolation_offset`` is non-zero (the ``size=`` form and the
anti-aliased kernel leave them unchanged).

Converter notes (timm / official DINO ``state_dict`` keys)
----------------------------------------------------------

===============================  ============================================
Keras layer (weight)             torch key
===============================  ============================================
``patch_embed`` (kernel, bias)   ``patch_embed.proj.{weight,bias}``; kernel =
                                 weight ``(D, C, P, P)`` transposed ``(2, 3, 1, 0)``
``cls_token`` (token)            ``cls_token`` ``(1, 1, D)``
``register_tokens`` (tokens)     ``register_tokens`` ``(1, R, D)`` (DINOv2 reg)
``mask_token`` (token)           ``mask_token`` ``(1, D)`` (DINOv2)
``pos_embed`` (embeddings)       ``pos_embed`` ``(1, 1 + M * M, D)``
``blocks_{i}_norm1``             ``blocks.{i}.norm1.{weight,bias}`` (gamma, beta)
``blocks_{i}_attn_qkv``          ``blocks.{i}.attn.qkv`` (kernel = weight.T)
``blocks_{i}_attn_proj``         ``blocks.{i}.attn.proj`` (kernel = weight.T)
``blocks_{i}_ls1`` (gamma)       ``blocks.{i}.ls1.gamma`` (LayerScale only)
``blocks_{i}_norm2``             ``blocks.{i}.norm2``
``blocks_{i}_mlp_fc1``           ``blocks.{i}.mlp.fc1`` (kernel = weight.T)
``blocks_{i}_mlp_fc2``           ``blocks.{i}.mlp.fc2`` (kernel = weight.T)
``blocks_{i}_mlp_fc1`` (SwiGLU)  ``blocks.{i}.mlp.w12`` (``[x1; x2]`` stacked)
``blocks_{i}_mlp_fc2`` (SwiGLU)  ``blocks.{i}.mlp.w3``
``blocks_{i}_ls2`` (gamma)       ``blocks.{i}.ls2.gamma`` (LayerScale only)
``norm``                         ``norm.{weight,bias}``
===============================  ============================================

``qkv`` output units are ordered ``(3, heads, head_dim)`` (q, k, v stacked,
head-major) as in timm. Parameter-free layers are named ``blocks_{i}_attn``
(attention core), ``blocks_{i}_mlp_act`` (GELU, or :class:`SwiGLU` splitting ``fc1``'s
output into ``x1, x2`` and returning ``silu(x1) * x2``) and ``blocks_{i}_add{1,2}``.
Converters for timm, the official DINO / DINOv2 code and transformers live in
:mod:`keras_ssl.presets.converters`.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_ssl._xla_cpu import on_xla_cpu
from keras_ssl.backbones import _direct_calls
from keras_ssl.backbones._arguments import adopt_policy, check_model_arguments, layer_policy
from keras_ssl.layers import fused_dense
from keras_ssl.layers.exact_gelu import ExactGELU
from keras_ssl.layers.layer_norm import LayerNormalization

_LN_EPSILON = 1e-6
_OUTPUTS = ("cls", "tokens")
_MLPS = ("gelu", "swiglu")


def _trunc_normal():
    return keras.initializers.TruncatedNormal(stddev=0.02)


# ---------------------------------------------------------------------------
# Torch-compatible bicubic interpolation matrices (NumPy, static shapes).
# ---------------------------------------------------------------------------


def _cubic_weights(t, a):
    """Cubic-convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fraction ``t``."""

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def _scale(in_size, out_size, offset):
    """torch's source/destination ratio: ``1 / scale_factor`` or ``in / out``."""
    if offset:
        return 1.0 / ((out_size + offset) / in_size)
    return in_size / out_size


@functools.lru_cache(maxsize=256)
def bicubic_matrix(in_size, out_size, offset=0.1, antialias=False):
    """Matrix ``W`` (``(out_size, in_size)``, float64) with ``y = W @ x`` along one axis.

    Reproduces ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``
    along one axis, called with ``scale_factor=(out_size + offset) / in_size`` when
    ``offset`` is non-zero (DINO's ``interpolate_pos_encoding``) and with
    ``size=out_size`` when ``offset == 0``, with or without ``antialias``.

    Args:
        in_size: source length.
        out_size: destination length.
        offset: DINO's interpolation offset (0.1); 0 for the ``size=`` form.
        antialias: torch's ``antialias=True`` (PIL-style kernel, ``a = -0.5``).

    Returns:
        A NumPy array of shape ``(out_size, in_size)``; every row sums to 1.
    """
    in_size, out_size = int(in_size), int(out_size)
    scale = _scale(in_size, out_size, offset)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    if not antialias:
        for i in range(out_size):
            src = scale * (i + 0.5) - 0.5  # half-pixel centres, no clamping (cubic)
            base = min(math.floor(src), in_size - 1)
            t = min(max(src - base, 0.0), 1.0)
            for tap, weight in zip(
                range(base - 1, base + 3), _cubic_weights(t, -0.75), strict=True
            ):
                matrix[i, min(max(tap, 0), in_size - 1)] += weight
        return matrix
    # torch's separable anti-aliased kernel (``_upsample_bicubic2d_aa``), which leaves
    # an axis whose size does not change untouched (even with a scale factor != 1).
    if in_size == out_size:
        return np.eye(in_size)
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        x = np.abs((np.arange(xmin, xmax) - center + 0.5) * invscale)
        weights = np.where(
            x < 1.0,
            (1.5 * x - 2.5) * x * x + 1.0,  # a = -0.5
            np.where(x < 2.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, 0.0),
        )
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        matrix[i, xmin:xmax] = weights
    return matrix


def bicubic_matrix_dynamic(in_size, out_size, offset=0.1, antialias=False):
    """:func:`bicubic_matrix` with ``keras.ops`` for a dynamic (tensor) ``out_size``.

    Used inside TensorFlow graphs traced with unknown image height / width (e.g. a
    ``predict`` function retraced with relaxed shapes); returns a float32 tensor
    ``(out_size, in_size)`` equal to :func:`bicubic_matrix` up to float32 rounding.
    """
    out_size = ops.cast(out_size, "int32")
    n_in = float(in_size)
    out_f = ops.cast(out_size, "float32")
    i = ops.cast(ops.arange(out_size), "float32")
    scale = n_in / (out_f + offset) if offset else n_in / out_f
    if not antialias:
        src = scale * (i + 0.5) - 0.5
        base = ops.minimum(ops.floor(src), n_in - 1.0)
        t = ops.clip(src - base, 0.0, 1.0)
        weights = ops.unstack(_cubic_weights_ops(t, -0.75), 4, axis=-1)
        matrix = 0.0
        for k, weight in enumerate(weights):
            tap = ops.cast(ops.clip(base + (k - 1.0), 0.0, n_in - 1.0), "int32")
            matrix = matrix + ops.one_hot(tap, in_size, dtype="float32") * weight[:, None]
        return matrix
    upsampling = ops.cast(scale < 1.0, "float32")
    support = 2.0 * upsampling + 2.0 * scale * (1.0 - upsampling)
    invscale = upsampling + (1.0 - upsampling) / scale
    center = scale * (i + 0.5)
    xmin = ops.maximum(ops.floor(center - support + 0.5), 0.0)[:, None]
    xmax = ops.minimum(ops.floor(center + support + 0.5), n_in)[:, None]
    j = ops.cast(ops.arange(in_size), "float32")[None, :]
    x = ops.abs((j - center[:, None] + 0.5) * invscale)
    near = (1.5 * x - 2.5) * x * x + 1.0
    far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    weights = ops.where(x < 1.0, near, ops.where(x < 2.0, far, 0.0))
    weights = weights * ops.cast((j >= xmin) & (j < xmax), "float32")
    total = ops.sum(weights, axis=1, keepdims=True)
    weights = weights / ops.where(total == 0.0, 1.0, total)
    return ops.where(ops.equal(out_size, in_size), _eye(out_size, in_size), weights)


def _eye(rows, cols):
    """``(rows, cols)`` float32 identity-like matrix for a dynamic ``rows``."""
    return ops.cast(ops.arange(rows)[:, None] == ops.arange(cols)[None, :], "float32")


def _cubic_weights_ops(t, a):
    near = lambda x: ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0  # noqa: E731
    far = lambda x: ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a  # noqa: E731
    return ops.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def interpolate_grid(grid, out_size, offset=0.1, antialias=False):
    """Bicubic resize of a ``(..., H, W, D)`` grid to ``out_size = (h, w)`` (static shapes).

    Backend-independent equivalent of torch's bicubic ``interpolate`` (see
    :func:`bicubic_matrix`) applied to the two axes before the last one. A 16-bit grid
    is resized in float32 and rounded to its dtype once, as DINOv2 and transformers do.
    """
    in_h, in_w = grid.shape[-3], grid.shape[-2]
    out_h, out_w = out_size
    dtype = keras.backend.standardize_dtype(grid.dtype)
    compute = "float64" if dtype == "float64" else "float32"
    wh = ops.convert_to_tensor(bicubic_matrix(in_h, out_h, offset, antialias), dtype=compute)
    ww = ops.convert_to_tensor(bicubic_matrix(in_w, out_w, offset, antialias), dtype=compute)
    grid = ops.einsum("hm,...mnd->...hnd", wh, ops.cast(grid, compute))
    return ops.cast(ops.einsum("wn,...hnd->...hwd", ww, grid), dtype)


# ---------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_ssl")
class ViTClassToken(keras.layers.Layer):
    """Learned CLS token ``(1, 1, D)``; maps a ``(N, h, w, D)`` grid to ``(N, 1, D)``."""

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim

    def build(self, input_shape=None):
        self.token = self.add_weight(
            shape=(1, 1, self.hidden_dim), initializer=_trunc_normal(), name="token"
        )
        self.built = True

    def call(self, grid):
        batch = ops.shape(grid)[0]
        return ops.broadcast_to(ops.cast(self.token, grid.dtype), (batch, 1, self.hidden_dim))

    def compute_output_spec(self, grid):
        return keras.KerasTensor((grid.shape[0], 1, self.hidden_dim), dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="keras_ssl")
class ViTMaskToken(keras.layers.Layer):
    """Learned mask token ``(1, D)`` replacing masked patch embeddings (iBOT / DINOv2).

    ``call(grid, masks=None)``: ``grid`` is ``(N, h, w, D)``, ``masks`` an optional
    boolean ``(N, h * w)``; without ``masks`` the grid is returned unchanged.
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim

    def build(self, input_shape=None):
        self.token = self.add_weight(shape=(1, self.hidden_dim), initializer="zeros", name="token")
        self.built = True

    def call(self, grid, masks=None):
        if masks is None:
            return grid
        shape = ops.shape(grid)  # static where known, tensors in relaxed TF graphs
        masks = ops.reshape(ops.cast(masks, "bool"), (shape[0], shape[1], shape[2], 1))
        return ops.where(masks, ops.cast(self.token, grid.dtype), grid)

    def compute_output_spec(self, grid, masks=None):
        return keras.KerasTensor(grid.shape, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="keras_ssl")
class ViTPositionEmbedding(keras.layers.Layer):
    """Prepends the CLS token to the flattened patch grid and adds position embeddings.

    Holds ``embeddings`` ``(1, 1 + M * M, D)`` (timm's ``pos_embed``).
    ``call([cls, grid], images=images)`` with ``cls`` ``(N, 1, D)``, ``grid``
    ``(N, h, w, D)`` and ``images`` ``(N, H, W, C)``, the images the grid was cut from
    (only their height and width are read), returns ``(N, 1 + h * w, D)``; the patch part
    is interpolated to ``h x w`` (see the module docstring) unless ``h == w == M`` and
    ``H == W``, the test of DINO's ``interpolate_pos_encoding``. With static sizes (JAX,
    torch and TensorFlow graphs traced for one size) the interpolation matrices are
    NumPy constants; otherwise (a TensorFlow graph retraced with unknown image size) they
    are computed in the graph by :func:`bicubic_matrix_dynamic`. Under mixed precision the
    embeddings are read and interpolated in their float32 variable dtype and rounded to
    the compute dtype once, when they are added (DINOv2 and transformers interpolate in
    float32 too).
    """

    def __init__(
        self,
        grid_size,
        hidden_dim,
        interpolation_offset=0.1,
        interpolation_antialias=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.grid_size = int(grid_size)
        self.hidden_dim = int(hidden_dim)
        self.interpolation_offset = float(interpolation_offset)
        self.interpolation_antialias = bool(interpolation_antialias)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            shape=(1, 1 + self.grid_size**2, self.hidden_dim),
            initializer=_trunc_normal(),
            name="embeddings",
            autocast=False,  # read in the variable dtype: `call` rounds them once
        )
        self.built = True

    def _keeps_stored(self, h, w, image_size):
        """DINO's test: the stored embeddings serve a square image with the pretrain grid."""
        height, width = image_size
        return h == self.grid_size and w == self.grid_size and height == width

    def interpolated(self, h, w, image_size):
        """Position embeddings ``(1, 1 + h * w, D)`` for an ``h x w`` patch grid.

        ``image_size`` is the image's ``(height, width)`` in pixels: the stored embeddings
        are returned as they are only when ``h == w == M`` and ``height == width``.
        """
        if self._keeps_stored(h, w, image_size):
            return self.embeddings
        pos = ops.convert_to_tensor(self.embeddings)
        cls_pos = pos[:, :1]
        grid = ops.reshape(pos[:, 1:], (1, self.grid_size, self.grid_size, self.hidden_dim))
        grid = interpolate_grid(
            grid, (h, w), self.interpolation_offset, self.interpolation_antialias
        )
        grid = ops.reshape(grid, (1, h * w, self.hidden_dim))
        return ops.concatenate([cls_pos, grid], axis=1)

    def interpolated_dynamic(self, h, w, image_size):
        """:meth:`interpolated` for tensor ``h`` / ``w`` / ``image_size`` (graphs with
        unknown image size)."""
        m = self.grid_size
        height, width = image_size
        pos = ops.cast(ops.convert_to_tensor(self.embeddings), "float32")
        args = (self.interpolation_offset, self.interpolation_antialias)
        wh = bicubic_matrix_dynamic(m, h, *args)
        ww = bicubic_matrix_dynamic(m, w, *args)
        # DINO skips the interpolation for a square image whose grid already matches.
        same = ops.logical_and(
            ops.logical_and(ops.equal(h, m), ops.equal(w, m)), ops.equal(height, width)
        )
        wh = ops.where(same, _eye(h, m), wh)
        ww = ops.where(same, _eye(w, m), ww)
        grid = ops.reshape(pos[:, 1:], (1, m, m, self.hidden_dim))
        grid = ops.einsum("wn,...hnd->...hwd", ww, ops.einsum("hm,...mnd->...hnd", wh, grid))
        grid = ops.reshape(grid, (1, -1, self.hidden_dim))
        return ops.cast(ops.concatenate([pos[:, :1], grid], axis=1), self.embeddings.dtype)

    def call(self, inputs, images=None):
        if images is None:
            raise ValueError(
                "ViTPositionEmbedding needs `images=`, the images its patch grid was cut "
                "from: DINO keeps the stored position embeddings only for a square image "
                "whose grid is the pretrain grid, so the grid's size alone does not decide. "
                "Call it as `pos_embed([cls, grid], images=images)`."
            )
        cls, grid = inputs
        h, w = grid.shape[1], grid.shape[2]
        image_size = (images.shape[1], images.shape[2])
        if None in (h, w, *image_size):
            # Unknown size at trace time (TensorFlow graphs retraced with relaxed shapes):
            # the same interpolation, with the matrices computed in the graph.
            shape, image_shape = ops.shape(grid), ops.shape(images)
            pos = self.interpolated_dynamic(shape[1], shape[2], image_shape[1:3])
            patches = ops.reshape(grid, (shape[0], -1, self.hidden_dim))
        else:
            pos = self.interpolated(h, w, image_size)
            patches = ops.reshape(grid, (-1, h * w, self.hidden_dim))
        tokens = ops.concatenate([cls, patches], axis=1)
        return tokens + ops.cast(pos, tokens.dtype)

    def compute_output_spec(self, inputs, images=None):
        cls, grid = inputs
        h, w = grid.shape[1], grid.shape[2]
        tokens = None if h is None or w is None else 1 + h * w
        return keras.KerasTensor((grid.shape[0], tokens, self.hidden_dim), dtype=self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "grid_size": self.grid_size,
            "hidden_dim": self.hidden_dim,
            "interpolation_offset": self.interpolation_offset,
            "interpolation_antialias": self.interpolation_antialias,
        }


@keras.saving.register_keras_serializable(package="keras_ssl")
class ViTRegisterTokens(keras.layers.Layer):
    """``num_tokens`` learned register tokens inserted right after the CLS token."""

    def __init__(self, num_tokens, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)
        self.hidden_dim = int(hidden_dim)

    def build(self, input_shape=None):
        # DINOv2: normal_(std=1e-6).
        self.tokens = self.add_weight(
            shape=(1, self.num_tokens, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=1e-6),
            name="tokens",
        )
        self.built = True

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        registers = ops.broadcast_to(
            ops.cast(self.tokens, tokens.dtype), (batch, self.num_tokens, self.hidden_dim)
        )
        return ops.concatenate([tokens[:, :1], registers, tokens[:, 1:]], axis=1)

    def compute_output_spec(self, tokens):
        length = None if tokens.shape[1] is None else tokens.shape[1] + self.num_tokens
        return keras.KerasTensor((tokens.shape[0], length, self.hidden_dim), self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "num_tokens": self.num_tokens,
            "hidden_dim": self.hidden_dim,
        }


def _first_tokens(x, count, axis):
    """The first `count` entries of `x` along `axis` (all of `x` for None)."""
    if count is None:
        return x
    index = [slice(None)] * axis + [slice(0, int(count))]
    return x[tuple(index)]


@keras.saving.register_keras_serializable(package="keras_ssl")
class ViTAttention(keras.layers.Layer):
    """Parameter-free multi-head scaled dot-product attention on a fused ``qkv`` input.

    ``call(qkv)`` with ``qkv`` ``(N, T, 3 * D)`` ordered ``(3, heads, head_dim)``
    returns ``(N, T, D)``; with ``return_attention=True`` it returns
    ``(output, weights)`` with softmax weights ``(N, heads, T, T)``. With
    ``query_tokens=Q`` only the first ``Q`` tokens are queries (every token is still a
    key and a value): the output is ``(N, Q, D)``, the weights ``(N, heads, Q, T)``.
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)

    def call(self, qkv, return_attention=False, query_tokens=None):
        dim = qkv.shape[-1] // 3
        head_dim = dim // self.num_heads
        batch = ops.shape(qkv)[0]
        qkv = ops.reshape(qkv, (batch, -1, 3, self.num_heads, head_dim))
        if not return_attention and keras.backend.backend() == "torch":
            import torch

            # PyTorch's fused SDPA on strided views of qkv, as timm calls it; Keras's op
            # first copies q, k and v to contiguous memory (forward + backward for a
            # ViT-Tiny block's 128 x 65 tokens, 2 CPU threads: 20.1 against 21.3 ms).
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, T, head_dim) each
            q = _first_tokens(q, query_tokens, axis=2)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5)
            return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, -1, dim))
        dtype = keras.backend.standardize_dtype(qkv.dtype)
        explicit = on_xla_cpu() and dtype in ("float32", "float16")
        if not return_attention and not explicit:
            # Keras's op: on TensorFlow its einsum form, which TensorFlow's graph runs faster
            # than the batched matmuls below (25 against 59 ms, the block above); JAX's
            # fused kernel on GPUs, and under mixed_bfloat16 (its logits accumulate in
            # float32, the matmul below would round them to 16 bits).
            q, k, v = ops.unstack(qkv, axis=2)  # (N, T, heads, head_dim) each
            q = _first_tokens(q, query_tokens, axis=1)
            out = ops.dot_product_attention(q, k, v, scale=head_dim**-0.5)
            return ops.reshape(out, (batch, -1, dim))
        # XLA:CPU runs these batched matmuls faster than the einsums of
        # `jax.nn.dot_product_attention` (22 against 30 ms, the block above). 16-bit inputs
        # are computed in float32 and rounded once: 16-bit products would round the logits
        # (XLA:CPU has no float16 product accumulating in float32, which Keras's op asks
        # for: its gradient fails under mixed_float16).
        if dtype in ("float16", "bfloat16"):
            qkv = ops.cast(qkv, "float32")
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, N, heads, T, head_dim)
        q, k, v = _first_tokens(qkv[0], query_tokens, axis=2), qkv[1], qkv[2]
        logits = ops.matmul(q * (head_dim**-0.5), ops.transpose(k, (0, 1, 3, 2)))
        weights = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        out = ops.matmul(ops.cast(weights, v.dtype), v)  # (N, heads, T, head_dim)
        out = ops.cast(ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, -1, dim)), dtype)
        return (out, ops.cast(weights, dtype)) if return_attention else out

    def compute_output_spec(self, qkv, return_attention=False, query_tokens=None):
        batch, length, width = qkv.shape
        queries = length if query_tokens is None else int(query_tokens)
        out = keras.KerasTensor((batch, queries, width // 3), dtype=self.compute_dtype)
        if return_attention:
            shape = (batch, self.num_heads, queries, length)
            return out, keras.KerasTensor(shape, dtype=self.compute_dtype)
        return out

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


@keras.saving.register_keras_serializable(package="keras_ssl")
class LayerScale(keras.layers.Layer):
    """Per-channel learned scale ``x * gamma`` (Touvron et al., 2021; DINOv2 ``ls1/ls2``)."""

    def __init__(self, init_value=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
            name="gamma",
        )
        self.built = True

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


def swiglu_hidden_dim(hidden_dim, mlp_ratio=4.0):
    """DINOv2's SwiGLU width: two thirds of ``int(hidden_dim * mlp_ratio)``, rounded up to 8.

    ViT-g/14 (``hidden_dim=1536``, ``mlp_ratio=4``) gives 4096.

    Example:

    ```python
    from keras_ssl.backbones.vit import swiglu_hidden_dim

    swiglu_hidden_dim(1536)  # 4096
    ```
    """
    return (int(int(hidden_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


@keras.saving.register_keras_serializable(package="keras_ssl")
class SwiGLU(keras.layers.Layer):
    """Gated activation ``silu(x1) * x2`` on ``[x1; x2]`` (Shazeer, 2020, "GLU Variants
    Improve Transformer", https://arxiv.org/abs/2002.05202).

    ``call(x)`` with ``x`` ``(..., 2 * H)`` returns ``(..., H)``: the first half ``x1`` is
    the gate (DINOv2's ``SwiGLUFFNFused`` ``w12`` output, transformers' ``gate_proj``),
    the second ``x2`` the value (``up_proj``).

    Example:

    ```python
    import numpy as np
    from keras_ssl.backbones.vit import SwiGLU

    SwiGLU()(np.ones((2, 8), "float32")).shape  # (2, 4)
    ```
    """

    def call(self, x):
        half = x.shape[-1] // 2
        return ops.silu(x[..., :half]) * x[..., half:]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 2)


# ---------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------


def _dense(units, name, dtype):
    return fused_dense.Dense(
        units,
        kernel_initializer=_trunc_normal(),
        bias_initializer="zeros",
        name=name,
        dtype=dtype,
    )


def _build_layers(
    patch_size,
    hidden_dim,
    depth,
    num_heads,
    mlp_ratio,
    input_channels,
    num_register_tokens,
    layer_scale_init,
    qkv_bias,
    layer_norm_epsilon,
    grid_size,
    interpolation_offset,
    interpolation_antialias,
    use_mask_token,
    mlp="gelu",
    mlp_dim=None,
    dtype=None,
):
    fan_in = input_channels * patch_size * patch_size
    bound = 1.0 / math.sqrt(fan_in)

    def norm(name):
        return LayerNormalization(epsilon=layer_norm_epsilon, name=name, dtype=dtype)

    layers = {
        # torch's default Conv2d init (kaiming_uniform a=sqrt(5)): U(+-1/sqrt(fan_in)).
        "patch_embed": keras.layers.Conv2D(
            hidden_dim,
            patch_size,
            strides=patch_size,
            padding="valid",
            data_format="channels_last",
            kernel_initializer=keras.initializers.VarianceScaling(
                1.0 / 3.0, mode="fan_in", distribution="uniform"
            ),
            bias_initializer=keras.initializers.RandomUniform(-bound, bound),
            name="patch_embed",
            dtype=dtype,
        ),
        "cls_token": ViTClassToken(hidden_dim, name="cls_token", dtype=dtype),
        "pos_embed": ViTPositionEmbedding(
            grid_size,
            hidden_dim,
            interpolation_offset=interpolation_offset,
            interpolation_antialias=interpolation_antialias,
            name="pos_embed",
            dtype=dtype,
        ),
        "norm": norm("norm"),
    }
    if use_mask_token:
        layers["mask_token"] = ViTMaskToken(hidden_dim, name="mask_token", dtype=dtype)
    if num_register_tokens:
        layers["register_tokens"] = ViTRegisterTokens(
            num_register_tokens, hidden_dim, name="register_tokens", dtype=dtype
        )
    if mlp == "swiglu":
        hidden_mlp = mlp_dim or swiglu_hidden_dim(hidden_dim, mlp_ratio)
        fc1_units, act = 2 * hidden_mlp, SwiGLU
    else:
        hidden_mlp = mlp_dim or int(hidden_dim * mlp_ratio)
        fc1_units, act = hidden_mlp, ExactGELU
    for i in range(depth):
        p = f"blocks_{i}"
        layers[f"{p}_norm1"] = norm(f"{p}_norm1")
        layers[f"{p}_attn_qkv"] = fused_dense.Dense(
            3 * hidden_dim,
            use_bias=qkv_bias,
            kernel_initializer=_trunc_normal(),
            name=f"{p}_attn_qkv",
            dtype=dtype,
        )
        layers[f"{p}_attn"] = ViTAttention(num_heads, name=f"{p}_attn", dtype=dtype)
        layers[f"{p}_attn_proj"] = _dense(hidden_dim, f"{p}_attn_proj", dtype)
        layers[f"{p}_add1"] = keras.layers.Add(name=f"{p}_add1", dtype=dtype)
        layers[f"{p}_norm2"] = norm(f"{p}_norm2")
        layers[f"{p}_mlp_fc1"] = _dense(fc1_units, f"{p}_mlp_fc1", dtype)
        layers[f"{p}_mlp_act"] = act(name=f"{p}_mlp_act", dtype=dtype)
        layers[f"{p}_mlp_fc2"] = _dense(hidden_dim, f"{p}_mlp_fc2", dtype)
        layers[f"{p}_add2"] = keras.layers.Add(name=f"{p}_add2", dtype=dtype)
        if layer_scale_init is not None:
            layers[f"{p}_ls1"] = LayerScale(layer_scale_init, name=f"{p}_ls1", dtype=dtype)
            layers[f"{p}_ls2"] = LayerScale(layer_scale_init, name=f"{p}_ls2", dtype=dtype)
    return layers


def _encode(
    layer,
    images,
    depth,
    num_register_tokens,
    layer_scale,
    use_mask_token,
    masks=None,
    training=None,
    return_attention=False,
    return_last_blocks=0,
    class_token_only=False,
):
    """The ViT forward pass; ``layer(name)`` returns the layer of that name.

    With ``class_token_only``, the last block computes the class token alone, the only
    token the ``"cls"`` output reads: it attends to every token, but the attention
    projection and the MLP run on one token instead of ``1 + R + h * w``. The class
    token's features and every gradient are those of the full pass.
    """
    grid = layer("patch_embed")(images)
    if use_mask_token:
        grid = layer("mask_token")(grid, masks=masks)
    elif masks is not None:
        raise ValueError("This ViT was built with `use_mask_token=False`: `masks` is unsupported.")
    x = layer("pos_embed")([layer("cls_token")(grid), grid], images=images)
    if num_register_tokens:
        x = layer("register_tokens")(x)
    attention = None
    blocks = []
    for i in range(depth):
        p = f"blocks_{i}"
        y = layer(f"{p}_attn_qkv")(layer(f"{p}_norm1")(x))
        if return_attention and i == depth - 1:
            y, attention = layer(f"{p}_attn")(y, return_attention=True)
        elif class_token_only and i == depth - 1:
            y = layer(f"{p}_attn")(y, query_tokens=1)
            x = x[:, :1]
        else:
            y = layer(f"{p}_attn")(y)
        y = layer(f"{p}_attn_proj")(y)
        if layer_scale:
            y = layer(f"{p}_ls1")(y)
        x = layer(f"{p}_add1")([x, y])
        y = layer(f"{p}_mlp_fc1")(layer(f"{p}_norm2")(x))
        y = layer(f"{p}_mlp_fc2")(layer(f"{p}_mlp_act")(y))
        if layer_scale:
            y = layer(f"{p}_ls2")(y)
        x = layer(f"{p}_add2")([x, y])
        if i >= depth - return_last_blocks:
            blocks.append(layer("norm")(x))
    if return_last_blocks:
        return blocks
    x = layer("norm")(x)
    if return_attention:
        return attention
    if class_token_only:
        return {"cls": x[:, 0]}
    return {
        "cls": x[:, 0],
        "patches": x[:, 1 + num_register_tokens :],
        "registers": x[:, 1 : 1 + num_register_tokens],
    }


@keras.saving.register_keras_serializable(package="keras_ssl")
class ViT(_direct_calls.DirectCalls, keras.Model):
    """Vision Transformer backbone (DINO / DINOv2 layout), any input size.

    A functional ``keras.Model`` mapping images ``(batch, H, W, input_channels)``
    (channels_last; ``H`` and ``W`` static at trace time, patches of a non-divisible
    size are dropped like a "valid" convolution) to the CLS feature after the final
    LayerNorm, ``(batch, hidden_dim)`` (``output="cls"``), or with
    ``output="tokens"`` to a dict ``{"cls": (batch, D), "patches": (batch, h * w, D),
    "registers": (batch, R, D)}`` with ``h = H // patch_size``, ``w = W // patch_size``.
    Position embeddings are interpolated for every input size (see the module
    docstring); layer names mirror timm / DINO (see the module docstring).

    Args:
        patch_size: side of the square patches (16 or 8 for DINO, 14 for DINOv2).
        hidden_dim: token width ``D``.
        depth: number of transformer blocks.
        num_heads: attention heads (``hidden_dim`` must be divisible by it).
        mlp_ratio: MLP hidden width as a multiple of ``hidden_dim`` (see ``mlp``).
        input_channels: image channels.
        num_register_tokens: register tokens ``R`` (Darcet et al., 2024), inserted after
            the CLS token without position embedding.
        layer_scale_init: initial LayerScale value (DINOv2: ``1e-5``; ``1.0`` when
            loading checkpoints) or ``None`` for no LayerScale (DINO).
        qkv_bias: bias on the fused ``qkv`` projection.
        layer_norm_epsilon: epsilon of every LayerNorm (1e-6 in DINO / DINOv2).
        pretrain_image_size: image size the position embeddings are defined for:
            ``(pretrain_image_size // patch_size) ** 2`` patch positions plus the CLS.
        interpolation_offset: DINO's offset in the scale factor ``(h + offset) / M``;
            ``0`` uses the ``size=(h, w)`` form (DINOv2 register models).
        interpolation_antialias: torch's ``antialias=True`` bicubic (DINOv2 register
            models use it with ``interpolation_offset=0``).
        mlp: ``"gelu"`` (``fc1`` -> exact GELU -> ``fc2``, width
            ``int(hidden_dim * mlp_ratio)``) or ``"swiglu"`` (DINOv2 ViT-g: ``fc1`` to
            ``2 * H``, :class:`SwiGLU`, ``fc2``, with ``H =``
            :func:`swiglu_hidden_dim` ``(hidden_dim, mlp_ratio)``).
        mlp_dim: the MLP hidden width itself (GELU: ``fc1``'s units; SwiGLU: ``H``),
            replacing the width ``mlp_ratio`` gives; for checkpoints whose width is no
            exact multiple of ``hidden_dim`` (transformers' ``intermediate_size``).
        use_mask_token: create the learned ``mask_token`` used by
            :meth:`forward_features` ``masks`` (``D`` extra parameters; the official DINO
            v1 backbones have none).
        output: ``"cls"`` (default) or ``"tokens"`` (dict, see above). The ``"cls"``
            model runs its last block on the class token alone (the other tokens are
            its keys and values), the only token it returns: the same features and
            gradients, for about three quarters less of that block's work.
        dtype: dtype policy of every layer, e.g. ``"mixed_bfloat16"``; None takes the
            global policy.
        **kwargs: ``keras.Model`` arguments such as ``name`` or ``trainable``.

    Attributes:
        output_dim: ``hidden_dim``.
        patch_size: the patch size.
        output_type: the ``output`` argument (``keras.Model.output`` is taken).

    Example:

    ```python
    import numpy as np
    from keras_ssl.backbones import ViT

    model = ViT(patch_size=4, hidden_dim=32, depth=2, num_heads=2, pretrain_image_size=32)
    model(np.zeros((2, 32, 32, 3), "float32")).shape  # (2, 32)
    model(np.zeros((2, 16, 24, 3), "float32")).shape  # (2, 32), interpolated
    ```
    """

    def __init__(
        self,
        patch_size=16,
        hidden_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        input_channels=3,
        num_register_tokens=0,
        layer_scale_init=None,
        qkv_bias=True,
        layer_norm_epsilon=_LN_EPSILON,
        pretrain_image_size=224,
        interpolation_offset=0.1,
        interpolation_antialias=False,
        use_mask_token=True,
        output="cls",
        mlp="gelu",
        mlp_dim=None,
        dtype=None,
        **kwargs,
    ):
        check_model_arguments("ViT", kwargs)
        if output not in _OUTPUTS:
            raise ValueError(f"`output` must be one of {_OUTPUTS}, got {output!r}.")
        if mlp not in _MLPS:
            raise ValueError(f"`mlp` must be one of {_MLPS}, got {mlp!r}.")
        patch_size, hidden_dim, depth = int(patch_size), int(hidden_dim), int(depth)
        num_heads, num_register_tokens = int(num_heads), int(num_register_tokens)
        if min(patch_size, hidden_dim, depth, num_heads) < 1 or num_register_tokens < 0:
            raise ValueError(
                "`patch_size`, `hidden_dim`, `depth` and `num_heads` must be positive and "
                "`num_register_tokens` non-negative."
            )
        if hidden_dim % num_heads:
            raise ValueError(
                f"`hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})."
            )
        grid_size = int(pretrain_image_size) // patch_size
        if grid_size < 1:
            raise ValueError(
                f"`pretrain_image_size` ({pretrain_image_size}) must be >= `patch_size`."
            )
        if mlp_dim is not None:
            mlp_dim = int(mlp_dim)
            if mlp_dim < 1:
                raise ValueError(f"`mlp_dim` must be positive or None, got {mlp_dim}.")
        if layer_scale_init is not None:
            layer_scale_init = float(layer_scale_init)
        policy = layer_policy(dtype)
        layers = _build_layers(
            patch_size,
            hidden_dim,
            depth,
            num_heads,
            mlp_ratio,
            input_channels,
            num_register_tokens,
            layer_scale_init,
            qkv_bias,
            layer_norm_epsilon,
            grid_size,
            interpolation_offset,
            interpolation_antialias,
            use_mask_token,
            mlp,
            mlp_dim,
            policy,
        )
        inputs = keras.Input(shape=(None, None, input_channels), name="images")
        features = _encode(
            layers.__getitem__,
            inputs,
            depth,
            num_register_tokens,
            layer_scale_init is not None,
            use_mask_token,
            class_token_only=output == "cls",
        )
        outputs = features["cls"] if output == "cls" else features
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        adopt_policy(self, policy)

        # === Config ===
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = float(mlp_ratio)
        self.input_channels = input_channels
        self.num_register_tokens = num_register_tokens
        self.layer_scale_init = layer_scale_init
        self.qkv_bias = bool(qkv_bias)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.pretrain_image_size = int(pretrain_image_size)
        self.interpolation_offset = float(interpolation_offset)
        self.interpolation_antialias = bool(interpolation_antialias)
        self.use_mask_token = bool(use_mask_token)
        self.mlp = mlp
        self.mlp_dim = mlp_dim
        self.output_type = output
        self.output_dim = hidden_dim
        self.grid_size = grid_size

    def _run(
        self, images, masks=None, training=False, return_attention=False, return_last_blocks=0
    ):
        with _direct_calls.named_layers(self, images) as (layer, images):
            return _encode(
                layer,
                images,
                self.depth,
                self.num_register_tokens,
                self.layer_scale_init is not None,
                self.use_mask_token,
                masks=masks,
                training=training,
                return_attention=return_attention,
                return_last_blocks=return_last_blocks,
            )

    def forward_features(self, images, masks=None, training=False):
        """Token features after the final norm, optionally with masked patches.

        Args:
            images: ``(N, H, W, C)`` images.
            masks: optional boolean ``(N, h * w)``; ``True`` patches have their patch
                embedding replaced by the learned ``mask_token`` before position
                embeddings are added (iBOT / DINOv2 masked image modelling).
            training: training flag (no dropout in this ViT; kept for API symmetry).

        Returns:
            ``{"cls": (N, D), "patches": (N, h * w, D), "registers": (N, R, D)}``.
        """
        return self._run(images, masks=masks, training=training)

    def get_last_self_attention(self, images):
        """Softmax attention weights of the last block, ``(N, heads, T, T)``.

        ``T = 1 + R + h * w`` (CLS, registers, patches, in that order); every row sums
        to 1 (DINO's ``get_last_selfattention``, used for the attention maps).
        """
        return self._run(images, return_attention=True)

    def get_intermediate_layers(self, images, n=1):
        """Tokens of the last ``n`` blocks, each after the final LayerNorm (DINO's protocol).

        As DINO's ``get_intermediate_layers``: the output of each of the last ``n``
        blocks goes through the shared final ``norm``. DINO's linear evaluation
        concatenates ``[x[:, 0] for x in blocks]`` (ViT-S: ``n=4``); ViT-B adds the mean
        of the last block's patch tokens.

        Args:
            images: ``(N, H, W, C)`` images.
            n: number of blocks, ``1 <= n <= depth``.

        Returns:
            A list of ``n`` tensors ``(N, 1 + R + h * w, D)``, oldest block first.

        Example:

        ```python
        import numpy as np
        from keras_ssl.backbones import ViT

        model = ViT(patch_size=4, hidden_dim=32, depth=2, num_heads=2, pretrain_image_size=16)
        blocks = model.get_intermediate_layers(np.zeros((1, 16, 16, 3), "float32"), n=2)
        [b.shape for b in blocks]  # [(1, 17, 32), (1, 17, 32)]
        ```
        """
        n = int(n)
        if not 1 <= n <= self.depth:
            raise ValueError(f"`n` must be in [1, depth={self.depth}], got {n}.")
        return self._run(images, return_last_blocks=n)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "input_channels": self.input_channels,
            "num_register_tokens": self.num_register_tokens,
            "layer_scale_init": self.layer_scale_init,
            "qkv_bias": self.qkv_bias,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "pretrain_image_size": self.pretrain_image_size,
            "interpolation_offset": self.interpolation_offset,
            "interpolation_antialias": self.interpolation_antialias,
            "use_mask_token": self.use_mask_token,
            "output": self.output_type,
            "mlp": self.mlp,
            "mlp_dim": self.mlp_dim,
            "dtype": self._dtype_argument,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _constructor(hidden_dim, num_heads, patch_size, kwargs):
    kwargs.setdefault("hidden_dim", hidden_dim)
    kwargs.setdefault("num_heads", num_heads)
    kwargs.setdefault("depth", 12)
    return ViT(patch_size=patch_size, **kwargs)


def ViTTiny(patch_size=16, **kwargs):
    """ViT-Tiny (DeiT-Ti): ``hidden_dim=192``, 3 heads, depth 12; see :class:`ViT`.

    Example:

    ```python
    from keras_ssl.backbones import ViTTiny

    ViTTiny(patch_size=16).output_dim  # 192
    ```
    """
    return _constructor(192, 3, patch_size, kwargs)


def ViTSmall(patch_size=16, **kwargs):
    """ViT-Small (DINO ``vit_small``): ``hidden_dim=384``, 6 heads, depth 12.

    21,665,664 parameters for patch 16 at ``pretrain_image_size=224`` with
    ``use_mask_token=False`` (timm ``vit_small_patch16_224`` without head, the
    official DINO ViT-S/16 backbone); the default mask token adds 384.

    Example:

    ```python
    from keras_ssl.backbones import ViTSmall

    ViTSmall(patch_size=16, use_mask_token=False).count_params()  # 21665664
    ```
    """
    return _constructor(384, 6, patch_size, kwargs)


def ViTBase(patch_size=16, **kwargs):
    """ViT-Base (DINO ``vit_base``): ``hidden_dim=768``, 12 heads, depth 12.

    85,798,656 parameters for patch 16 at 224 with ``use_mask_token=False`` (timm
    ``vit_base_patch16_224`` without head); the default mask token adds 768.

    Example:

    ```python
    from keras_ssl.backbones import ViTBase

    ViTBase(patch_size=16).output_dim  # 768
    ```
    """
    return _constructor(768, 12, patch_size, kwargs)
