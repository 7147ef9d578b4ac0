"""Linear probe of frozen features, and batched feature extraction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np

from keras_ssl.augment._base import to_unit_float
from keras_ssl.eval._checks import (
    check_finite,
    check_images,
    check_label_range,
    check_labels,
    input_channels,
)

__all__ = ["LinearProbeResult", "extract_features", "linear_probe"]


@dataclass
class LinearProbeResult:
    """Outcome of ``linear_probe``.

    Attributes:
        top1: top-1 accuracy on the test features (Python float).
        head: the trained keras model, raw features ``(N, D)`` -> class probabilities
            ``(N, C)``; it includes the standardisation with the train statistics.
        train_top1: top-1 accuracy on the train features.
        num_classes: number of classes of the head.
        history: per-epoch training metrics (``keras.callbacks.History.history``).
        protocol: the feature protocol (``keras_ssl.eval.linear_probe_backbone``), or
            ``None`` when the probe was given features.
        feature_model: the frozen images -> features model of that protocol, or ``None``.
    """

    top1: float
    head: keras.Model
    train_top1: float
    num_classes: int
    history: dict = field(default_factory=dict)
    protocol: str | None = None
    feature_model: keras.Model | None = None

    def classifier(self):
        """``feature_model`` followed by ``head``: a ``keras.Model`` images -> probabilities."""
        if self.feature_model is None:
            raise ValueError(
                "This probe was trained on given features, so it has no feature model; use "
                "keras_ssl.eval.linear_probe_backbone to probe a backbone on images."
            )
        inputs = keras.Input(self.feature_model.input_shape[1:], name="images")
        outputs = self.head(self.feature_model(inputs))
        return keras.Model(inputs, outputs, name="linear_classifier")


class _ShuffledArrays(keras.utils.PyDataset):
    """(x, y) batches in a seeded order, reshuffled every epoch (reproducible fits)."""

    def __init__(self, x, y, batch_size, seed):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x))

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]

    def on_epoch_end(self):
        self._rng.shuffle(self._order)


def _predict_top1(head, x, y, batch_size):
    correct = 0
    for start in range(0, len(x), batch_size):
        probs = keras.ops.convert_to_numpy(head.predict_on_batch(x[start : start + batch_size]))
        correct += int(np.sum(np.argmax(probs, axis=-1) == y[start : start + batch_size]))
    return correct / len(x)


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    epochs=100,
    batch_size=256,
    learning_rate=1e-3,
    weight_decay=0.0,
    standardize=True,
    seed=0,
    verbose=0,
    num_classes=None,
    optimizer="adamw",
):
    """Train a softmax linear classifier on frozen features and report test top-1.

    The linear evaluation protocol of self-supervised learning (Zhang et al. 2016;
    Kolesnikov et al. 2019; SimCLR, Chen et al. 2020; MoCo, He et al. 2020): the backbone
    is frozen, a single ``Dense`` softmax layer is trained on its features with the
    cross-entropy loss, and accuracy is measured on held-out features. Features are
    standardised with the train mean and standard deviation (a constant feature keeps
    scale 1); the standardisation is part of the returned ``head``.

    Args:
        train_features: ``(N, D)`` train features.
        train_labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        test_features: ``(M, D)`` test features.
        test_labels: ``(M,)`` integer labels in ``[0, num_classes)``.
        epochs: training epochs.
        batch_size: mini-batch size.
        learning_rate: optimiser learning rate.
        weight_decay: AdamW's decoupled weight decay; with ``optimizer="sgd"``, the L2
            penalty ``weight_decay / 2 * |w|^2`` on the kernel and bias, whose gradient
            ``weight_decay * w`` goes through the momentum as in ``torch.optim.SGD``.
            Ignored when ``optimizer`` is an instance.
        standardize: standardise features with the train statistics.
        seed: seed of the head's initial weights and of the batch order.
        verbose: passed to ``model.fit``.
        num_classes: number of classes; default ``max(label) + 1``.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9), or a ``keras.optimizers``
            instance.

    Returns:
        A ``LinearProbeResult`` with ``top1``, ``head``, ``train_top1``, ``num_classes``
        and ``history``.

    Raises:
        ValueError: for NaN or infinite features (the message names the rows), labels
            that are not integers in ``[0, num_classes)``, or inconsistent shapes.

    Example:

    ```python
    import numpy as np
    from keras_ssl.eval import linear_probe

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=600)
    x = rng.normal(size=(600, 32)) + 3.0 * np.eye(4, 32)[y]
    result = linear_probe(
        x[:500], y[:500], x[500:], y[500:], epochs=50, batch_size=64, learning_rate=1e-2
    )
    print(result.top1)                               # about 0.95
    probs = result.head.predict(x[500:], verbose=0)  # raw features in
    ```
    """
    x_train = np.asarray(train_features, dtype="float32")
    x_test = np.asarray(test_features, dtype="float32")
    y_train = check_labels(train_labels, "train_labels", "linear_probe")
    y_test = check_labels(test_labels, "test_labels", "linear_probe")
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"Features must be 2-D with equal widths; got {x_train.shape} and {x_test.shape}."
        )
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError("Each feature array needs one label per row.")
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("linear_probe needs at least one train and one test row.")
    check_finite(x_train, "train_features", "linear_probe")
    check_finite(x_test, "test_features", "linear_probe")
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    check_label_range(y_train, num_classes, "train_labels", "linear_probe")
    check_label_range(y_test, num_classes, "test_labels", "linear_probe")
    y_train, y_test = y_train.astype("int32"), y_test.astype("int32")
    dim = x_train.shape[1]

    # The head computes in float32 under any global dtype policy, as DINO's linear
    # evaluation does: in float16 a feature whose standard deviation is below ~2e-4 has
    # zero variance (Keras's Normalization then divides by its epsilon), and values
    # above 65,504 overflow.
    inputs = keras.Input((dim,), name="features", dtype="float32")
    h = inputs
    if standardize:
        mean = x_train.mean(axis=0)
        variance = x_train.var(axis=0)
        variance = np.where(variance < 1e-12, 1.0, variance)
        h = keras.layers.Normalization(
            mean=mean, variance=variance, name="standardize", dtype="float32"
        )(h)
    coupled_decay = isinstance(optimizer, str) and optimizer.lower() == "sgd" and weight_decay
    penalty = keras.regularizers.L2(weight_decay / 2.0) if coupled_decay else None
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        kernel_regularizer=penalty,
        bias_regularizer=penalty,
        name="classifier",
        dtype="float32",
    )(h)
    head = keras.Model(inputs, outputs, name="linear_probe")

    if isinstance(optimizer, str):
        if optimizer.lower() == "adamw":
            optimizer = keras.optimizers.AdamW(
                learning_rate=learning_rate, weight_decay=weight_decay
            )
        elif optimizer.lower() == "sgd":
            optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
        else:
            raise ValueError(
                f"optimizer must be 'adamw', 'sgd' or an optimizer, got {optimizer!r}."
            )
    head.compile(  # a float32 head: no loss scaling under mixed_float16
        optimizer=optimizer, loss="sparse_categorical_crossentropy", auto_scale_loss=False
    )
    history = head.fit(  # the batches shuffle themselves: Keras's shuffle is not seeded
        _ShuffledArrays(x_train, y_train, batch_size, seed),
        epochs=epochs,
        verbose=verbose,
        shuffle=False,
    )
    return LinearProbeResult(
        top1=_predict_top1(head, x_test, y_test, batch_size),
        head=head,
        train_top1=_predict_top1(head, x_train, y_train, batch_size),
        num_classes=num_classes,
        history=dict(history.history),
    )


def extract_features(model, images, batch_size=256):
    """Run ``model`` (e.g. a frozen backbone) on NumPy images in batches.

    Integer images are converted to float32 in ``[0, 1]`` as the trainer converts them
    (``uint16`` ``/ 65535``, other integer dtypes ``/ 255``); float inputs to float32
    unchanged.
    Grey-scale ``(N, H, W)`` images get a channel axis ``(N, H, W, 1)``. Batches are
    converted one at a time, so a large uint8 set is never held in float32 all at once.

    Args:
        model: a keras model mapping ``(B, H, W, C)`` images to ``(B, D)`` features.
        images: NumPy array ``(N, H, W)`` or ``(N, H, W, C)``, channels last.
        batch_size: images per forward pass.

    Returns:
        float32 NumPy array of the model's outputs for all ``N`` images, in order.

    Raises:
        ValueError: for a single image without a batch axis (a 3-D array whose last axis
            is 1, 3 or the model's channel count), images whose channel count is not the
            model's (e.g. channels_first), or a model with several outputs (a dict, such
            as a ViT's ``output="tokens"``).

    Example:

    ```python
    import keras
    from keras_ssl.datasets import fashion_mnist
    from keras_ssl.eval import extract_features, knn_accuracy

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data("embedded")
    backbone = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
    ])
    f_train = extract_features(backbone, x_train)
    f_test = extract_features(backbone, x_test)
    print(knn_accuracy(f_train, y_train, f_test, y_test))
    ```
    """
    images = check_images(np.asarray(images), input_channels(model), "extract_features")
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        # Integer images to [0, 1], as the trainer takes them (`to_unit_float`).
        batch = to_unit_float(batch).astype("float32", copy=False)
        out = model.predict_on_batch(batch)
        if isinstance(out, dict):
            raise ValueError(
                "extract_features needs a model with one (B, D) output, but this one returns "
                f"a dict with keys {sorted(out)} (as a ViT built with output='tokens' "
                "does). Use a ViT with output='cls' (the default), "
                "keras_ssl.eval.feature_model(vit, 'last_blocks_cls'), or pick one output: "
                "`keras.Model(model.inputs, model.output['cls'])`."
            )
        if isinstance(out, (list, tuple)):
            raise ValueError(
                "extract_features needs a model with one (B, D) output, but this one returns "
                f"{len(out)} outputs. Pick one: `keras.Model(model.inputs, model.outputs[i])`."
            )
        outputs.append(np.asarray(keras.ops.convert_to_numpy(out), dtype="float32"))
    return np.concatenate(outputs, axis=0)
