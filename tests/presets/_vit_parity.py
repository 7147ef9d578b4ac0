"""Shared pieces of the ViT converter parity tests (torch references with random weights).

The official DINO / DINOv2 position-embedding resize is written out here from the
authors' ``interpolate_pos_encoding`` (torch ``F.interpolate``), independently of the
NumPy interpolation matrices of ``keras_ssl.backbones.vit``.
"""

import math

import keras
import numpy as np

ATOL = 1e-4
_COMPILED = {}  # (id(backbone), unmasked) -> (backbone, functional model)


def randomize_(module, seed=0):
    """Give every parameter of a torch module random, unit-scale-output values.

    Weights of fan-in ``n`` get ``N(0, 1/n)``, biases ``N(0, 0.1)``, LayerNorm / LayerScale
    scales ``1 + N(0, 0.2)``, and tokens / position embeddings ``N(0, 1)`` (so a wrong
    position-embedding resize is visible in the outputs).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            leaf = name.rsplit(".", 1)[-1]
            if param.ndim == 1 and ("norm" in name or leaf in ("lambda1", "gamma")):
                param.copy_(1.0 + 0.2 * noise)
            elif leaf == "bias":
                param.copy_(0.1 * noise)
            elif param.ndim >= 2 and leaf == "weight":
                param.copy_(noise / math.sqrt(np.prod(param.shape[1:])))
            else:  # cls / mask / register tokens, position embeddings
                param.copy_(noise)
    return module.eval()


def numpy_state(module):
    """The module's state dict as float32 NumPy arrays (what safetensors.numpy returns)."""
    return {k: v.detach().cpu().numpy().astype("float32") for k, v in module.state_dict().items()}


def original_pos_embed(pos_embed, h0, w0, offset, antialias, image_size=None):
    """Official DINO / DINOv2 ``interpolate_pos_encoding`` for an ``h0 x w0`` patch grid.

    ``image_size`` is the image's ``(height, width)`` in pixels: the stored embeddings are
    kept only when the grid has the pretrain grid's ``N`` patches and the image is square
    (``npatch == N and w == h``). ``None`` stands for an image that is exactly the grid
    (square when the grid is).
    """
    import torch
    import torch.nn.functional as F

    n = pos_embed.shape[1] - 1
    height, width = image_size or (h0, w0)
    if h0 * w0 == n and height == width:
        return pos_embed
    m = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs = {"scale_factor": ((h0 + offset) / m, (w0 + offset) / m)}
    else:
        kwargs = {"size": (h0, w0)}
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    assert tuple(grid.shape[-2:]) == (h0, w0)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], grid], dim=1)


def images(h, w, n=2, seed=0):
    """Random ``(n, h, w, 3)`` float32 images and the torch ``NCHW`` copy."""
    import torch

    x = np.random.default_rng(seed).normal(size=(n, h, w, 3)).astype("float32")
    return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return keras.ops.convert_to_numpy(x)


def assert_close(actual, expected, what, atol=ATOL):
    """``assert_allclose`` with ``atol``; prints the max abs error for the report."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    error = float(np.max(np.abs(actual - expected)))
    print(f"[parity] {keras.backend.backend()} {what}: max abs err {error:.2e}")
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=what)
    return error


def outputs(backbone, x, masks=None, blocks=2):
    """``forward_features(x, masks)`` and ``get_intermediate_layers(x, blocks)`` of
    ``backbone`` in one compiled ``predict_on_batch`` (one JAX / TF trace per input size
    instead of an eager pass per method): the same ``ViT._run`` graph those methods run,
    as NumPy arrays ``{"cls", "patches", "registers", "blocks"}``. (The attention
    weights are compared through the eager ``get_last_self_attention``.)"""
    key = (id(backbone), masks is None)
    backbone_and_model = _COMPILED.get(key)
    model = backbone_and_model[1] if backbone_and_model else None
    if model is None or backbone_and_model[0] is not backbone:
        inputs = [keras.Input((None, None, backbone.input_channels))]
        if masks is not None:
            inputs.append(keras.Input((None,), dtype="bool"))
        out = dict(backbone._run(*inputs))
        out["blocks"] = backbone._run(inputs[0], return_last_blocks=blocks)
        model = keras.Model(inputs, out)
        _COMPILED[key] = (backbone, model)  # not an attribute: Keras would track it
    result = model.predict_on_batch(x if masks is None else [x, masks])
    return {
        k: [to_numpy(b) for b in v] if k == "blocks" else to_numpy(v) for k, v in result.items()
    }
