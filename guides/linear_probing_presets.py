"""
Title: Linear probing a pretrained preset
Author: keras_ssl developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: `from_preset("dino_vits16")` and DINO's linear protocol on a labelled image folder.
Accelerator: None
"""

"""
## Linear probing

The standard way to measure a self-supervised backbone is the *linear probe*: freeze the
backbone, extract features of labelled images, and train only a linear classifier on them
(Zhang, Isola, Efros 2016; the protocol of SimCLR, MoCo, BYOL and DINO). A good
representation makes the classes linearly separable.

The papers differ in *which* features. DINO (Caron et al., ICCV 2021, Sec. 4 and its
`eval_linear.py`) uses, for ViT-S, the `[CLS]` token of each of the **last 4 blocks**, each
passed through the final LayerNorm, concatenated (`4 x 384 = 1536` features for ViT-S/16);
for ViT-B, the last `[CLS]` plus the average of the last block's patch tokens.
`keras_ssl.eval.feature_model(vit, protocol="last_blocks_cls", n_last_blocks=4)` builds that
feature extractor around a loaded ViT, sharing its weights.

This guide loads DINO's ViT-S/16 with `keras_ssl.from_preset("dino_vits16")`, makes a small
labelled folder of images (your own data would sit in the same layout), and probes it.
"""

import hashlib
import json
import os

import keras
import numpy as np
from PIL import Image

import keras_ssl
from keras_ssl.datasets import fashion_mnist
from keras_ssl.eval import feature_model, knn_accuracy, linear_probe
from keras_ssl.presets import PresetError, registry

SMALL = os.environ.get("KERAS_SSL_GUIDE_SMALL") == "1"
DOWNLOAD = os.environ.get("KERAS_SSL_GUIDE_DOWNLOAD") == "1"
OUTPUT = os.environ.get("KERAS_SSL_GUIDE_OUTPUT", "guide_outputs")
os.makedirs(OUTPUT, exist_ok=True)
keras.utils.set_random_seed(0)

"""
## A labelled image folder

The layout every image library understands: one sub-folder per class, the folder name is
the label. We write one from the embedded Fashion-MNIST subset, as RGB PNG files, with a
`train/` and a `test/` tree.
"""

