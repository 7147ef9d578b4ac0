"""
Title: Write your own method: VICReg in forty lines
Author: keras_ssl developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: A new method as a short `ContrastiveTrainer` subclass, in `keras.ops` only.
Accelerator: None
"""

"""
## What a method is

Every method in keras_ssl is a `keras.Model` that subclasses `keras_ssl.ContrastiveTrainer`.
The trainer owns everything that differs between TensorFlow, JAX and PyTorch (gradients, the
optimizer step, JAX's stateless variables), the augmentation of each batch into views, the
metrics and saving. A method writes only the middle of the step:

```
views -> backbone -> head -> loss     (compute_ssl_loss, in keras.ops)
after the optimizer step: EMA teachers, queues, centres (after_optimizer_step, optional)
```

Written in `keras.ops`, the same code runs unchanged on all three backends. This guide adds
**VICReg** (Bardes, Ponce, LeCun, ICLR 2022), which keras_ssl does not ship, and trains it.
`KERAS_SSL_GUIDE_SMALL=1` runs it in seconds on a slice of the data.
"""

import os

import keras
import numpy as np
from keras import ops

import keras_ssl
from keras_ssl.datasets import fashion_mnist

SMALL = os.environ.get("KERAS_SSL_GUIDE_SMALL") == "1"
OUTPUT = os.environ.get("KERAS_SSL_GUIDE_OUTPUT", "guide_outputs")
os.makedirs(OUTPUT, exist_ok=True)
keras.utils.set_random_seed(0)

"""
## The loss, as pure math

VICReg embeds the two views `Z, Z'` (`n x d`) and adds three terms (eq. 1-6 of the paper):

- invariance `s(Z, Z') = 1/n sum_i |z_i - z'_i|^2` (mean squared distance of the pairs);
- variance `v(Z) = 1/d sum_j max(0, gamma - sqrt(Var(z^j) + eps))`, a hinge that keeps the
  standard deviation of every dimension above `gamma = 1`;
- covariance `c(Z) = 1/d sum_{i != j} [C(Z)]_ij^2`, which decorrelates the dimensions.

`loss = lambda s + mu (v(Z) + v(Z')) + nu (c(Z) + c(Z'))` with `lambda = mu = 25`, `nu = 1`.
A loss is a plain function of tensors: no state, easy to test on its own.
"""


def vicreg_loss(z_a, z_b, invariance=25.0, variance=25.0, covariance=1.0, gamma=1.0, eps=1e-4):
    z_a, z_b = ops.cast(z_a, "float32"), ops.cast(z_b, "float32")
    n, d = z_a.shape[0], z_a.shape[1]
    invariance_term = ops.mean(ops.sum(ops.square(z_a - z_b), axis=1)) / d

    def variance_term(z):
        std = ops.sqrt(ops.var(z, axis=0) * n / (n - 1) + eps)
        return ops.mean(ops.relu(gamma - std))

    def covariance_term(z):
        z = z - ops.mean(z, axis=0)
        cov = ops.matmul(ops.transpose(z), z) / (n - 1)
        off_diagonal = cov * (1.0 - ops.eye(d))
        return ops.sum(ops.square(off_diagonal)) / d

    return (
        invariance * invariance_term
        + variance * (variance_term(z_a) + variance_term(z_b))
        + covariance * (covariance_term(z_a) + covariance_term(z_b))
    )


"""
The paper's invariance term is `F.mse_loss(z, z')`, the mean over all `n x d` entries; the
code above divides the per-pair sum by `d`, which is the same. Before training anything,
check the loss against NumPy written straight from the formula, on random inputs:
"""


def vicreg_reference(z_a, z_b, gamma=1.0, eps=1e-4):
    def var(z):
        return np.mean(np.maximum(0, gamma - np.sqrt(z.var(axis=0, ddof=1) + eps)))

    def cov(z):
        c = np.cov(z, rowvar=False)
        return (np.sum(c**2) - np.sum(np.diag(c) ** 2)) / z.shape[1]

    mse = np.mean((z_a - z_b) ** 2)
    return 25 * mse + 25 * (var(z_a) + var(z_b)) + cov(z_a) + cov(z_b)


rng = np.random.default_rng(0)
z_a, z_b = 0.7 * rng.normal(size=(2, 16, 8)).astype("float32")  # std < 1: the hinge is active
ours, reference = float(vicreg_loss(z_a, z_b)), vicreg_reference(z_a, z_b)
print(f"vicreg_loss {ours:.6f}   NumPy reference {reference:.6f}")
assert abs(ours - reference) <= 1e-5 * abs(reference), (ours, reference)

"""
## The method

`compute_ssl_loss(views, training)` gets the augmented views (a tuple of two image batches
here) and returns the loss and a dict of extra numbers to log. `encode_views` runs the
backbone once on both views together (so batch statistics see the whole batch);
`get_config` lists the constructor's arguments so that `model.save` and
`keras.saving.load_model` round-trip the method. Nothing in it is backend-specific.
"""


@keras.saving.register_keras_serializable(package="my_methods")
class VICReg(keras_ssl.ContrastiveTrainer):
    metric_names = ("invariance",)
    min_batch_size = 2  # the variance and covariance need at least two samples

    def __init__(self, backbone, augmenter=None, expander_dim=256, **kwargs):
        super().__init__(backbone=backbone, augmenter=augmenter, **kwargs)
        self.expander_dim = expander_dim
        self.expander = keras_ssl.layers.ProjectionHead(
            output_dim=expander_dim, hidden_dim=expander_dim, num_layers=3, name="expander"
        )
        self.expander.build((None, self.feature_dim))

    def compute_ssl_loss(self, views, training=True):
        features = self.encode_views(self.backbone, views, training=training)
        z_a, z_b = (self.expander(h, training=training) for h in features)
        invariance = ops.mean(ops.square(ops.cast(z_a - z_b, "float32")))
        return vicreg_loss(z_a, z_b), {"invariance": invariance}

    def get_config(self):
        return {**super().get_config(), "expander_dim": self.expander_dim}


"""
## Training it

Any backbone and any augmentation recipe plug in; VICReg uses the same two-view augmentation
family as BYOL, here scaled to 28 px images.
"""

(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(source="embedded")
if SMALL:
    x_train, y_train, x_test, y_test = x_train[:256], y_train[:256], x_test[:128], y_test[:128]
x_train, x_test = x_train[..., None], x_test[..., None]

model = VICReg(
    keras_ssl.backbones.ConvNet(input_channels=1),
    augmenter=keras_ssl.augment.SimCLRAugment.small_images(28, crop_scale=(0.2, 1.0)),
    expander_dim=64 if SMALL else 512,
)
model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4))
history = model.fit(x_train, batch_size=128, epochs=1 if SMALL else 10)
keras_ssl.visualize.plot_history(history, os.path.join(OUTPUT, "vicreg_curves.png"))

"""
## It is a Keras model like the others

It saves and reloads with its weights, and its backbone's features go into the same
evaluation as any built-in method.
"""

path = os.path.join(OUTPUT, "vicreg.keras")
model.save(path)
restored = keras.saving.load_model(path)
for a, b in zip(restored.weights, model.weights, strict=True):
    np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))

train_features = keras_ssl.eval.extract_features(model.backbone, x_train)
test_features = keras_ssl.eval.extract_features(model.backbone, x_test)
knn = keras_ssl.eval.knn_accuracy(train_features, y_train, test_features, y_test)
print(f"VICReg kNN top-1 on {len(x_test)} held-out images: {knn:.4f}")
