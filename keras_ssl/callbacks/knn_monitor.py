"""`KNNMonitor`: kNN (and optionally linear-probe) top-1 of the features during pretraining."""

from __future__ import annotations

import time
import warnings

import keras
import numpy as np

from keras_ssl.eval._checks import check_images, check_labels, input_channels, non_finite_rows
from keras_ssl.eval.features import feature_model
from keras_ssl.eval.knn import knn_accuracy
from keras_ssl.eval.linear import extract_features, linear_probe

__all__ = ["KNNMonitor"]


def _labelled(data, name):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"`{name}` must be an (images, labels) pair of NumPy arrays, got {type(data)}."
        )
    images, labels = np.asarray(data[0]), check_labels(data[1], f"{name} labels", "KNNMonitor")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(
            f"`{name}` needs one label per image and at least one image; got "
            f"{len(images)} images and {len(labels)} labels."
        )
    return images, labels


def monitored_backbone(model, use_teacher):
    """The backbone a monitor measures: the method's (EMA teacher's) backbone, or `model`."""
    if use_teacher:
        teacher = getattr(model, "teacher_backbone", None)
        if teacher is None:
            raise ValueError(
                f"use_teacher=True, but {type(model).__name__} has no EMA teacher "
                "(`teacher_backbone`; MoCo-v2, BYOL, DINO and DINOv2 have one). Use "
                "use_teacher=False to monitor the backbone."
            )
        return teacher
    return getattr(model, "backbone", model)