folder = os.path.join(OUTPUT, "fashion_folder")
classes = range(4) if SMALL else range(10)
per_class = {"train": 8, "test": 4} if SMALL else {"train": 50, "test": 20}
(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(source="embedded")
for split, (images, labels) in {"train": (x_train, y_train), "test": (x_test, y_test)}.items():
    for c in classes:
        class_dir = os.path.join(folder, split, fashion_mnist.CLASS_NAMES[c].replace("/", "-"))
        os.makedirs(class_dir, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(labels == c)[: per_class[split]]):
            Image.fromarray(images[index]).convert("RGB").save(os.path.join(class_dir, f"{i}.png"))
print("class folders:", sorted(os.listdir(os.path.join(folder, "train"))))

"""
## The preset

`from_preset("dino_vits16")` reads the registered card (`presets/dino_vits16.json`: timm's
copy of the official weights on the Hugging Face Hub, and the paper's evaluation
preprocessing), downloads `model.safetensors` once into the Hugging Face cache and converts
it to a `keras_ssl.backbones.ViT` with NumPy (no torch, no unpickling). It returns the model
and a `Preprocessing` layer: resize the shorter side to 256 (bicubic), centre-crop 224,
normalise with ImageNet's mean and std, exactly what the reported numbers used.

This guide only reads the cache (`local_files_only=True`) unless `KERAS_SSL_GUIDE_DOWNLOAD=1`.

**Small mode, and whenever the real weights are not cached:** the guide builds a *random,
tiny* checkpoint in timm's format (a 4-block ViT of width 32 on 32 px images), puts it in an
offline Hugging Face cache inside the output folder, registers a card for it, and loads it
with the very same `from_preset(name, ...)` call. Everything below then runs for real, but
**the accuracies are meaningless**: the weights are random.
"""


def write_tiny_timm_checkpoint(cache_dir, cards_dir, name="tiny_dino_vit"):
    """A random timm-layout ViT (keys as timm's VisionTransformer), a Hub cache, a card."""
    dim, depth, heads, patch, size = 32, 4, 2, 8, 32
    rng = np.random.default_rng(0)

    def normal(*shape):
        return (rng.normal(size=shape) * 0.2).astype("float32")

    state = {
        "patch_embed.proj.weight": normal(dim, 3, patch, patch),
        "patch_embed.proj.bias": normal(dim),
        "cls_token": normal(1, 1, dim),
        "pos_embed": normal(1, 1 + (size // patch) ** 2, dim),
        "norm.weight": 1 + normal(dim),
        "norm.bias": normal(dim),
    }
    for i in range(depth):
        block = {
            "norm1.weight": 1 + normal(dim),
            "norm1.bias": normal(dim),
            "attn.qkv.weight": normal(3 * dim, dim),
            "attn.qkv.bias": normal(3 * dim),
            "attn.proj.weight": normal(dim, dim),
            "attn.proj.bias": normal(dim),
            "norm2.weight": 1 + normal(dim),
            "norm2.bias": normal(dim),
            "mlp.fc1.weight": normal(4 * dim, dim),
            "mlp.fc1.bias": normal(4 * dim),
            "mlp.fc2.weight": normal(dim, 4 * dim),
            "mlp.fc2.bias": normal(dim),
        }
        state.update({f"blocks.{i}.{key}": value for key, value in block.items()})
    model_args = dict(img_size=size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)
    config = {"architecture": "vit_custom_patch8", "model_args": model_args}

    # The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/...}.
    repo, commit = "keras-ssl-guide/tiny_vit_patch8_32.dino", "0" * 40
    snapshot_dir = os.path.join(cache_dir, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(snapshot_dir, "refs"), exist_ok=True)
    with open(os.path.join(snapshot_dir, "refs", "main"), "w") as f:
        f.write(commit)
    snapshot = os.path.join(snapshot_dir, "snapshots", commit)
    os.makedirs(snapshot, exist_ok=True)
    from safetensors.numpy import save_file

    weights_path = os.path.join(snapshot, "model.safetensors")
    save_file(state, weights_path)
    with open(os.path.join(snapshot, "config.json"), "w") as f:
        json.dump(config, f)
    with open(weights_path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()

    # A card like presets/dino_vits16.json, pinned to the commit, with the file's sha256.
    card = {
        "name": name,
        "description": "A random tiny ViT in timm's format, for the guide's small mode.",
        "method": "DINO",
        "backbone": {"class": "ViT", "config": None, "source_config": {"model_args": model_args}},
        "source": {
            "hub": "hf",
            "repo": repo,
            "revision": commit,
            "format": "safetensors",
            "files": {"weights": "model.safetensors", "config": "config.json"},
            "sha256": {"model.safetensors": sha256},
            "converter": "timm_vit",
        },
        "preprocessing": {"resize_size": 36, "crop_size": 32, "interpolation": "bicubic"},
        "license": "Apache-2.0",
    }
    os.makedirs(cards_dir, exist_ok=True)
    with open(os.path.join(cards_dir, f"{name}.json"), "w") as f:
        json.dump(card, f, indent=2)
    return name


preset, cache_dir = "dino_vits16", None
vit = preprocess = None
if not SMALL:
    try:
        vit, preprocess = keras_ssl.from_preset(preset, local_files_only=not DOWNLOAD)
    except PresetError as error:
        print(f"The real dino_vits16 weights are not available here:\n  {error}")
if vit is None:
    print("Using a RANDOM tiny timm-format ViT: the pipeline is real, the numbers are not.")
    cache_dir = os.path.join(OUTPUT, "hf_cache")
    cards_dir = os.path.join(OUTPUT, "preset_cards")
    preset = write_tiny_timm_checkpoint(cache_dir, cards_dir)
    registry.add_cards_dir(cards_dir)  # now from_preset knows the name
    vit, preprocess = keras_ssl.from_preset(preset, cache_dir=cache_dir, local_files_only=True)
print(f"{preset}: {type(vit).__name__}, width {vit.hidden_dim}, {vit.depth} blocks")
print(
    f"preprocessing: resize {preprocess.resize_size}, crop {preprocess.crop_size}, "
    f"{preprocess.interpolation}, mean {preprocess.mean}, std {preprocess.std}"
)

"""
## Features by DINO's protocol

`image_folder(..., labels=True)` reads the folder as batches of `[0, 1]` images and integer
labels (classes sorted by folder name). Each batch goes through the preset's preprocessing,
then through the protocol's feature model: the `[CLS]` token of the last 4 blocks, after the
final norm, concatenated.
"""

features = feature_model(vit, protocol="last_blocks_cls", n_last_blocks=4)
print("feature model output:", features.output_shape)


def folder_features(split):
    data = keras_ssl.data.image_folder(
        os.path.join(folder, split),
        image_size=preprocess.resize_size,
        batch_size=32,
        labels=True,
        shuffle=False,
    )
    outputs, labels = [], []
    for i in range(len(data)):
        images, batch_labels = data[i]
        outputs.append(keras.ops.convert_to_numpy(features(preprocess(images))))
        labels.append(batch_labels)
    return np.concatenate(outputs), np.concatenate(labels), data.class_names


train_features, train_labels, class_names = folder_features("train")
test_features, test_labels, _ = folder_features("test")
print("train features", train_features.shape, "test features", test_features.shape)

"""
## The probe, and a kNN for comparison

`linear_probe` trains a softmax classifier on the frozen features (DINO trains it with SGD
for 100 epochs on ImageNet; a few epochs of AdamW suffice for a few hundred images) and
reports top-1 on the test features. The weighted kNN (k = 20, T = 0.07) needs no training
at all.
"""

probe = linear_probe(
    train_features, train_labels, test_features, test_labels, epochs=30 if SMALL else 100, seed=0
)
knn = knn_accuracy(train_features, train_labels, test_features, test_labels, k=20)
print(f"{preset}: linear probe top-1 {probe.top1:.4f}, kNN top-1 {knn:.4f}")
print("classes:", class_names)
if SMALL or preset != "dino_vits16":
    print("(random tiny checkpoint: these numbers are meaningless)")

with open(os.path.join(OUTPUT, "linear_probing_results.json"), "w") as f:
    json.dump(
        {"preset": preset, "linear_top1": float(probe.top1), "knn_top1": float(knn)}, f, indent=2
    )
