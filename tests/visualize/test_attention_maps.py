import keras
import numpy as np
import pytest

from keras_ssl.backbones import ConvNet, ViT
from keras_ssl.visualize import attention_maps


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _reference(vit, images):
    """One-block ViT's CLS -> patch attention per head, in NumPy from its weights."""
    p, d, heads = vit.patch_size, vit.hidden_dim, vit.num_heads
    n, h, w = len(images), images.shape[1] // p, images.shape[2] // p
    kernel, bias = vit.get_layer("patch_embed").get_weights()  # (p, p, C, D)
    patches = images.reshape(n, h, p, w, p, -1).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * w, -1)
    tokens = patches @ kernel.reshape(-1, d) + bias
    cls = vit.get_layer("cls_token").get_weights()[0]
    x = np.concatenate([np.broadcast_to(cls, (n, 1, d)), tokens], axis=1)
    x = x + vit.get_layer("pos_embed").get_weights()[0]
    gamma, beta = vit.get_layer("blocks_0_norm1").get_weights()
    qkv_kernel, qkv_bias = vit.get_layer("blocks_0_attn_qkv").get_weights()
    qkv = _layer_norm(x, gamma, beta, 1e-6) @ qkv_kernel + qkv_bias
    qkv = qkv.reshape(n, 1 + h * w, 3, heads, d // heads)
    q, k = qkv[:, :, 0].transpose(0, 2, 1, 3), qkv[:, :, 1].transpose(0, 2, 1, 3)
    logits = q[:, :, :1] @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads)  # CLS query
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = (weights / weights.sum(-1, keepdims=True))[:, :, 0, 1:]
    return (weights / weights.sum(-1, keepdims=True)).reshape(n, heads, h, w)


def test_cls_attention_per_head_matches_numpy_and_sums_to_one(tmp_path):
    images = np.random.default_rng(0).random((3, 12, 16, 1)).astype("float32")
    vit = ViT(patch_size=4, hidden_dim=12, depth=1, num_heads=3, input_channels=1,
              pretrain_image_size=12)  # fmt: skip
    vit.get_layer("pos_embed").set_weights(
        [np.random.default_rng(1).normal(size=(1, 10, 12)).astype("float32")]
    )
    # 12 x 16 images on a 3 x 3 pretrain grid: position embeddings get interpolated, so
    # compare at the pretrain size and only check shape / sums at the other size.
    square = images[:, :12, :12]
    maps = attention_maps(vit, square, path=tmp_path / "attention.png")
    assert maps.shape == (3, 3, 3, 3) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, _reference(vit, square), atol=1e-5)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, atol=1e-5)
    assert (tmp_path / "attention.png").stat().st_size > 1000
    wide = attention_maps(vit, images)
    assert wide.shape == (3, 3, 3, 4)
    np.testing.assert_allclose(wide.sum(axis=(2, 3)), 1.0, atol=1e-5)


def test_registers_are_left_out_and_uint8_images_accepted():
    vit = ViT(patch_size=4, hidden_dim=8, depth=2, num_heads=2, input_channels=1,
              pretrain_image_size=16, num_register_tokens=2)  # fmt: skip
    images = np.random.default_rng(2).integers(0, 256, size=(2, 16, 16), dtype=np.uint8)
    maps = attention_maps(vit, images)
    assert maps.shape == (2, 2, 4, 4)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, atol=1e-5)
    attention = keras.ops.convert_to_numpy(
        vit.get_last_self_attention(images[..., None].astype("float32") / 255.0)
    )
    cls_to_patches = attention[:, :, 0, 3:]
    expected = cls_to_patches / cls_to_patches.sum(-1, keepdims=True)
    np.testing.assert_allclose(maps.reshape(2, 2, 16), expected, atol=1e-6)


def test_refuses_a_cnn():
    with pytest.raises(TypeError, match="ViT"):
        attention_maps(ConvNet(widths=(4,), input_channels=1), np.zeros((1, 8, 8, 1)))
