"""Vision Transformer backbone (DINO / DINOv2 layout)."""

import math

import keras
import numpy as np
import pytest

from keras_ssl import backbones
from keras_ssl.backbones import ViT, ViTBase, ViTSmall, ViTTiny
from keras_ssl.backbones import vit as vit_module
from keras_ssl.backbones.vit import (
    ViTAttention,
    ViTPositionEmbedding,
    bicubic_matrix,
    bicubic_matrix_dynamic,
    interpolate_grid,
)
from tests._support.gradients import gradients

TINY = dict(patch_size=4, hidden_dim=32, depth=2, num_heads=2, pretrain_image_size=32)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _images(n=2, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype("float32")


# --- independent NumPy reference of torch's bicubic (a=-0.75, align_corners=False) ---


def _keys_kernel(x, a=-0.75):
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _reference_resize_1d(values, out_size, scale_factor):
    """Resize along axis 0 with the cubic-convolution formula, clamped borders."""
    in_size = values.shape[0]
    out = np.zeros((out_size,) + values.shape[1:])
    for i in range(out_size):
        src = (i + 0.5) / scale_factor - 0.5
        left = math.floor(src)
        for k in range(left - 1, left + 3):
            out[i] += _keys_kernel(src - k) * values[min(max(k, 0), in_size - 1)]
    return out


def _reference_resize(grid, out_h, out_w, offset):
    """``grid`` (H, W, D) -> (out_h, out_w, D); scale factors from DINO's offset form."""
    in_h, in_w = grid.shape[:2]
    sh = (out_h + offset) / in_h if offset else out_h / in_h
    sw = (out_w + offset) / in_w if offset else out_w / in_w
    rows = _reference_resize_1d(grid, out_h, sh)
    return np.swapaxes(_reference_resize_1d(np.swapaxes(rows, 0, 1), out_w, sw), 0, 1)


@pytest.mark.parametrize("offset", [0.1, 0.0])
def test_bicubic_matches_numpy_reference(offset):
    grid = np.random.default_rng(0).normal(size=(8, 8, 5))
    for out_h, out_w in [(3, 5), (8, 12), (14, 14), (6, 2)]:
        expected = _reference_resize(grid, out_h, out_w, offset)
        got = _np(interpolate_grid(keras.ops.convert_to_tensor(grid, "float32"), (out_h, out_w),
                                   offset=offset))  # fmt: skip
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bicubic_matrix(8, 5, offset).sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("offset", [0.1, 0.0])
def test_bicubic_matches_torch(offset, antialias):
    torch = pytest.importorskip("torch")
    grid = np.random.default_rng(1).normal(size=(1, 14, 14, 6)).astype("float32")
    source = torch.from_numpy(grid).permute(0, 3, 1, 2)
    for out_h, out_w in [(14, 14), (6, 6), (20, 9), (3, 37)]:
        kwargs = {"size": (out_h, out_w)}
        if offset:
            kwargs = {"scale_factor": ((out_h + offset) / 14, (out_w + offset) / 14)}
        expected = torch.nn.functional.interpolate(
            source, mode="bicubic", align_corners=False, antialias=antialias, **kwargs
        )
        expected = expected.permute(0, 2, 3, 1).numpy()
        assert expected.shape == (1, out_h, out_w, 6)
        got = _np(interpolate_grid(grid, (out_h, out_w), offset=offset, antialias=antialias))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_position_embedding_interpolation_in_model():
    torch = pytest.importorskip("torch")
    layer = ViTPositionEmbedding(8, 32)  # the model's ``pos_embed`` layer
    layer.build()
    layer.embeddings.assign(np.random.default_rng(0).normal(size=(1, 65, 32)))
    pos = _np(layer.embeddings)
    # A square image with the pretrain grid: the stored embeddings, untouched.
    np.testing.assert_array_equal(_np(layer.interpolated(8, 8, (32, 32))), pos)
    patch = torch.from_numpy(pos[:, 1:].reshape(1, 8, 8, 32)).permute(0, 3, 1, 2)

    def dino(h0, w0):  # scale_factor=((h0 + 0.1) / sqrt(N), (w0 + 0.1) / sqrt(N)), bicubic
        expected = torch.nn.functional.interpolate(
            patch, scale_factor=((h0 + 0.1) / 8, (w0 + 0.1) / 8), mode="bicubic"
        )
        return expected.permute(0, 2, 3, 1).reshape(1, h0 * w0, 32).numpy()

    got = _np(layer.interpolated(5, 3, (20, 12)))
    np.testing.assert_array_equal(got[:, :1], pos[:, :1])
    np.testing.assert_allclose(got[:, 1:], dino(5, 3), rtol=1e-5, atol=1e-5)
    # DINO skips the resize only when `npatch == N and w == h` in pixels: a non-square
    # image with the pretrain grid is resampled with scale (8 + 0.1) / 8 all the same.
    expected = dino(8, 8)
    assert np.abs(expected - pos[:, 1:]).max() > 0.1  # which moves the values
    cls = np.zeros((2, 1, 32), "float32")
    grid = np.random.default_rng(0).normal(size=(2, 8, 8, 32)).astype("float32")
    for image_size in [(32, 35), (35, 32), (33, 39)]:
        got = _np(layer.interpolated(8, 8, image_size))
        np.testing.assert_allclose(got[:, 1:], expected, rtol=1e-5, atol=1e-5)
        tokens = _np(layer([cls, grid], images=np.zeros((2, *image_size, 3), "float32")))
        np.testing.assert_allclose(tokens[:, 1:] - grid.reshape(2, 64, 32), expected[[0, 0]],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    tokens = _np(layer([cls, grid], images=np.zeros((2, 35, 35, 3), "float32")))
    np.testing.assert_allclose(tokens[:, 1:] - grid.reshape(2, 64, 32), pos[[0, 0], 1:],
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="needs `images=`"):
        layer([cls, grid])


def test_dynamic_interpolation_matches_static():
    # The in-graph path, used only by TensorFlow graphs traced with unknown image size
    # (JAX and torch always see static shapes; JAX's eager op compilation is slow here).
    if keras.backend.backend() == "jax":
        pytest.skip("in-graph interpolation path is TensorFlow-only")
    for offset, antialias in [(0.1, False), (0.0, False), (0.1, True), (0.0, True)]:
        for in_size, out_size in [(8, 8), (8, 3), (8, 13)]:
            size = keras.ops.convert_to_tensor(out_size, "int32")
            got = _np(bicubic_matrix_dynamic(in_size, size, offset, antialias))
            expected = bicubic_matrix(in_size, out_size, offset, antialias)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    layer = ViTPositionEmbedding(8, 16)
    layer.build()
    tensor = lambda n: keras.ops.convert_to_tensor(n, "int32")  # noqa: E731
    # the pretrain grid from square and non-square images, and another grid
    cases = [(8, 8, (32, 32)), (8, 8, (32, 35)), (8, 8, (34, 32)), (5, 11, (20, 44))]
    for h, w, image_size in cases:
        dynamic = layer.interpolated_dynamic(tensor(h), tensor(w), tuple(map(tensor, image_size)))
        np.testing.assert_allclose(
            _np(dynamic), _np(layer.interpolated(h, w, image_size)), rtol=1e-5, atol=1e-6
        )


def test_outputs_any_size():
    model = ViT(**TINY, num_register_tokens=3, layer_scale_init=0.5)
    assert model.output_dim == 32 and model.patch_size == 4
    x = _images(h=35, w=18)  # 8 x 4 patches, the pretrain grid is 8 x 8
    features = model.forward_features(x)
    assert tuple(features["cls"].shape) == (2, 32)
    assert tuple(features["patches"].shape) == (2, 8 * 4, 32)
    assert tuple(features["registers"].shape) == (2, 3, 32)
    # Compiled at two sizes (TensorFlow retraces the second one with unknown H, W).
    assert model.predict(_images(h=32, w=32), verbose=0).shape == (2, 32)
    cls = model.predict(x, verbose=0)
    np.testing.assert_allclose(cls, _np(features["cls"]), rtol=1e-4, atol=1e-5)


def test_vit_small_16_geometry():
    model = ViTSmall(patch_size=16, depth=1, output="tokens")
    for size in (224, 96):  # global and local DINO crops (compiled: fast on every backend)
        out = model.predict(_images(n=1, h=size, w=size), verbose=0)
        grid = (size // 16) ** 2
        assert tuple(out["cls"].shape) == (1, 384)
        assert tuple(out["patches"].shape) == (1, grid, 384)
        assert np.all(np.isfinite(_np(out["cls"]))) and np.all(np.isfinite(_np(out["patches"])))


def _reference_attention(qkv, heads):
    """Multi-head attention from Vaswani et al. (2017), eq. 1, in float64 NumPy."""
    n, t, width = qkv.shape
    d = width // 3 // heads
    q, k, v = np.moveaxis(qkv.astype("float64").reshape(n, t, 3, heads, d), 2, 0)
    logits = np.einsum("nthd,nshd->nhts", q, k) / np.sqrt(d)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("nhts,nshd->nthd", weights, v).reshape(n, t, heads * d)
    return out, weights


def _spy_on_fused_kernels(monkeypatch):
    """Records each call of Keras's attention op or, on torch, of torch's SDPA."""
    fused = []

    def spy_on(module, name):
        original = getattr(module, name)

        def spy(*args, **kwargs):
            fused.append(True)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    spy_on(keras.ops, "dot_product_attention")
    if keras.backend.backend() == "torch":  # the layer calls torch's kernel itself
        import torch

        spy_on(torch.nn.functional, "scaled_dot_product_attention")
    return fused


@pytest.mark.parametrize("xla_cpu", [False, True], ids=["fused", "xla_cpu"])
def test_attention_matches_reference_in_both_paths(monkeypatch, xla_cpu):
    # The plain call runs the backend's fused kernel (torch's SDPA, Keras's op elsewhere),
    # except in float32 on JAX's CPU, where XLA runs the explicit batched matmuls faster:
    # `xla_cpu=True` takes that route on TensorFlow and JAX alike. The call that returns
    # the weights computes them explicitly. All against NumPy.
    monkeypatch.setattr(vit_module, "on_xla_cpu", lambda: xla_cpu)
    fused = _spy_on_fused_kernels(monkeypatch)
    qkv = np.random.default_rng(0).normal(size=(3, 7, 3 * 2 * 8)).astype("float32") * 2.0
    layer = ViTAttention(num_heads=2)
    expected, expected_weights = _reference_attention(qkv, heads=2)
    np.testing.assert_allclose(_np(layer(qkv)), expected, rtol=1e-5, atol=1e-5)
    took_fused = [] if xla_cpu and keras.backend.backend() != "torch" else [True]
    assert fused == took_fused
    out, weights = layer(qkv, return_attention=True)
    assert fused == took_fused
    np.testing.assert_allclose(_np(out), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(weights), expected_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("xla_cpu", [False, True], ids=["fused", "xla_cpu"])
def test_attention_with_fewer_queries_gives_the_first_rows(monkeypatch, xla_cpu):
    # `query_tokens=Q`: the first Q rows of the full attention, every token a key and a
    # value, in every path (the weights' path is the explicit one).
    monkeypatch.setattr(vit_module, "on_xla_cpu", lambda: xla_cpu)
    qkv = np.random.default_rng(4).normal(size=(3, 7, 3 * 2 * 8)).astype("float32") * 2.0
    layer = ViTAttention(num_heads=2)
    expected, expected_weights = _reference_attention(qkv, heads=2)
    for queries in (1, 3):
        out = _np(layer(qkv, query_tokens=queries))
        np.testing.assert_allclose(out, expected[:, :queries], rtol=1e-5, atol=1e-5)
        out, weights = layer(qkv, return_attention=True, query_tokens=queries)
        np.testing.assert_allclose(_np(out), expected[:, :queries], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            _np(weights), expected_weights[:, :, :queries], rtol=1e-5, atol=1e-6
        )
    symbolic = layer(keras.KerasTensor((None, 7, 48)), query_tokens=1)
    assert tuple(symbolic.shape) == (None, 1, 16)


def test_class_token_output_runs_the_last_block_on_the_class_token_alone():
    # `output="cls"` computes only what it returns: the last block's projection and MLP
    # see one token. Its features and their gradients are the full pass's.
    model = ViT(**TINY, num_register_tokens=2, layer_scale_init=0.5, use_mask_token=False)
    assert tuple(model.get_layer("blocks_1_attn_proj").output.shape) == (None, 1, 32)
    assert tuple(model.get_layer("blocks_0_attn_proj").output.shape) == (None, None, 32)
    images = _images(n=3, h=32, w=24, seed=5)
    upstream = np.random.default_rng(6).normal(size=(3, 32)).astype("float32")
    full = _np(model.forward_features(images)["cls"])
    np.testing.assert_allclose(_np(model(images)), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(images, verbose=0), full, rtol=1e-5, atol=1e-5)

    def loss(full):
        def value(x, *weights):
            state = list(zip(model.trainable_variables, weights, strict=True))
            with keras.StatelessScope(state_mapping=state):
                cls = model.forward_features(x)["cls"] if full else model(x)
            return keras.ops.sum(cls * keras.ops.convert_to_tensor(upstream))

        return value

    weights = [v.numpy() for v in model.trainable_variables]
    got, expected = (gradients(loss(full), images, *weights) for full in (False, True))
    for g, e in zip(got, expected, strict=True):
        assert np.abs(e).max() > 1e-3
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())


def test_attention_under_mixed_precision_keeps_the_fused_kernel(monkeypatch):
    # On JAX's CPU too: the fused kernel accumulates the logits in float32, the explicit
    # matmuls would round them to bfloat16 before the softmax.
    monkeypatch.setattr(vit_module, "on_xla_cpu", lambda: True)
    fused = _spy_on_fused_kernels(monkeypatch)
    qkv = np.random.default_rng(0).normal(size=(3, 7, 3 * 2 * 8)).astype("float32") * 2.0
    layer = ViTAttention(num_heads=2, dtype="mixed_bfloat16")
    out = layer(keras.ops.cast(qkv, "bfloat16"))
    assert fused == [True]
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    expected, _ = _reference_attention(qkv, heads=2)
    np.testing.assert_allclose(_np(keras.ops.cast(out, "float32")), expected, atol=0.1)


def test_attention_under_mixed_float16_computes_in_float32_on_xla_cpu(monkeypatch):
    # XLA:CPU has no float16 product that accumulates in float32, which Keras's op asks
    # for (its gradient fails on JAX's CPU), so there the layer computes in float32 and
    # rounds once: within half a float16 step of the exact result, and its gradients
    # within a float16 step of the float32 path's. PyTorch keeps its SDPA.
    monkeypatch.setattr(vit_module, "on_xla_cpu", lambda: True)
    fused = _spy_on_fused_kernels(monkeypatch)
    rng = np.random.default_rng(2)
    qkv = (rng.normal(size=(3, 7, 3 * 2 * 8)) * 2.0).astype("float16")
    upstream = keras.ops.convert_to_tensor(rng.normal(size=(3, 7, 16)).astype("float32"))
    layer = ViTAttention(num_heads=2, dtype="mixed_float16")

    def loss(x):
        return keras.ops.sum(keras.ops.cast(layer(x), "float32") * upstream)

    out = layer(qkv)
    (grad,) = gradients(loss, qkv)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    expected, _ = _reference_attention(qkv, heads=2)
    on_torch = keras.backend.backend() == "torch"
    assert fused == ([True, True] if on_torch else [])
    rounded_once = dict(rtol=2**-11, atol=1e-5)  # torch's float16 kernel: its own error
    tolerance = dict(rtol=1e-2, atol=1e-2) if on_torch else rounded_once
    np.testing.assert_allclose(_np(out).astype("float64"), expected, **tolerance)
    monkeypatch.setattr(vit_module, "on_xla_cpu", lambda: False)
    (expected_grad,) = gradients(  # float32, the explicit path (checked against the fused)
        lambda x: keras.ops.sum(ViTAttention(num_heads=2)(x, return_attention=True)[0] * upstream),
        qkv.astype("float32"),
    )
    assert np.abs(expected_grad).max() > 0.1
    tolerance = dict(rtol=1e-2, atol=1e-2) if on_torch else dict(rtol=2**-10, atol=1e-3)
    np.testing.assert_allclose(grad, expected_grad, **tolerance)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_attention_weights_in_16_bits_are_computed_in_float32(policy):
    # The call that returns the weights runs the explicit path on every backend; with
    # 16-bit inputs it computes in float32 and rounds the weights and the output once
    # (16-bit logits would be off by up to half a step of their own size, here ~0.1).
    dtype = policy.removeprefix("mixed_")
    rng = np.random.default_rng(3)
    qkv = keras.ops.cast(rng.normal(size=(3, 7, 3 * 2 * 8)) * 3.0, dtype)
    out, weights = ViTAttention(num_heads=2, dtype=policy)(qkv, return_attention=True)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert keras.backend.standardize_dtype(weights.dtype) == dtype
    expected, expected_weights = _reference_attention(_np(keras.ops.cast(qkv, "float32")), 2)
    half_step = 2**-11 if dtype == "float16" else 2**-8
    as_float64 = lambda x: _np(keras.ops.cast(x, "float32")).astype("float64")  # noqa: E731
    np.testing.assert_allclose(as_float64(weights), expected_weights, rtol=half_step, atol=1e-7)
    np.testing.assert_allclose(as_float64(out), expected, rtol=half_step, atol=1e-6)


def test_attention_gradients_equal_in_both_paths(monkeypatch):
    # The fused kernel's gradients (torch's SDPA on strided views of qkv, Keras's op
    # elsewhere) against the explicit path's, whose forward the test above checks.
    monkeypatch.setattr(vit_module, "on_xla_cpu", lambda: False)
    rng = np.random.default_rng(1)
    qkv = rng.normal(size=(2, 5, 3 * 2 * 4)).astype("float32")
    upstream = keras.ops.convert_to_tensor(rng.normal(size=(2, 5, 8)).astype("float32"))
    layer = ViTAttention(num_heads=2)
    (fused,) = gradients(lambda x: keras.ops.sum(layer(x) * upstream), qkv)
    (explicit,) = gradients(
        lambda x: keras.ops.sum(layer(x, return_attention=True)[0] * upstream), qkv
    )
    assert np.abs(explicit).max() > 0.1
    np.testing.assert_allclose(fused, explicit, rtol=1e-4, atol=1e-5)


def test_last_self_attention():
    model = ViT(**TINY, num_register_tokens=2)
    attention = _np(model.get_last_self_attention(_images(h=16, w=20)))
    tokens = 1 + 2 + 4 * 5
    assert attention.shape == (2, 2, tokens, tokens)
    assert np.all(attention >= 0)
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=1e-5)


def test_masks_replace_exactly_the_masked_tokens():
    model = ViT(**TINY)
    mask_token = model.get_layer("mask_token")
    rng = np.random.default_rng(3)
    mask_token.token.assign(rng.normal(size=(1, 32)).astype("float32"))
    x = _images(h=16, w=16)  # 4 x 4 patches
    none = np.zeros((2, 16), bool)
    plain = model.forward_features(x)
    unmasked = model.forward_features(x, masks=none)
    for key in plain:
        np.testing.assert_array_equal(_np(plain[key]), _np(unmasked[key]))
    # Fully masked: the image no longer matters, only the mask token does.
    full = np.ones((2, 16), bool)
    a = model.forward_features(x, masks=full)
    b = model.forward_features(_images(h=16, w=16, seed=9), masks=full)
    np.testing.assert_allclose(_np(a["patches"]), _np(b["patches"]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(_np(a["patches"]), _np(plain["patches"]), atol=1e-3)
    mask_token.token.assign(rng.normal(size=(1, 32)).astype("float32"))
    c = model.forward_features(x, masks=full)
    assert not np.allclose(_np(a["cls"]), _np(c["cls"]), atol=1e-3)
    # Partial mask == an image whose masked patches embed to the mask token: with the
    # mask token set to the patch-embedding bias, that is an image zeroed on those patches.
    mask_token.token.assign(_np(model.get_layer("patch_embed").bias)[None])
    masks = rng.uniform(size=(2, 16)) < 0.5
    zeroed = x.copy()
    for n, i in zip(*np.nonzero(masks), strict=True):
        r, col = divmod(int(i), 4)
        zeroed[n, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] = 0.0
    masked = model.forward_features(x, masks=masks)
    reference = model.forward_features(zeroed)
    for key in ("cls", "patches"):
        np.testing.assert_allclose(_np(masked[key]), _np(reference[key]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        ViT(**TINY, use_mask_token=False).forward_features(x, masks=masks)


def test_registers_change_token_count_not_cls():
    x = _images(h=16, w=16)
    base = ViT(**TINY)
    registers = ViT(**TINY, num_register_tokens=4, output="tokens")
    out = registers(x)
    assert tuple(base(x).shape) == tuple(out["cls"].shape) == (2, 32)
    assert tuple(out["patches"].shape) == (2, 16, 32)
    assert tuple(out["registers"].shape) == (2, 4, 32)
    assert tuple(base.forward_features(x)["registers"].shape) == (2, 0, 32)
    assert _np(base.get_last_self_attention(x)).shape[-1] == 17
    assert _np(registers.get_last_self_attention(x)).shape[-1] == 21
    # Registers have no position embedding: the table covers CLS + patches only.
    assert tuple(registers.get_layer("pos_embed").embeddings.shape) == (1, 65, 32)
    assert tuple(registers.get_layer("register_tokens").tokens.shape) == (1, 4, 32)


def test_layer_scale_and_layer_names():
    plain = ViT(**TINY)
    scaled = ViT(**TINY, layer_scale_init=1e-5)
    names = {layer.name for layer in scaled.layers}
    expected = {"images", "patch_embed", "cls_token", "pos_embed", "mask_token", "norm"}
    for i in range(2):
        expected |= {
            f"blocks_{i}_{part}"
            for part in ["norm1", "attn_qkv", "attn_proj", "ls1", "norm2", "mlp_fc1",
                         "mlp_fc2", "ls2"]
        }  # fmt: skip
    assert expected <= names
    assert not any("_ls" in layer.name for layer in plain.layers)
    np.testing.assert_allclose(_np(scaled.get_layer("blocks_1_ls2").gamma), np.full(32, 1e-5))
    assert scaled.count_params() - plain.count_params() == 2 * 2 * 32
    assert scaled.get_layer("blocks_0_norm1").epsilon == 1e-6
    qkv = scaled.get_layer("blocks_0_attn_qkv")
    assert tuple(qkv.kernel.shape) == (32, 96) and qkv.use_bias
    assert tuple(scaled.get_layer("patch_embed").kernel.shape) == (4, 4, 3, 32)


def test_parameter_counts_match_timm_dino():
    # timm vit_small_patch16_224 / vit_base_patch16_224 without head = official DINO
    # ViT-S/16 and ViT-B/16 backbones (no mask token); the default mask token adds D.
    small = backbones.get("vit_small", use_mask_token=False)
    assert isinstance(small, ViT) and small.patch_size == 16 and small.depth == 12
    assert small.count_params() == 21_665_664
    assert small.output_dim == 384
    # ViT-B/16: blocks are identical, so depth 12 = depth 1 + 11 blocks (a full build of
    # 86M parameters is too slow for the CPU test budget).
    one, two = (backbones.get("vit_base", depth=d, use_mask_token=False) for d in (1, 2))
    assert one.count_params() + 11 * (two.count_params() - one.count_params()) == 85_798_656
    assert one.output_dim == 768 and one.num_heads == 12


def test_mask_token_parameters_and_registry():
    assert ViT(**TINY).count_params() - ViT(**TINY, use_mask_token=False).count_params() == 32
    tiny = backbones.get("ViT-Tiny", depth=1, patch_size=32)
    assert isinstance(tiny, ViT) and (tiny.output_dim, tiny.num_heads) == (192, 3)
    assert tiny.patch_size == 32
    assert {"vit_tiny", "vit_small", "vit_base", "resnet18"} <= set(backbones.names())
    assert ViTTiny is backbones.ViTTiny and ViTBase is backbones.ViTBase


def test_invalid_arguments():
    for kwargs in [{"output": "mean"}, {"num_heads": 5}, {"pretrain_image_size": 2}]:
        with pytest.raises(ValueError):
            ViT(**{**TINY, **kwargs})


def _perturb(model, seed=0):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0, 0.2, variable.shape).astype("float32"))


def test_config_round_trip():
    model = ViT(**TINY, num_register_tokens=2, layer_scale_init=0.1, output="tokens")
    _perturb(model)
    config = model.get_config()
    clone = ViT.from_config(config)
    assert clone.get_config() == config
    for target, source in zip(clone.weights, model.weights, strict=True):
        target.assign(keras.ops.convert_to_tensor(source))
    x = _images(h=20, w=24)
    for key, value in model(x).items():
        np.testing.assert_allclose(_np(clone(x)[key]), _np(value), rtol=1e-5, atol=1e-5)


# Keras' own jax saving path trips a NumPy 2 ``__array__`` DeprecationWarning.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_save_load(tmp_path):
    model = ViT(**TINY, num_register_tokens=1, layer_scale_init=0.1, interpolation_offset=0.0)
    _perturb(model)
    path = str(tmp_path / "vit.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, ViT)
    assert restored.get_config() == model.get_config()
    for x in [_images(h=32, w=32), _images(h=12, w=20)]:
        np.testing.assert_allclose(_np(restored(x)), _np(model(x)), rtol=1e-5, atol=1e-5)
