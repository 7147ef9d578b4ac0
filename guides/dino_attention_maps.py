"""
Title: What a DINO ViT looks at
Author: keras_ssl developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: Load a DINO preset (or train a small ViT with DINO) and draw its attention maps.
Accelerator: None
"""

"""
## Attention that segments

The striking figure of DINO (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021, Fig. 1 and 3) is the self-attention of the `[CLS]` token in the
last block of a ViT trained without labels: each head attends to the object, often to a
different part of it, although no mask or label was ever shown. This guide draws those maps.

For a ViT with `H` heads and an `h x w` grid of patches, the map of head `n` is the softmax
attention row of the `[CLS]` query over the patch tokens, `a_n = softmax(q_cls k^T / sqrt(d))`,
restricted to the patches and renormalised to sum to 1 (`keras_ssl.visualize.attention_maps`).

Where the maps come from:

- the published DINO ViT-S/16 (`keras_ssl.from_preset("dino_vits16")`, ImageNet, 800
  epochs) when its weights are in the Hugging Face cache (set `KERAS_SSL_GUIDE_DOWNLOAD=1`
  to let this guide download them, 87 MB, once);
- otherwise, and always with `KERAS_SSL_GUIDE_SMALL=1` (how the test suite runs it), a small
  ViT that we train with DINO here on the embedded Fashion-MNIST subset. A short CPU run
  gives far less crisp maps than the paper's, but the heads already specialise.
"""

import os

import keras
import numpy as np

import keras_ssl
from keras_ssl import cli
from keras_ssl.datasets import fashion_mnist
from keras_ssl.presets import PresetError

SMALL = os.environ.get("KERAS_SSL_GUIDE_SMALL") == "1"
DOWNLOAD = os.environ.get("KERAS_SSL_GUIDE_DOWNLOAD") == "1"
OUTPUT = os.environ.get("KERAS_SSL_GUIDE_OUTPUT", "guide_outputs")
os.makedirs(OUTPUT, exist_ok=True)
keras.utils.set_random_seed(0)

(x_train, _), (x_test, y_test) = fashion_mnist.load_data(source="embedded")
# One test image of each of the first few classes.
examples = np.stack([x_test[np.flatnonzero(y_test == c)[0]] for c in range(4)])

"""
## The published DINO ViT-S/16, if it is cached

`from_preset` resolves the registered card `dino_vits16` (timm's copy of the official
weights on the Hugging Face Hub, converted to `keras_ssl.backbones.ViT` on load from
safetensors) and returns the model with the paper's evaluation preprocessing (resize to 256,
centre-crop 224, ImageNet mean and std). With `local_files_only=True` it reads only the
local cache; when the file is not there it raises `keras_ssl.presets.PresetError`, whose
message says how to fetch it.
"""

vit, preprocess, source = None, None, None
if SMALL:
    print("Small mode: skipping the 87 MB preset; training a small ViT with DINO instead.")
else:
    try:
        vit, preprocess = keras_ssl.from_preset("dino_vits16", local_files_only=not DOWNLOAD)
        source = "DINO ViT-S/16 preset (ImageNet)"
    except PresetError as error:
        print(f"The dino_vits16 preset is not available here:\n  {error}")
        print("Training a small ViT with DINO on Fashion-MNIST instead.")

if vit is not None:
    # Grayscale to RGB, then the preset's preprocessing: 28 px -> 256 -> 224 px, 14 x 14 patches.
    rgb = np.repeat(examples[..., None], 3, axis=-1)
    model_input = keras.ops.convert_to_numpy(preprocess(rgb))
    # The same pixels, un-normalised, to draw under the maps.
    shown = np.clip(model_input * np.array(preprocess.std) + np.array(preprocess.mean), 0, 1)

"""
## Otherwise: train a small ViT with DINO

The ViT is the one the CLI's DINOv2 demo uses (4 px patches, so a 7 x 7 grid on 28 px
images; `cli.DEMO_RECIPES["dinov2"]["backbone"]`) without its register token and mask
token (DINO uses neither: they serve DINOv2's registers and masked-patch loss), and the model
is the CLI's DINO recipe (`cli.build_model("dino", ...)`: multi-crop with 2 global and 4
local crops, the DINO head, teacher temperature warm-up, EMA teacher). Small mode narrows
the ViT to width 32, 2 blocks and 2 heads and trains one epoch on 256 images: the maps are
then nearly uniform, but the code path is the real one.

DINO evaluates (and publishes) the EMA teacher, so we draw the teacher's attention.
"""

if vit is None:
    vit_options = dict(
        cli.DEMO_RECIPES["dinov2"]["backbone"], num_register_tokens=0, use_mask_token=False
    )
    vit_options.pop("name")
    if SMALL:
        vit_options.update(hidden_dim=32, depth=2, num_heads=2)
        x_train = x_train[:256]
    epochs = 1 if SMALL else 10
    backbone = keras_ssl.backbones.ViT(input_channels=1, pretrain_image_size=28, **vit_options)
    model = cli.build_model(
        "dino", backbone, image_size=28, epochs=epochs, steps_per_epoch=len(x_train) // 128
    )
    history = model.fit(x_train[..., None], batch_size=128, epochs=epochs, verbose=2)
    assert np.isfinite(history.history["loss"]).all()
    vit = model.teacher_backbone
    source = f"DINO teacher, {epochs} epoch(s)"
    model_input = shown = examples[..., None].astype("float32") / 255.0

"""
## The maps

`attention_maps(vit, images)` returns an array `(images, heads, h, w)`; with `path=` it also
writes a PNG. We draw the overlays ourselves with `save_attention_overlays` so that the
image under the maps is the one the model saw (after the preset's crop), not the normalised
input.
"""

maps = keras_ssl.visualize.attention_maps(vit, model_input)
print(source)
print("attention maps", maps.shape, "(images, heads, h, w); each map sums to 1")
path = os.path.join(OUTPUT, "dino_attention_maps.png")
keras_ssl.visualize.save_attention_overlays(shown, maps, path, title=source)
print("overlays:", path)

"""
A simple number to read off the maps: how peaked each head is. A uniform map has entropy
`log(h * w)`; the further below it, the more the head focuses.
"""

entropy = -np.sum(maps * np.log(maps + 1e-12), axis=(2, 3)).mean(axis=0)
uniform = np.log(maps.shape[2] * maps.shape[3])
for head, value in enumerate(entropy):
    print(f"head {head}: entropy {value:.3f} (uniform {uniform:.3f})")
