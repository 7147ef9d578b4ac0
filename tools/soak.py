"""Soak test: many epochs of a tiny model, recording resident memory and step time per epoch.

A long pretraining run compressed into minutes: if memory grows epoch after epoch (a
leak: retraced functions, accumulating tensors, callbacks holding history) or steps get
slower, it shows here. Run once per backend, e.g.

    KERAS_BACKEND=jax python tools/soak.py --method dinov2 --epochs 60 --out soak_jax.json

and read the summary: memory growth between the end of the warm-up epochs and the last
epoch (MiB, and MiB per 100 epochs by a least-squares line), and the slowdown (median step
time of the last quarter of epochs over the first quarter after warm-up), in wall time and
in the process's CPU time (which other processes on shared cores disturb less).
"""

import argparse
import json
import os
import time

import numpy as np


def _rss_mib():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _model(method, size):
    import keras

    import keras_ssl
    from keras_ssl import augment
    from keras_ssl.backbones import ConvNet, ViT

    convnet = ConvNet(widths=(8, 16), input_channels=1)
    tiny_dino = dict(output_dim=64, hidden_dim=32, bottleneck_dim=16)
    if method == "simclr":
        model = keras_ssl.SimCLR(
            convnet, augment.SimCLRAugment.small_images(size, seed=0), 16, hidden_dim=32
        )
    elif method == "mocov2":
        model = keras_ssl.MoCoV2(
            convnet, augment.MoCoV2Augment.small_images(size, seed=0), 16, 32, queue_size=256
        )
    elif method == "byol":
        model = keras_ssl.BYOL(convnet, augment.BYOLAugment.small_images(size, seed=0), 16, 32)
    elif method in ("dino", "dinov2"):
        crops = augment.DINOMultiCrop.small_images(size, num_local_crops=2, seed=0)
        if method == "dino":
            model = keras_ssl.DINO(convnet, crops, **tiny_dino)
        else:
            vit = ViT(
                patch_size=4,
                hidden_dim=32,
                depth=2,
                num_heads=2,
                input_channels=1,
                pretrain_image_size=size,
            )
            model = keras_ssl.DINOv2(vit, crops, seed=0, **tiny_dino)
    else:
        raise ValueError(method)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.0, clipnorm=3.0))
    return model


class _Recorder:
    def __init__(self):
        import keras

        recorder = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                recorder.start = time.perf_counter()
                recorder.cpu_start = time.process_time()

            def on_epoch_end(self, epoch, logs=None):
                seconds = time.perf_counter() - recorder.start
                recorder.rows.append(
                    {
                        "epoch": epoch + 1,
                        "seconds": seconds,
                        "cpu_seconds": time.process_time() - recorder.cpu_start,
                        "rss_mib": _rss_mib(),
                        "loss": float(logs["loss"]),
                    }
                )

        self.rows, self.start, self.cpu_start = [], 0.0, 0.0
        self.callback = Callback()


def summarise(rows, steps_per_epoch, warmup):
    rows = rows[warmup:]
    epochs = np.array([r["epoch"] for r in rows], float)
    rss = np.array([r["rss_mib"] for r in rows])
    step_ms = np.array([r["seconds"] for r in rows]) * 1000 / steps_per_epoch
    # CPU time per step: what the process itself spent, less sensitive to other processes
    # competing for the cores than wall time.
    cpu_ms = np.array([r.get("cpu_seconds", np.nan) for r in rows]) * 1000 / steps_per_epoch
    quarter = max(len(rows) // 4, 1)
    slope = np.polyfit(epochs, rss, 1)[0] if len(rows) > 1 else 0.0
    return {
        "epochs_measured": len(rows),
        "rss_first_mib": round(float(rss[0]), 1),
        "rss_last_mib": round(float(rss[-1]), 1),
        "rss_max_mib": round(float(rss.max()), 1),
        "rss_growth_mib": round(float(rss[-1] - rss[0]), 1),
        "rss_growth_mib_per_100_epochs": round(float(slope * 100), 2),
        "step_ms_first_quarter": round(float(np.median(step_ms[:quarter])), 2),
        "step_ms_last_quarter": round(float(np.median(step_ms[-quarter:])), 2),
        "slowdown": round(float(np.median(step_ms[-quarter:]) / np.median(step_ms[:quarter])), 3),
        "cpu_ms_per_step_first_quarter": round(float(np.median(cpu_ms[:quarter])), 2),
        "cpu_ms_per_step_last_quarter": round(float(np.median(cpu_ms[-quarter:])), 2),
        "cpu_slowdown": round(float(np.median(cpu_ms[-quarter:]) / np.median(cpu_ms[:quarter])), 3),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3, help="epochs left out (compilation)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--out", default=None, help="write rows and summary as JSON")
    args = parser.parse_args(argv)

    import keras

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    x = np.random.default_rng(0).uniform(size=(args.images, args.image_size, args.image_size, 1))
    x = x.astype("float32")
    model = _model(args.method, args.image_size)
    recorder = _Recorder()
    callbacks = [recorder.callback]
    if args.minutes:
        deadline = time.monotonic() + 60 * args.minutes

        class StopAtDeadline(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if time.monotonic() > deadline:
                    self.model.stop_training = True

        callbacks.append(StopAtDeadline())
    rss_before = _rss_mib()
    model.fit(x, batch_size=args.batch_size, epochs=args.epochs, callbacks=callbacks, verbose=0)
    steps = args.images // args.batch_size + bool(args.images % args.batch_size)
    summary = summarise(recorder.rows, steps, min(args.warmup, len(recorder.rows) - 2))
    summary.update(
        backend=keras.backend.backend(),
        method=args.method,
        epochs_run=len(recorder.rows),
        steps_per_epoch=steps,
        rss_before_fit_mib=round(rss_before, 1),
        loss_first=recorder.rows[0]["loss"],
        loss_last=recorder.rows[-1]["loss"],
    )
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "epochs": recorder.rows}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
