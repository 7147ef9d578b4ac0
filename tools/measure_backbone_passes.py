"""The backbone's share of a train step on PyTorch, through Keras's layer dispatch and through
keras_ssl's direct layer calls (`keras_ssl/backbones/_direct_calls.py`), beside timm.

`vit` times the three ViT-Tiny/4 passes of the benchmark's DINO step (the teacher on the
2 x 64 global crops without gradients, the student on the global and the 6 x 64 local
crops, and the backward pass) in alternated rounds; `resnet50` times one ResNet-50 forward
pass of a single 64 px image in training mode, where Python dispatch is most of the time.

    KERAS_BACKEND=torch python tools/measure_backbone_passes.py vit --rounds 10
    KERAS_BACKEND=torch python tools/measure_backbone_passes.py resnet50

The README's figures, two runs each (2-core CPU, 2 threads, the speed benchmark's glibc
malloc settings): `vit` 3.18 / 3.08 s (Keras's dispatch), 3.07 / 3.01 s (direct),
3.02 / 2.94 s (timm); `resnet50` 121 / 110 ms and 92 / 85 ms.
"""

import argparse
import contextlib
import os
import sys
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")


@contextlib.contextmanager
def keras_dispatch():
    """Every layer through `Layer.__call__`, as before the direct calls."""
    from keras_ssl.backbones import _direct_calls

    allowed = _direct_calls.allowed
    _direct_calls.allowed = lambda *args: False
    try:
        yield
    finally:
        _direct_calls.allowed = allowed


def _timm_vit():
    """The speed benchmark's lightly-side ViT-Tiny/4 (timm's VisionTransformer)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _lightly_reference

    return _lightly_reference.build_backbone(
        {"backbone": "vit_tiny", "image_size": 32, "patch_size": 4}
    )


def _dino_passes(backbone, global_crops, local_crops):
    """Seconds of (teacher forward, student forwards, backward)."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        backbone(global_crops)
    teacher = time.perf_counter()
    loss = backbone(global_crops).sum() + backbone(local_crops).sum()
    student = time.perf_counter()
    loss.backward()
    end = time.perf_counter()
    return teacher - start, student - teacher, end - student


def measure_vit(rounds):
    import torch

    from keras_ssl.backbones import ViT

    ours = ViT(patch_size=4, hidden_dim=192, depth=12, num_heads=3, pretrain_image_size=32)
    timm = _timm_vit()
    rng = np.random.default_rng(0)
    global_crops = torch.tensor(rng.random((128, 32, 32, 3), dtype=np.float32))
    local_crops = torch.tensor(rng.random((384, 16, 16, 3), dtype=np.float32))
    sides = {
        "keras_ssl, Keras's dispatch": (ours, global_crops, local_crops, keras_dispatch),
        "keras_ssl, direct calls": (ours, global_crops, local_crops, contextlib.nullcontext),
        "timm": (
            timm,
            global_crops.permute(0, 3, 1, 2).contiguous(),
            local_crops.permute(0, 3, 1, 2).contiguous(),
            contextlib.nullcontext,
        ),
    }
    times = {name: [] for name in sides}
    for _ in range(rounds + 2):  # the first two rounds warm up
        for name, (model, g, local, context) in sides.items():
            with context():
                times[name].append(_dino_passes(model, g, local))
    print("ViT-Tiny/4, a DINO step's backbone passes, medians of", rounds, "alternated rounds:")
    for name, values in times.items():
        values = np.array(values[2:])
        teacher, student, backward = np.median(values, axis=0)
        print(
            f"  {name:30s} teacher {teacher:.3f} s, student {student:.3f} s, "
            f"backward {backward:.3f} s, all {np.median(values.sum(axis=1)):.3f} s"
        )


def measure_resnet50(rounds):
    import torch

    from keras_ssl.backbones import ResNet

    model = ResNet(block_type="bottleneck", stackwise_num_blocks=(3, 4, 6, 3))
    image = torch.tensor(np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32))
    sides = {"Keras's dispatch": keras_dispatch, "direct calls": contextlib.nullcontext}
    times = {name: [] for name in sides}
    for _ in range(rounds + 3):
        for name, context in sides.items():
            with context():
                start = time.perf_counter()
                model(image, training=True)
                times[name].append(time.perf_counter() - start)
    print("ResNet-50 forward, one 64 px image, training mode, medians of", rounds, "rounds:")
    for name, values in times.items():
        print(f"  {name:18s} {np.median(values[3:]) * 1e3:.1f} ms")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backbone", choices=["vit", "resnet50"])
    parser.add_argument("--rounds", type=int, default=None, help="default: 8 (vit), 20")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import keras
    import torch

    if keras.backend.backend() != "torch":
        raise SystemExit("Set KERAS_BACKEND=torch: this measures PyTorch's eager dispatch.")
    torch.set_num_threads(args.threads)
    if args.backbone == "vit":
        measure_vit(args.rounds or 8)
    else:
        measure_resnet50(args.rounds or 20)


if __name__ == "__main__":
    main()
