"""
Title: Publish a preset
Author: keras_ssl developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: Save a pretrained method as a Keras-native preset, reload it, share it on the Hub.
Accelerator: None
"""

"""
## What a preset is

A preset is a directory that `keras_ssl.from_preset` can load on any backend:

- `config.json`: the Keras config of the model (`keras.saving.serialize_keras_object`), so
  the architecture is rebuilt from code, never unpickled;
- `model.weights.h5`: the weights, in Keras's own format;
- `metadata.json`: who made it and how (method, data, epochs, scores, licence) and the
  keras_ssl / Keras versions it was saved with;
- for a compiled method model also `optimizer.json` / `optimizer.weights.h5`, so that
  `from_preset(dir, task="pretraining")` continues the run (EMA teacher, DINO centre,
  MoCo queue, optimizer step and schedules included).

This is the same shape as KerasHub's presets, and `upload_preset` puts such a directory in a
Hugging Face repository, from which anyone can load it with `from_preset("hf://org/name")`.
`KERAS_SSL_GUIDE_SMALL=1` trains for a few steps only (how the test suite runs it).
"""

import json
import os

import keras
import numpy as np

import keras_ssl
from keras_ssl.datasets import fashion_mnist

SMALL = os.environ.get("KERAS_SSL_GUIDE_SMALL") == "1"
OUTPUT = os.environ.get("KERAS_SSL_GUIDE_OUTPUT", "guide_outputs")
os.makedirs(OUTPUT, exist_ok=True)
keras.utils.set_random_seed(0)

"""
## Something worth publishing

A short BYOL run (Grill et al., NeurIPS 2020) on the embedded Fashion-MNIST subset: BYOL has
an EMA target network, which shows that the preset keeps the whole training state, not
only the backbone.
"""

(x_train, _), (x_test, _) = fashion_mnist.load_data(source="embedded")
if SMALL:
    x_train, x_test = x_train[:256], x_test[:16]
x_train, x_test = x_train[..., None], x_test[..., None]

backbone = keras_ssl.backbones.ConvNet(
    widths=(8, 16) if SMALL else (32, 64, 128, 256), input_channels=1
)
model = keras_ssl.BYOL(
    backbone,
    augmenter=keras_ssl.augment.BYOLAugment.small_images(28, crop_scale=(0.2, 1.0)),
    hidden_dim=64 if SMALL else 1024,
    projection_dim=32 if SMALL else 128,
)
model.compile(optimizer=keras.optimizers.AdamW(2e-3, weight_decay=1e-4))
history = model.fit(x_train, batch_size=128, epochs=1 if SMALL else 10, verbose=2)

"""
## Save it

`save_to_preset(model, directory, metadata=...)` takes a backbone or a whole method model.
Put in `metadata` what a user needs to trust and cite the weights: the method and its paper,
the data, the schedule, your evaluation, a licence.
"""

preset_dir = os.path.join(OUTPUT, "byol_convnet_fashion_mnist")
keras_ssl.save_to_preset(
    model,
    preset_dir,
    metadata={
        "method": "BYOL",
        "paper": "Grill et al., Bootstrap Your Own Latent, NeurIPS 2020",
        "data": "Fashion-MNIST (keras_ssl embedded subset, 10k images, no labels)",
        "epochs": len(history.history["loss"]),
        "license": "Apache-2.0",
        "note": "a demo of keras_ssl's publish guide" + (" (small mode)" if SMALL else ""),
    },
)

"""
A Hugging Face repository shows its `README.md` as the model card. Write one next to the
preset files: how to load the weights, what they were trained on, what to cite.
"""

epochs = len(history.history["loss"])
card = "\n".join(
    [
        "---",
        "library_name: keras",
        "tags: [keras_ssl, self-supervised, byol]",
        "license: apache-2.0",
        "---",
        "# BYOL ConvNet on Fashion-MNIST (keras_ssl)",
        "",
        "A small ConvNet pretrained with BYOL (Grill et al., NeurIPS 2020) without labels,",
        f"for {epochs} epoch(s), with keras_ssl. Load it on TensorFlow, JAX or PyTorch:",
        "",
        "```python",
        "import keras_ssl",
        'backbone, preprocessing = keras_ssl.from_preset("hf://<user>/<name>")',
        "```",
        "",
    ]
)
with open(os.path.join(preset_dir, "README.md"), "w") as f:
    f.write(card)

for name in sorted(os.listdir(preset_dir)):
    print(f"{name:24s} {os.path.getsize(os.path.join(preset_dir, name)):>9d} bytes")
with open(os.path.join(preset_dir, "metadata.json")) as f:
    print(json.dumps(json.load(f), indent=2))

"""
## Load it back, and check

`from_preset(directory)` returns the backbone (the feature extractor: what most users want)
and the preprocessing stored with the preset (None here: we stored none). The features must
equal those of the trained model exactly: same weights, same graph.
`task="pretraining"` returns the whole BYOL model instead, ready to `fit` further.
"""

loaded, preprocessing = keras_ssl.from_preset(preset_dir)
expected = keras.ops.convert_to_numpy(model.backbone(x_test.astype("float32") / 255.0))
actual = keras.ops.convert_to_numpy(loaded(x_test.astype("float32") / 255.0))
np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
print("reloaded backbone:", type(loaded).__name__, "features", actual.shape, "equal: yes")

resumed, _ = keras_ssl.from_preset(preset_dir, task="pretraining")
print(
    "task='pretraining':",
    type(resumed).__name__,
    "optimizer step",
    int(resumed.optimizer.iterations),
)

"""
## Share it

`upload_preset("hf://<user>/<name>", directory)` creates the Hugging Face repository if
needed and uploads the folder. It needs a token with write access (`hf auth login`, or
`HF_TOKEN`, or `token=`). After that anyone loads it, on any backend, with
`keras_ssl.from_preset("hf://<user>/<name>")`, and can pin a commit with `@<sha>`.

This guide never uploads in small mode (the test suite must not touch the network) nor when
no token is configured: it prints the command instead. Set `KERAS_SSL_GUIDE_HF_REPO` to
`<user>/<name>` to upload for real.
"""

from huggingface_hub import get_token

repo = os.environ.get("KERAS_SSL_GUIDE_HF_REPO", "<user>/byol-convnet-fashion-mnist")
command = f'keras_ssl.upload_preset("hf://{repo}", "{preset_dir}")'
if SMALL or get_token() is None or repo.startswith("<"):
    reason = "small mode" if SMALL else "no Hugging Face token or no repository set"
    print(f"Not uploading ({reason}). To publish, run:\n    {command}")
    print(f'Then anyone can load it with keras_ssl.from_preset("hf://{repo}").')
else:
    info = keras_ssl.upload_preset(f"hf://{repo}", preset_dir)
    print("uploaded:", info)
