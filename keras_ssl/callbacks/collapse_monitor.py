"""`CollapseMonitor`: alarms for representation collapse during pretraining."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops

from keras_ssl.callbacks.knn_monitor import monitored_backbone
from keras_ssl.eval.collapse import (
    distribution_entropy,
    effective_rank,
    normalized_embedding_std,
)
from keras_ssl.eval.linear import extract_features

__all__ = ["CollapseMonitor", "CollapseWarning"]

_LN2 = math.log(2.0)


class CollapseWarning(UserWarning):
    """Warned by `CollapseMonitor` when the representation collapses."""


def _has_dino_teacher(model):
    return all(
        hasattr(model, name)
        for name in ("teacher_head", "teacher_backbone", "center", "output_dim")
    ) and callable(getattr(model, "current_teacher_temperature", None))


class CollapseMonitor(keras.callbacks.Callback):
    """Measures collapse of the representation on a fixed probe batch, warns or stops.

    Every ``every_n_epochs`` epochs the backbone (or its EMA teacher, ``use_teacher``)
    embeds ``probe_images`` (a fixed batch, so the figures are comparable across epochs
    and runs), and the callback writes into the epoch's ``logs`` (progress bar and
    ``History``):

    - ``embedding_std``: mean per-dimension std of the L2-normalised embeddings
      (SimSiam, Chen & He 2021): 0 when every image maps to one direction, about
      ``1 / sqrt(D)`` for well spread features
      (`keras_ssl.eval.normalized_embedding_std`);
    - ``effective_rank``: RankMe (Garrido et al. 2023), ``exp`` of the entropy of the
      normalised singular values, 1 for a rank-one (collapsed) embedding
      (`keras_ssl.eval.effective_rank`);
    - for DINO-style methods (`keras_ssl.DINO`, `keras_ssl.DINOv2`):
      ``teacher_entropy``, the mean entropy (nats) of the teacher's centred, sharpened
      distribution ``softmax((g_t(x) - c) / tau_t)`` over the ``K`` prototypes, and
      ``teacher_marginal_entropy``, the entropy of its batch average. DINO's two collapse
      modes (Caron et al. 2021, Sec. 5.3): uniform (``teacher_entropy`` near ``ln K``)
      and one prototype for every image (``teacher_marginal_entropy`` near 0).

    It also checks the loss for DINO's "stuck at ``ln(K)``" signature (the cross-entropy
    against a uniform student; ``dino_loss`` for DINOv2).

    Collapse is declared when, for ``patience`` consecutive checks, ``embedding_std *
    sqrt(D) < min_std_ratio``, or ``effective_rank < min_rank``, or the teacher is
    uniform (``teacher_entropy > max_entropy_fraction * ln K``) or one-prototype
    (``teacher_marginal_entropy < min_marginal_entropy``), or the loss is within
    ``loss_tolerance * ln K`` of ``ln K``. The callback then warns (`CollapseWarning`)
    with what collapsed and what to try, and stops training with
    ``stop_on_collapse=True``. ``monitor.collapsed`` (bool), ``monitor.message`` and
    ``monitor.results`` (``{epoch: figures}``) keep the outcome.

    Args:
        probe_images: a fixed batch of images ``(N, H, W, C)`` (a few hundred; ``N >= 2``),
            e.g. held-out images of the training distribution. Labels are not needed.
        every_n_epochs: check period (the last epoch is always checked).
        use_teacher: measure the EMA teacher's backbone instead of the student's.
        min_std_ratio: threshold on ``embedding_std * sqrt(D)`` (healthy is around 1).
        min_rank: threshold on the effective rank.
        max_entropy_fraction: uniform-teacher threshold as a fraction of ``ln K``.
        min_marginal_entropy: one-prototype threshold (nats) on the batch-average
            distribution.
        loss_tolerance: the loss is "at ``ln K``" within ``loss_tolerance * ln K``.
        patience: consecutive collapsed checks before acting.
        stop_on_collapse: stop `fit` (``model.stop_training = True``) on collapse.
        batch_size: images per forward pass.
        prefix: prefix of the log keys.

    Example:

    ```python
    import keras, keras_ssl
    from keras_ssl.datasets import fashion_mnist

    (x, _), (x_test, _) = fashion_mnist.load_data("embedded")
    model = keras_ssl.BYOL(keras_ssl.backbones.ConvNet((16, 32), input_channels=1),
                           augmenter=keras_ssl.augment.BYOLAugment.small_images(28))
    model.compile(optimizer=keras.optimizers.AdamW(2e-3))
    monitor = keras_ssl.callbacks.CollapseMonitor(x_test[:512], stop_on_collapse=True)
    model.fit(x[:1024], batch_size=256, epochs=2, callbacks=[monitor])
    monitor.results  # {1: {"embedding_std": ..., "effective_rank": ...}, 2: {...}}
    ```
    """

    def __init__(
        self,
        probe_images,
        every_n_epochs=1,
        use_teacher=False,
        min_std_ratio=0.05,
        min_rank=2.0,
        max_entropy_fraction=0.98,
        min_marginal_entropy=_LN2,
        loss_tolerance=0.01,
        patience=1,
        stop_on_collapse=False,
        batch_size=256,
        prefix="",
    ):
        super().__init__()
        self.probe_images = np.asarray(probe_images)
        if self.probe_images.ndim not in (3, 4) or len(self.probe_images) < 2:
            raise ValueError(
                "probe_images must be a batch of at least 2 images (N, H, W[, C]), got shape "
                f"{self.probe_images.shape}."
            )
        if int(every_n_epochs) < 1 or int(patience) < 1:
            raise ValueError("every_n_epochs and patience must be >= 1.")
        self.every_n_epochs = int(every_n_epochs)
        self.use_teacher = bool(use_teacher)
        self.min_std_ratio = float(min_std_ratio)
        self.min_rank = float(min_rank)
        self.max_entropy_fraction = float(max_entropy_fraction)
        self.min_marginal_entropy = float(min_marginal_entropy)
        self.loss_tolerance = float(loss_tolerance)
        self.patience = int(patience)
        self.stop_on_collapse = bool(stop_on_collapse)
        self.batch_size = batch_size
        self.prefix = prefix
        self.results = {}
        self.collapsed = False
        self.message = None
        self._streak = 0

    # ---- measurements ---------------------------------------------------------------------
    def measure(self, logs=None):
        """Figures of the current model on the probe batch: ``{name: value}``."""
        backbone = monitored_backbone(self.model, self.use_teacher)
        features = extract_features(backbone, self.probe_images, self.batch_size)
        figures = {
            "embedding_std": normalized_embedding_std(features),
            "effective_rank": effective_rank(features),
        }
        if _has_dino_teacher(self.model):
            figures.update(self._teacher_entropies())
        return figures

    def _teacher_entropies(self):
        model = self.model
        features = extract_features(model.teacher_backbone, self.probe_images, self.batch_size)
        temperature = float(ops.convert_to_numpy(model.current_teacher_temperature()))
        # The targets the method trains on: DINOv2's own (Sinkhorn-Knopp by default, over each
        # probe batch), else DINO's centred and sharpened softmax.
        targets = getattr(model, "teacher_probabilities", None)
        center = ops.convert_to_numpy(model.center)
        probs = []
        for start in range(0, len(features), self.batch_size):
            logits = model.teacher_head(features[start : start + self.batch_size], training=False)
            logits = ops.cast(logits, "float32")
            if targets is not None:
                batch_probs = targets(logits, model.center, temperature, training=False)
            else:
                batch_probs = ops.softmax((ops.convert_to_numpy(logits) - center) / temperature)
            probs.append(ops.convert_to_numpy(batch_probs))
        probs = np.concatenate(probs)
        return {
            "teacher_entropy": float(np.mean(distribution_entropy(probs))),
            "teacher_marginal_entropy": float(distribution_entropy(probs.mean(axis=0))),
        }

    def diagnose(self, figures, logs=None):
        """The collapse symptoms in ``figures`` (and the loss in ``logs``), as sentences."""
        symptoms = []
        if not all(math.isfinite(value) for value in figures.values()):
            symptoms.append(
                "the features are NaN or infinite: training has diverged "
                f"({', '.join(f'{k} {v:.3g}' for k, v in figures.items())})"
            )
        dim = self._feature_dim()
        ratio = figures["embedding_std"] * math.sqrt(dim)
        if ratio < self.min_std_ratio:
            symptoms.append(
                f"the L2-normalised features barely vary across images: std "
                f"{figures['embedding_std']:.2e} (healthy ~ 1/sqrt({dim}) = "
                f"{1 / math.sqrt(dim):.2e})"
            )
        if figures["effective_rank"] < self.min_rank:
            symptoms.append(
                f"the features span about one direction: effective rank (RankMe) "
                f"{figures['effective_rank']:.2f} of at most {min(dim, len(self.probe_images))}"
            )
        if "teacher_entropy" in figures:
            log_k = math.log(self.model.output_dim)
            if figures["teacher_entropy"] > self.max_entropy_fraction * log_k:
                symptoms.append(
                    f"the teacher's output is uniform: entropy {figures['teacher_entropy']:.3f} "
                    f"nats of at most ln({self.model.output_dim}) = {log_k:.3f}"
                )
            if figures["teacher_marginal_entropy"] < self.min_marginal_entropy:
                symptoms.append(
                    "the teacher puts every image on the same prototype: entropy of its "
                    f"batch-average output {figures['teacher_marginal_entropy']:.3f} nats"
                )
        loss = self._dino_loss(logs)
        if loss is not None:
            log_k = math.log(self.model.output_dim)
            if abs(loss - log_k) < self.loss_tolerance * log_k:
                symptoms.append(
                    f"the loss is stuck at ln(out_dim) = ln({self.model.output_dim}) = "
                    f"{log_k:.3f} (got {loss:.3f}): the student's output is uniform"
                )
        return symptoms

    def _feature_dim(self):
        backbone = monitored_backbone(self.model, self.use_teacher)
        dim = getattr(backbone, "output_dim", None)
        return int(dim if dim is not None else backbone.output_shape[-1])

    def _dino_loss(self, logs):
        if not logs or not _has_dino_teacher(self.model):
            return None
        value = logs.get("dino_loss", logs.get("loss"))
        return None if value is None else float(value)

    def _advice(self):
        model = self.model
        tips = [
            "lower the learning rate or lengthen its warm-up",
            "check the augmentations are strong enough (keras_ssl.visualize.augmentation_grid)",
        ]
        if _has_dino_teacher(model):
            tips += [
                "keep the teacher temperature low (warm-up from 0.04; above 0.07 tends to "
                "collapse) and the centre momentum at 0.9",
                "raise the teacher's EMA momentum (0.996 -> 1) and keep the last layer frozen "
                "in the first epoch",
                "try a smaller output_dim for small data sets",
            ]
        elif hasattr(model, "teacher_backbone"):
            tips += [
                "keep the EMA momentum high (0.99-0.996); BYOL needs its predictor and batch "
                "norm in the heads",
            ]
        else:
            tips += ["use a larger batch or a lower temperature (SimCLR / MoCo: 0.1-0.5)"]
        return "; ".join(tips)

    # ---- callback hooks -------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        monitored_backbone(self.model, self.use_teacher)  # use_teacher without one: fail now

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every_n_epochs and (last is None or epoch + 1 != last):
            return
        figures = self.measure(logs)
        self.results[epoch + 1] = dict(figures)
        if logs is not None:
            logs.update({self.prefix + name: value for name, value in figures.items()})
        symptoms = self.diagnose(figures, logs)
        self._streak = self._streak + 1 if symptoms else 0
        if symptoms and self._streak >= self.patience:
            self.collapsed = True
            network = "teacher backbone" if self.use_teacher else "backbone"
            self.message = (
                f"CollapseMonitor: the {type(self.model).__name__} {network} collapsed at "
                f"epoch {epoch + 1}: " + "; ".join(symptoms) + ". Try: " + self._advice() + "."
            )
            if self.stop_on_collapse:
                self.message += " Training stopped (stop_on_collapse=True)."
                self.model.stop_training = True
            warnings.warn(self.message, CollapseWarning, stacklevel=2)
