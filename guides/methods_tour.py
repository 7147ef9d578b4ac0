"""
Title: A tour of the five methods
Author: keras_ssl developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: SimCLR, MoCo-v2, BYOL, DINO and DINOv2 side by side on the same data and budget.
Accelerator: None
"""

"""
## Five ways to learn without labels

keras_ssl ships five self-supervised methods. They all make two (or more) augmented views of
every image and train a backbone so that the views agree; they differ in what stops the
trivial solution (every image mapped to the same vector):

- **SimCLR** (Chen et al., ICML 2020): a contrastive InfoNCE loss. The other view of an image
  is the positive, every other image of the batch a negative; the negatives push the
  embeddings apart.
- **MoCo-v2** (Chen, Fan, Girshick, He 2020): the same loss, with the negatives taken from a
  queue of keys made by a slowly moving (EMA) copy of the encoder, so there are thousands of
  them whatever the batch size.
- **BYOL** (Grill et al., NeurIPS 2020): no negatives at all. An online network with an extra
  predictor regresses the EMA target network's embedding of the other view; the asymmetry
  (predictor, stop-gradient, EMA) is what prevents collapse.
- **DINO** (Caron et al., ICCV 2021): self-distillation. A student matches the softmax output
  of an EMA teacher over K prototypes, across global and small local crops (multi-crop); the
  teacher's outputs are centred and sharpened.
- **DINOv2** (Oquab et al., TMLR 2024): DINO's image-level loss plus iBOT's masked-patch loss
  on the patch tokens of a ViT, and a KoLeo regulariser that spreads the features.

This guide trains each of them with the same backbone family, data and number of epochs,
evaluates every epoch with a weighted kNN (Wu et al. 2018, the protocol DINO reports), and
draws the curves on one chart. `KERAS_SSL_GUIDE_SMALL=1` runs a slice of the data for one
epoch with tiny networks (that is how the test suite runs it: the numbers then mean little).
"""

import os
import time

import keras
import numpy as np

import keras_ssl
from keras_ssl import cli
from keras_ssl.callbacks import KNNMonitor
from keras_ssl.datasets import fashion_mnist

SMALL = os.environ.get("KERAS_SSL_GUIDE_SMALL") == "1"
OUTPUT = os.environ.get("KERAS_SSL_GUIDE_OUTPUT", "guide_outputs")
os.makedirs(OUTPUT, exist_ok=True)

"""
## The data and the budget

The embedded class-balanced Fashion-MNIST subset (10,000 training and 2,000 test images,
28x28 grayscale). Pretraining sees the training images without their labels; the kNN
monitor uses the labelled training images as its memory bank and scores the test images.
Every method gets the same images, batch size and number of epochs.
"""

