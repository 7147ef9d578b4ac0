"""Where a PyTorch train step turns Python numbers into tensors, by call site.

On CUDA each such tensor is a host-to-device copy that waits for the device, so the count
is the step's host waits beyond its own `.item()` calls. This counts them on any device:
tiny models (ResNet-10 at 16 px, a 2-block ViT), one `train_on_batch` after two warm-up
steps, `torch.as_tensor` / `torch.tensor` calls on anything but a tensor.

    KERAS_BACKEND=torch python tools/count_host_copies.py mocov2
    KERAS_BACKEND=torch python tools/count_host_copies.py dino_vit

`train_on_batch` resets the metrics on every call (Keras's `reset_state`, 2 numbers per
metric) and returns NumPy logs; `fit` does neither per step. The README's per-step counts
leave those out.
"""

import argparse
import collections
import os
import traceback

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")

METHODS = ("simclr", "mocov2", "byol", "dino", "dino_vit")


def _model(method):
    import keras

    import keras_ssl

    if method == "dino_vit":
        backbone = keras_ssl.backbones.ViT(
            patch_size=4, hidden_dim=32, depth=2, num_heads=2, pretrain_image_size=16
        )
    else:
        backbone = keras_ssl.backbones.ResNet(
            block_type="basic", stackwise_num_blocks=(1, 1, 1, 1), stem="cifar", width=16
        )
    sgd = keras.optimizers.SGD(0.01, momentum=0.9)
    if method == "simclr":
        model, optimizer = keras_ssl.SimCLR(backbone, temperature=0.5), sgd
    elif method == "mocov2":
        model, optimizer = keras_ssl.MoCoV2(backbone, queue_size=64, temperature=0.2), sgd
    elif method == "byol":
        model, optimizer = keras_ssl.BYOL(backbone, momentum=0.996), sgd
    else:
        model = keras_ssl.DINO(
            backbone, output_dim=256, hidden_dim=64, bottleneck_dim=32, freeze_last_layer_epochs=0
        )
        optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.0, clipnorm=3.0)
    model.compile(optimizer=optimizer)
    model.set_run_length(100, 10)
    return model


def _views(method):
    import torch

    rng = np.random.default_rng(0)
    crops = [rng.random((8, 16, 16, 3), dtype=np.float32)] * 2
    if method.startswith("dino"):
        crops += [rng.random((8, 8, 8, 3), dtype=np.float32)] * 4
    return tuple(torch.tensor(c) for c in crops)


def _call_site():
    """The innermost keras_ssl frame, else Keras's own (above its backend)."""
    frames = [f for f in traceback.extract_stack() if "count_host_copies" not in f.filename]
    ours = [f for f in frames if "keras_ssl" in f.filename]
    keras_own = [f for f in frames if "keras/src" in f.filename and "/backend/" not in f.filename]
    frame = (ours or keras_own or frames)[-1]
    name = frame.filename.split("site-packages/")[-1].split("keras_ssl/", 1)[-1]
    return f"{name}:{frame.lineno} {frame.name}"


def count(method):
    import torch

    model = _model(method)
    views = _views(method)
    for _ in range(2):  # builds, traces, creates the optimizer's slots
        model.train_on_batch(views)
    sites = collections.Counter()
    originals = {name: getattr(torch, name) for name in ("as_tensor", "tensor")}

    def counting(original):
        def made_tensor(data, *args, **kwargs):
            if not isinstance(data, torch.Tensor):
                sites[_call_site()] += 1
            return original(data, *args, **kwargs)

        return made_tensor

    for name, original in originals.items():
        setattr(torch, name, counting(original))
    try:
        model.train_on_batch(views)
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)
    return sites


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=METHODS)
    args = parser.parse_args(argv)
    import keras

    if keras.backend.backend() != "torch":
        raise SystemExit("Set KERAS_BACKEND=torch: this counts PyTorch's host copies.")
    sites = count(args.method)
    for site, n in sites.most_common():
        print(f"{n:4d}  {site}")
    per_step = sum(n for site, n in sites.items() if "reset_state" not in site)
    print(f"{per_step} per step in `fit` (Keras's per-call metric resets left out)")


if __name__ == "__main__":
    main()