class KNNMonitor(keras.callbacks.Callback):
    """Weighted-kNN top-1 of the backbone's features on a labelled set, during `fit`.

    Self-supervised pretraining runs on unlabelled images; this callback evaluates the
    representation on a separate labelled set every ``every_n_epochs`` epochs (and after
    the last epoch) with the kNN protocol of Wu et al. 2018 / DINO
    (`keras_ssl.eval.knn_accuracy`: cosine similarity, the ``k`` nearest train features
    vote with weight ``exp(s / T)``). The features are those of the method's backbone
    (`model.backbone`), or of its EMA teacher's (`use_teacher=True`; MoCo-v2, BYOL, DINO,
    DINOv2), which is often the better network. With ``linear_probe`` it also trains a
    linear probe on the same frozen features (`keras_ssl.eval.linear_probe`).

    The values are written into the epoch's ``logs`` under ``"knn_top1"`` (and
    ``"linear_top1"``), prefixed by ``prefix`` (default ``"teacher_"`` with
    ``use_teacher=True``), so they appear in Keras's progress bar and in the returned
    ``History`` (Keras adds its own `History` and progress-bar callbacks after the
    user's, and they read the same ``logs`` dict). On epochs without evaluation the keys
    are absent, so ``history.history["knn_top1"]`` has one value per evaluation; the
    epoch of each is in ``monitor.results`` (``{epoch: {key: value}}``, epochs counted
    from 1; epoch 0 is the evaluation before training when ``evaluate_at_start``). When
    the features are NaN or infinite (a diverged model) the values are NaN, with a
    warning, and training goes on.

    Args:
        labelled_train: ``(images, labels)``: the kNN memory bank / probe training set.
        labelled_test: ``(images, labels)``: the evaluated set.
        every_n_epochs: evaluation period in epochs (the last epoch is always evaluated).
        k: neighbours (DINO: 20).
        temperature: vote temperature ``T`` (DINO: 0.07).
        use_teacher: monitor the EMA teacher's backbone.
        protocol, n_last_blocks: the feature protocol (`keras_ssl.eval.feature_model`):
            ``"pooled"`` (the backbone's output), ``"last_blocks_cls"`` or
            ``"cls_avgpool"`` (ViTs).
        linear_probe: ``None`` (no probe), ``True`` (default probe settings) or a dict of
            `keras_ssl.eval.linear_probe` arguments, e.g. ``{"epochs": 30}``.
        evaluate_at_start: also evaluate before the first epoch (``results[0]``).
        batch_size: images per forward pass.
        prefix: prefix of the log keys (default ``""``, ``"teacher_"`` for the teacher).
        verbose: print one line per evaluation.

    Example:

    ```python
    import keras, keras_ssl
    from keras_ssl.datasets import fashion_mnist

    (x, y), (x_test, y_test) = fashion_mnist.load_data("embedded")
    model = keras_ssl.SimCLR(keras_ssl.backbones.ConvNet((16, 32), input_channels=1),
                             augmenter=keras_ssl.augment.SimCLRAugment.small_images(28))
    model.compile(optimizer=keras.optimizers.AdamW(2e-3))
    monitor = keras_ssl.callbacks.KNNMonitor((x[:2000], y[:2000]), (x_test, y_test))
    history = model.fit(x[2000:3024], batch_size=256, epochs=2, callbacks=[monitor])
    history.history["knn_top1"]  # one value per epoch
    ```
    """

    def __init__(
        self,
        labelled_train,
        labelled_test,
        every_n_epochs=1,
        k=20,
        temperature=0.07,
        use_teacher=False,
        protocol="pooled",
        n_last_blocks=4,
        linear_probe=None,
        evaluate_at_start=False,
        batch_size=256,
        prefix=None,
        verbose=0,
    ):
        super().__init__()
        self.train_images, self.train_labels = _labelled(labelled_train, "labelled_train")
        self.test_images, self.test_labels = _labelled(labelled_test, "labelled_test")
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if linear_probe is not None and not isinstance(linear_probe, (bool, dict)):
            raise ValueError(
                "linear_probe must be None, True or a dict of keras_ssl.eval.linear_probe "
                f"arguments, got {linear_probe!r}."
            )
        self.every_n_epochs = int(every_n_epochs)
        self.k = k
        self.temperature = temperature
        self.use_teacher = bool(use_teacher)
        self.protocol = protocol
        self.n_last_blocks = n_last_blocks
        self.linear_probe = {} if linear_probe is True else (linear_probe or None)
        self.evaluate_at_start = evaluate_at_start
        self.batch_size = batch_size
        self.prefix = ("teacher_" if use_teacher else "") if prefix is None else prefix
        self.verbose = verbose
        self.num_classes = int(max(self.train_labels.max(), self.test_labels.max())) + 1
        self.results = {}
        self.seconds = 0.0
        self._feature_model = None

    @property
    def knn_key(self):
        return f"{self.prefix}knn_top1"

    @property
    def linear_key(self):
        return f"{self.prefix}linear_top1"

    def evaluate(self):
        """Evaluates the current model now; returns ``{key: top-1}``."""
        started = time.time()
        if self._feature_model is None:
            backbone = monitored_backbone(self.model, self.use_teacher)
            self._feature_model = feature_model(backbone, self.protocol, self.n_last_blocks)
        train = extract_features(self._feature_model, self.train_images, self.batch_size)
        test = extract_features(self._feature_model, self.test_images, self.batch_size)
        broken = len(non_finite_rows(train)) + len(non_finite_rows(test))
        if broken:
            # A diverged model: its accuracy is undefined, not a number to report.
            keys = [self.knn_key] + ([self.linear_key] if self.linear_probe is not None else [])
            warnings.warn(
                f"KNNMonitor: the features of {broken} of {len(train) + len(test)} labelled "
                f"images are NaN or infinite (the model has diverged); logging {keys} as NaN.",
                stacklevel=2,
            )
            self.seconds += time.time() - started
            return dict.fromkeys(keys, float("nan"))
        values = {
            self.knn_key: knn_accuracy(
                train,
                self.train_labels,
                test,
                self.test_labels,
                k=self.k,
                temperature=self.temperature,
                num_classes=self.num_classes,
            )
        }
        if self.linear_probe is not None:
            probe = linear_probe(
                train,
                self.train_labels,
                test,
                self.test_labels,
                num_classes=self.num_classes,
                **self.linear_probe,
            )
            values[self.linear_key] = probe.top1
        self.seconds += time.time() - started
        return values

    def _record(self, epoch, values):
        self.results[epoch] = values
        if self.verbose:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
            print(f"KNNMonitor epoch {epoch}: {shown}")

    def on_train_begin(self, logs=None):
        # Built now, not at the first evaluation: options that do not fit the model
        # (use_teacher without a teacher, a protocol its backbone lacks) fail before training.
        backbone = monitored_backbone(self.model, self.use_teacher)
        self._feature_model = feature_model(backbone, self.protocol, self.n_last_blocks)
        channels = input_channels(self._feature_model)
        check_images(self.train_images, channels, "KNNMonitor")
        check_images(self.test_images, channels, "KNNMonitor")
        if self.evaluate_at_start:
            self._record(0, self.evaluate())

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every_n_epochs and (last is None or epoch + 1 != last):
            return
        values = self.evaluate()
        self._record(epoch + 1, values)
        if logs is not None:
            logs.update(values)
