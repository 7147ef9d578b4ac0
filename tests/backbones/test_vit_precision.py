"""ViT dtypes and widths: the `dtype` policy, the exact `mlp_dim`, and position embeddings
interpolated in float32 under mixed precision."""

import keras
import numpy as np
import pytest

from keras_ssl.backbones import ViT
from keras_ssl.backbones.vit import ViTPositionEmbedding, bicubic_matrix

TINY = dict(patch_size=4, hidden_dim=16, depth=1, num_heads=2, pretrain_image_size=16)


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize(
    "policy, variables, outputs",
    [("bfloat16", "bfloat16", "bfloat16"), ("mixed_bfloat16", "float32", "bfloat16")],
)
def test_dtype_is_the_policy_of_every_layer(policy, variables, outputs):
    # keras.Model's functional constructor ignores `dtype`: ViT must hand it to its layers.
    model = ViT(**TINY, dtype=policy)
    assert model.dtype_policy.name == policy
    assert {layer.dtype_policy.name for layer in model.layers[1:]} == {policy}
    assert {keras.backend.standardize_dtype(w.dtype) for w in model.weights} == {variables}
    out = model(np.zeros((1, 20, 16, 3), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == outputs
    assert ViT.from_config(model.get_config()).dtype_policy.name == policy
    assert ViT(**TINY).get_config()["dtype"] is None  # the global policy, as before


def test_mlp_dim_is_the_exact_width():
    # transformers' intermediate_size 120 at width 88: int(88 * (120 / 88)) is 119.
    assert int(88 * (120 / 88)) == 119
    model = ViT(patch_size=4, hidden_dim=88, depth=1, num_heads=2, pretrain_image_size=8,
                mlp_ratio=120 / 88, mlp_dim=120)  # fmt: skip
    assert tuple(model.get_layer("blocks_0_mlp_fc1").kernel.shape) == (88, 120)
    assert tuple(model.get_layer("blocks_0_mlp_fc2").kernel.shape) == (120, 88)
    assert ViT.from_config(model.get_config()).count_params() == model.count_params()
    swiglu = ViT(**TINY, mlp="swiglu", mlp_dim=24)  # SwiGLU: fc1 gives 2 * mlp_dim
    assert tuple(swiglu.get_layer("blocks_0_mlp_fc1").kernel.shape) == (16, 48)
    with pytest.raises(ValueError, match="`mlp_dim` must be positive"):
        ViT(**TINY, mlp_dim=0)


def _half_ulp_bfloat16(x):
    """Half the spacing of bfloat16 numbers (8 significant bits) at ``x``."""
    return np.exp2(np.floor(np.log2(np.abs(x))) - 8)


def _resize(embeddings, grid, h, w, magnitude=False):
    """The DINO resize of `embeddings` to `h x w` in float64; with `magnitude`, the sum of
    the magnitudes of each output's terms."""
    transform = np.abs if magnitude else np.asarray
    matrix_h = transform(bicubic_matrix(grid, h, 0.1))
    matrix_w = transform(bicubic_matrix(grid, w, 0.1))
    values = transform(embeddings[0].astype("float64"))
    patches = np.einsum("hm,wn,mnd->hwd", matrix_h, matrix_w, values[1:].reshape(grid, grid, -1))
    return np.concatenate([values[:1], patches.reshape(h * w, -1)])


def _check_rounded_once(pos, embeddings, grid, h, w, float32_rtol=1e-6):
    """`pos` (the layer's output on zero tokens) is the exact resize of the float32
    `embeddings` rounded once to bfloat16: within half a bfloat16 step of it, give or take
    the float32 error, `float32_rtol` of the magnitude of the terms summed (which can tip
    a value that close to a bfloat16 rounding midpoint)."""
    expected = _resize(embeddings, grid, h, w)
    error = np.abs(_np(keras.ops.cast(pos[0], "float32")) - expected)
    float32_error = float32_rtol * _resize(embeddings, grid, h, w, magnitude=True)
    np.testing.assert_array_less(error, _half_ulp_bfloat16(expected) + float32_error)


def test_position_embeddings_are_interpolated_in_float32_under_mixed_bfloat16():
    # DINOv2 and transformers resize the float32 embeddings in float32 and round once;
    # reading them as bfloat16 and resizing in bfloat16 is off by several bfloat16 steps.
    grid, dim, (h, w) = 4, 64, (7, 5)
    layer = ViTPositionEmbedding(grid, dim, dtype="mixed_bfloat16")
    layer.build()
    embeddings = np.random.default_rng(0).normal(size=(1, 1 + grid * grid, dim))
    layer.embeddings.assign(embeddings.astype("float32"))
    embeddings = _np(layer.embeddings)
    cls, patches = np.zeros((1, 1, dim), "float32"), np.zeros((1, h, w, dim), "float32")
    images = np.zeros((1, 4 * h, 4 * w, 3), "float32")
    pos = layer([cls, patches], images=images)
    assert keras.backend.standardize_dtype(pos.dtype) == "bfloat16"
    _check_rounded_once(pos, embeddings, grid, h, w)
    if keras.backend.backend() == "tensorflow":  # a graph traced with unknown image size
        import tensorflow as tf

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, None, None, dim)),
                tf.TensorSpec((None, None, None, 3)),
            ]
        )
        def traced(patches, images):
            return layer([tf.zeros((1, 1, dim)), patches], images=images)

        # the matrices are computed in float32 too there
        _check_rounded_once(traced(patches, images), embeddings, grid, h, w, 1e-5)
