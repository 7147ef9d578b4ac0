"""
Title: Self-supervised pretraining in a few minutes
Author: keras_ssl developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: SimCLR on the embedded Fashion-MNIST subset, then kNN and a linear probe.
Accelerator: None
"""

"""
## Set-up

keras_ssl runs on TensorFlow, JAX or PyTorch: pick one with `KERAS_BACKEND` before Python
starts. `KERAS_SSL_GUIDE_SMALL=1` runs this guide in seconds on a slice of the data (that is
how the test suite runs it); unset, it trains for the full demo budget.
"""

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
## The data

The package ships a class-balanced subset of Fashion-MNIST (10,000 training and 2,000 test
images, 28x28 grayscale). Pretraining uses the images only; the labels are kept aside to
evaluate the features afterwards.
"""

(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(source="embedded")
if SMALL:
    x_train, y_train, x_test, y_test = x_train[:512], y_train[:512], x_test[:128], y_test[:128]
x_train, x_test = x_train[..., None], x_test[..., None]
print("train", x_train.shape, "test", x_test.shape)

"""
## The model

A method is a `keras.Model`: a backbone, the method's heads and loss, and an augmentation
recipe that makes two views of every image inside the train step. `small_images` is the
paper's CIFAR recipe (weaker colour jitter, no blur), suited to 28-96 px images.
"""

backbone = keras_ssl.backbones.ConvNet(input_channels=1)
model = keras_ssl.SimCLR(
    backbone,
    augmenter=keras_ssl.augment.SimCLRAugment.small_images(28, crop_scale=(0.2, 1.0)),
    temperature=0.5,
)
model.compile(optimizer=keras.optimizers.AdamW(5e-3, weight_decay=1e-4))

"""
## Pretraining

`fit` takes the unlabelled images; `history` carries the loss and the contrastive accuracy
(how often the other view of an image is the most similar of the batch).
"""

history = model.fit(x_train, batch_size=128 if SMALL else 256, epochs=1 if SMALL else 15)
keras_ssl.visualize.plot_history(history, os.path.join(OUTPUT, "quickstart_curves.png"))

"""
## Evaluation

Features of the frozen backbone, then a weighted kNN (k = 20, T = 0.07, as DINO) and a linear
probe on the labelled images.
"""

train_features = keras_ssl.eval.extract_features(model.backbone, x_train)
test_features = keras_ssl.eval.extract_features(model.backbone, x_test)
knn = keras_ssl.eval.knn_accuracy(train_features, y_train, test_features, y_test)
probe = keras_ssl.eval.linear_probe(
    train_features, y_train, test_features, y_test, epochs=5 if SMALL else 30
)
print(f"kNN top-1 {knn:.4f}, linear probe top-1 {probe.top1:.4f}")
assert np.isfinite(history.history["loss"]).all()

"""
## Keep the backbone

The backbone is a plain Keras model: save it, reload it on any backend, build on it.
"""

path = os.path.join(OUTPUT, "quickstart_backbone.keras")
model.backbone.save(path)
print("reloaded features", keras.saving.load_model(path).predict(x_test[:4], verbose=0).shape)