(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(source="embedded")
if SMALL:
    x_train, y_train, x_test, y_test = x_train[:256], y_train[:256], x_test[:128], y_test[:128]
x_train, x_test = x_train[..., None], x_test[..., None]
EPOCHS = 1 if SMALL else 5
BATCH_SIZE = 128 if SMALL else 256
METHODS = cli.METHODS  # ("simclr", "mocov2", "byol", "dino", "dinov2")
print("train", x_train.shape, "test", x_test.shape, f"{EPOCHS} epoch(s), batch {BATCH_SIZE}")

"""
## The recipes

We do not restate any hyperparameter here: `keras-ssl pretrain --method <m>` has a demo
recipe per method (`keras_ssl.cli.DEMO_RECIPES`: the paper's loss and augmentation family,
widths and schedules scaled down for 28 px images on a CPU), and the CLI's own builders make
the models:

- `cli.build_backbone(method)`: the demo ConvNet, or for DINOv2 (which needs patch tokens
  for its masked-patch loss) a small ViT with 4 px patches and one register token;
- `cli.build_model(method, backbone, ...)`: the method with its augmentation recipe and
  heads, compiled with AdamW, a warm-up then cosine learning-rate schedule and gradient
  clipping.

Let us look at them.
"""

for name in METHODS:
    recipe = cli.DEMO_RECIPES[name]
    print(f"{name:7s} {recipe['method']:7s} augment {recipe['augment']:14s} lr {recipe['lr']:g}")
    print(f"        options {recipe['options']}")

"""
The one difference in small mode: a much narrower backbone and DINO head (a ConvNet of
widths 8 and 16, a one-block ViT of width 32, a 256-prototype head), MoCo-v2's queue
shortened to 256 and DINO's local crops cut from 4 to 2, so that the whole tour compiles
and runs in seconds. In full mode the networks are exactly the CLI's.
"""


def make_backbone(name):
    if not SMALL:
        return cli.build_backbone(name)
    if "backbone" in cli.DEMO_RECIPES[name]:
        options = dict(cli.DEMO_RECIPES[name]["backbone"], hidden_dim=32, depth=1, num_heads=2)
        options.pop("name")
        return keras_ssl.backbones.ViT(input_channels=1, pretrain_image_size=28, **options)
    return keras_ssl.backbones.ConvNet(widths=(8, 16), input_channels=1)


def make_model(name):
    steps_per_epoch = len(x_train) // BATCH_SIZE
    if not SMALL:
        return cli.build_model(name, make_backbone(name), 28, EPOCHS, steps_per_epoch)
    small_options = {
        "mocov2": dict(queue_size=256),
        "byol": dict(hidden_dim=64, projection_dim=32),
        "dino": dict(output_dim=256, hidden_dim=64, bottleneck_dim=32),
        "dinov2": dict(output_dim=256, hidden_dim=64, bottleneck_dim=32),
    }.get(name, {})
    small_augment = dict(num_local_crops=2) if name in ("dino", "dinov2") else {}
    return cli.build_model(
        name,
        make_backbone(name),
        28,
        EPOCHS,
        steps_per_epoch,
        options=small_options,
        augment_options=small_augment,
    )


"""
## Training, with a kNN monitor

`KNNMonitor` evaluates the backbone's frozen features on the labelled split after every
epoch, and once before training (`evaluate_at_start`: the same network at random
initialisation, the baseline every method must beat). The kNN lets the k = 20 nearest
training features vote with weight `exp(s / 0.07)` (as DINO); the monitor writes `knn_top1`
into the logs, so it appears in the progress bar and in `history`. With `linear_probe` it
also fits a linear classifier on the same features (`linear_top1`): the kNN needs no
training and is the quick signal, the linear probe is the standard benchmark number.

We evaluate `model.backbone`, the online (student) network, for every method so they are
compared alike; for the EMA methods `KNNMonitor(..., use_teacher=True)` would score the
teacher instead, which DINO reports as the better network.
"""

results = {}
for name in METHODS:
    keras.utils.set_random_seed(0)
    model = make_model(name)
    monitor = KNNMonitor(
        (x_train, y_train),
        (x_test, y_test),
        every_n_epochs=1,
        evaluate_at_start=True,
        linear_probe=dict(epochs=3 if SMALL else 30, batch_size=64 if SMALL else 256, seed=0),
    )
    started = time.time()
    history = model.fit(
        x_train,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=True,
        verbose=0 if SMALL else 2,
        callbacks=[monitor],
    )
    seconds = time.time() - started
    epochs = sorted(monitor.results)  # 0: before training
    results[name] = dict(
        epochs=epochs,
        knn=[monitor.results[e]["knn_top1"] for e in epochs],
        linear=[monitor.results[e]["linear_top1"] for e in epochs],
        loss=float(history.history["loss"][-1]),
        seconds=seconds,
    )
    print(
        f"{name}: kNN {results[name]['knn'][-1]:.4f} in {seconds:.1f} s "
        f"({monitor.seconds:.1f} s of them evaluating)"
    )
    assert np.isfinite(history.history["loss"]).all(), f"{name} diverged"

"""
## The table and the chart

The last epoch's numbers, then kNN and linear top-1 against epochs, one line per method. With
a few epochs on 10,000 small images the ranking is noisy and does not reproduce the papers'
ImageNet ordering: the contrastive methods usually lead early, DINO-style methods need more
epochs (and a ViT) to shine. `tools/benchmark_accuracy.py` runs the long version with
several seeds.
"""

print()
print(f"{'method':8s} {'kNN top-1':>10s} {'linear top-1':>13s} {'last loss':>10s} {'seconds':>8s}")
for name, row in results.items():
    print(
        f"{name:8s} {row['knn'][-1]:10.4f} {row['linear'][-1]:13.4f} "
        f"{row['loss']:10.4f} {row['seconds']:8.1f}"
    )

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for name, row in results.items():
    for axis, key in zip(axes, ("knn", "linear"), strict=True):
        axis.plot(row["epochs"], row[key], marker="o", label=name)
for axis, title in zip(axes, ("kNN top-1 (k=20, T=0.07)", "linear probe top-1"), strict=True):
    axis.set_title(title)
    axis.set_xlabel("epoch")
    axis.grid(alpha=0.3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
axes[0].set_ylabel("top-1 on the held-out split")
axes[1].legend()
figure.suptitle(f"Five methods, same data and budget ({keras.backend.backend()})")
figure.tight_layout()
chart = os.path.join(OUTPUT, "methods_tour_accuracy.png")
figure.savefig(chart, dpi=100)
plt.close(figure)
print("chart:", chart)
