"""
Title: One script, three backends
Author: keras_ssl developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: The same keras_ssl code on TensorFlow, JAX and PyTorch, with the same numbers.
Accelerator: None
"""

"""
## Picking a backend

Keras 3 reads `KERAS_BACKEND` once, when it is first imported; keras_ssl follows it. Nothing
in a keras_ssl script names a backend:

```bash
KERAS_BACKEND=jax python train.py
KERAS_BACKEND=torch python train.py
KERAS_BACKEND=tensorflow python train.py
```

This guide proves the point: it saves a small SimCLR model once, then runs the same few lines
(load, one training step, features) under each backend in its own process, and compares the
numbers. `KERAS_SSL_GUIDE_SMALL=1` is how the tests run it (it is small either way).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np

import keras_ssl
from keras_ssl.datasets import fashion_mnist

OUTPUT = os.environ.get("KERAS_SSL_GUIDE_OUTPUT", "guide_outputs")
os.makedirs(OUTPUT, exist_ok=True)
keras.utils.set_random_seed(0)
print("this process runs on", keras.backend.backend())

"""
## One model, saved once

Random initialisation draws from each backend's own generator, so two backends started
from the same seed hold different weights. To compare like with like, the model is made
once and saved; every backend loads the same file. The augmentation is left out of the
model (`augmenter=None`): the two views are made here, once, so that every backend sees the
same pixels. (Inside a model the augmentation is random per backend too.)
"""

(x_train, _), _ = fashion_mnist.load_data(source="embedded")
images = x_train[:64, ..., None].astype("float32") / 255.0
rng = np.random.default_rng(0)
views = [np.clip(images + 0.05 * rng.normal(size=images.shape), 0, 1) for _ in range(2)]
np.savez(os.path.join(OUTPUT, "views.npz"), a=views[0], b=views[1], images=images)

model = keras_ssl.SimCLR(keras_ssl.backbones.ConvNet(widths=(16, 32), input_channels=1))
model.save(os.path.join(OUTPUT, "simclr.keras"))

"""
## The same lines under every backend

The script below is what a user would write: load, compile, `fit` one step on the two views,
then extract features. It runs three times, once per backend, each in a fresh Python.
"""

SCRIPT = """
import json, os, sys
import keras, numpy as np
import keras_ssl

out = sys.argv[1]
data = np.load(os.path.join(out, "views.npz"))
model = keras.saving.load_model(os.path.join(out, "simclr.keras"))
model.compile(optimizer=keras.optimizers.SGD(0.1))
history = model.fit((data["a"], data["b"]), batch_size=64, epochs=1, shuffle=False, verbose=0)
features = keras_ssl.eval.extract_features(model.backbone, data["images"])
np.save(os.path.join(out, f"features_{keras.backend.backend()}.npy"), features)
print(json.dumps({"backend": keras.backend.backend(), "loss": history.history["loss"][0]}))
"""

results = {}
for backend in ("tensorflow", "jax", "torch"):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, OUTPUT],
        env=dict(os.environ, KERAS_BACKEND=backend),
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    results[backend] = result["loss"]
    print(f"{backend:>10}: loss of the first step {result['loss']:.6f}")

"""
## The numbers agree

The loss of the step and the features after it agree to float32 round-off: the order of
floating-point additions differs between the backends' kernels, nothing else does.
"""

features = {b: np.load(os.path.join(OUTPUT, f"features_{b}.npy")) for b in results}
losses = np.array(list(results.values()))
spread = float(np.max(np.abs(losses - losses[0])))
feature_gap = max(float(np.max(np.abs(f - features["tensorflow"]))) for f in features.values())
scale = float(np.max(np.abs(features["tensorflow"])))
print(f"largest loss difference {spread:.2e}; largest feature difference {feature_gap:.2e}")
assert spread < 1e-4 * abs(losses[0]), results
assert feature_gap < 1e-4 * scale, (feature_gap, scale)
with open(os.path.join(OUTPUT, "switching_backends.json"), "w") as f:
    json.dump({"loss": results, "feature_gap": feature_gap, "feature_scale": scale}, f, indent=2)
