"""DINO (Caron et al. 2021)."""

import threading
import warnings

import keras
from keras import ops

from keras_ssl.layers.dino_head import DINOHead
from keras_ssl.ops import distributed
from keras_ssl.ops._multi_tensor import scale_variables
from keras_ssl.ops.dino import dino_center_update, dino_loss
from keras_ssl.ops.schedules import cosine_schedule, linspace_schedule
from keras_ssl.trainer.contrastive_trainer import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="keras_ssl")
class DINO(ContrastiveTrainer):
    """DINO: "Emerging Properties in Self-Supervised Vision Transformers" (Caron et al.,
    ICCV 2021), self-distillation with no labels.

    The student (backbone + `DINOHead`) sees every view of a multi-crop batch (two global
    crops, then local crops; `keras_ssl.augment.DINOMultiCrop`), the teacher only the two
    global ones. The loss (eq. 1, `keras_ssl.ops.dino_loss`) is the cross-entropy between
    the teacher's centred, sharpened distribution `softmax((g_t(x) - c) / tau_t)` and the
    student's `softmax(g_s(x') / tau_s)` over all pairs of different views. After each
    step:

    - the centre follows `c <- m_c c + (1 - m_c) mean(g_t(x))` (`m_c` = 0.9);
    - the teacher is the EMA of the student, `theta_t <- l theta_t + (1 - l) theta_s`,
      `l` cosine from 0.996 to 1 over the run;
    - `tau_t` warms up linearly from 0.04 to 0.07 over the first 30 epochs (`tau_s` = 0.1);
    - the student's weights (not biases and norms) decay with a rate cosine from 0.04 to
      0.4 over the run (decoupled, `w <- w - lr wd w`): compile with an optimizer without
      weight decay of its own, e.g. `keras.optimizers.AdamW(lr, weight_decay=0.0,
      clipnorm=3.0)` (DINO clips each parameter's gradient norm at 3.0);
    - the head's last layer gets no update in the first epoch.

    Views of one size go through the backbone in one call (DINO's multi-crop forward).
    Works with ResNets and with `keras_ssl.backbones.ViT` (whose position embeddings are
    interpolated for every crop size).

    Args:
        backbone: the encoder, images -> features.
        augmenter: a multi-crop augmentation (global views first); `None` for views made
            by the data pipeline.
        output_dim: `K`, the head's output width (65536).
        hidden_dim, bottleneck_dim: head widths (2048, 256).
        norm_last_layer: weight-normalised last layer with its norm frozen (True; False
            helps ViT-B stability in the paper).
        use_bn_in_head: batch norm in the head's MLP (False for ViT, True for ResNet in
            the official code).
        head_layers: Linear layers of the head's MLP, the official `nlayers` (3; with 1
            the MLP is one Linear to the bottleneck and `hidden_dim` is unused).
        student_temperature: `tau_s` (0.1).
        warmup_teacher_temperature, teacher_temperature: `tau_t` in the first epoch and
            after the warm-up (0.04 -> 0.07).
        warmup_teacher_temperature_epochs: length of the warm-up (30), stepped by epoch
            as in the official code (`teacher_temperature` from epoch 29 on).
        center_momentum: `m_c` (0.9).
        momentum, final_momentum: teacher EMA momentum at the start and end (0.996 -> 1).
        weight_decay, final_weight_decay: decoupled weight decay at the start and end of the
            run (0.04 -> 0.4); 0 and 0 to leave weight decay to the optimizer.
        freeze_last_layer_epochs: epochs during which the last layer is not updated (1).

    Example:

    ```python
    import keras, keras_ssl
    model = keras_ssl.DINO(
        keras_ssl.backbones.ViT(patch_size=4, hidden_dim=64, depth=2, num_heads=2,
                                input_channels=1, pretrain_image_size=28,
                                use_mask_token=False),  # DINO masks nothing
        augmenter=keras_ssl.augment.DINOMultiCrop.small_images(28, num_local_crops=2),
        output_dim=1024, hidden_dim=256, bottleneck_dim=64,
    )
    model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.0, clipnorm=3.0))
    ```
    """

    uses_run_length = True  # the temperature, momentum, weight-decay and freezing schedules

    def __init__(
        self,
        backbone,
        augmenter=None,
        output_dim=65536,
        hidden_dim=2048,
        bottleneck_dim=256,
        norm_last_layer=True,
        use_bn_in_head=False,
        head_layers=3,
        student_temperature=0.1,
        warmup_teacher_temperature=0.04,
        teacher_temperature=0.07,
        warmup_teacher_temperature_epochs=30,
        center_momentum=0.9,
        momentum=0.996,
        final_momentum=1.0,
        weight_decay=0.04,
        final_weight_decay=0.4,
        freeze_last_layer_epochs=1,
        **kwargs,
    ):
        super().__init__(backbone=backbone, augmenter=augmenter, **kwargs)
        self.output_dim = output_dim
        self.hidden_dim = hidden_dim
        self.bottleneck_dim = bottleneck_dim
        self.norm_last_layer = norm_last_layer
        self.use_bn_in_head = use_bn_in_head
        self.head_layers = int(head_layers)
        self.student_temperature = student_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature_epochs = warmup_teacher_temperature_epochs
        self.center_momentum = center_momentum
        self.momentum = momentum
        self.final_momentum = final_momentum
        self.weight_decay = weight_decay
        self.final_weight_decay = final_weight_decay
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        # Per thread: tf.distribute runs the replicas' steps in parallel threads.
        self._pre_update = threading.local()
        self.head = DINOHead(
            output_dim=output_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            use_bn=use_bn_in_head,
            norm_last_layer=norm_last_layer,
            num_layers=self.head_layers,
            name="head",
        )
        self.head.build((None, self.feature_dim))
        self.teacher_backbone = self.make_teacher(backbone)
        self.teacher_head = self.make_teacher(self.head, (None, self.feature_dim))
        self.center = self.add_weight(
            name="center", shape=(1, output_dim), initializer="zeros", trainable=False
        )

    # ---- schedules, all driven by the trainer's step counter (`schedule_step`) -----------
    def current_teacher_temperature(self):
        """`tau_t` of the current step: a linear warm-up, then constant.

        As the official code's `np.linspace(warmup_teacher_temp, teacher_temp,
        warmup_teacher_temp_epochs)[epoch]`: `teacher_temperature` from the warm-up's last
        epoch on (see `_teacher_temperature_warmup`).
        """
        if not self.warmup_teacher_temperature_epochs:
            return ops.convert_to_tensor(self.teacher_temperature, "float32")
        position, length = self._teacher_temperature_warmup()
        return linspace_schedule(
            position, length, self.warmup_teacher_temperature, self.teacher_temperature
        )

    def _teacher_temperature_warmup(self):
        """`(epoch, warm-up epochs)`: DINO warms `tau_t` up by epoch, constant within one."""
        epoch = ops.floor(ops.cast(self.steps_taken(), "float32") / self.epochs_to_steps(1))
        return epoch, self.warmup_teacher_temperature_epochs

    def teacher_momentum(self):
        """EMA momentum of the step just taken (cosine to `final_momentum`)."""
        return cosine_schedule(
            self.schedule_step(), self.schedule_length(), self.momentum, self.final_momentum
        )

    def current_weight_decay(self):
        """Decoupled weight decay of the step just taken (cosine to `final_weight_decay`)."""
        return cosine_schedule(
            self.schedule_step(),
            self.schedule_length(),
            self.weight_decay,
            self.final_weight_decay,
        )

    # ---- the step ------------------------------------------------------------------------
    def compute_ssl_loss(self, views, training=True):
        if len(views) < 2:
            raise ValueError(
                f"DINO takes 2 global views (then local ones) per image, got {len(views)}."
            )
        features = self.encode_views(self.backbone, views, training=training)
        logits = self.head(ops.concatenate(features, axis=0), training=training)
        student_logits = ops.split(logits, len(views), axis=0)
        teacher_features = self.encode_views(self.teacher_backbone, views[:2], training=training)
        # In training mode, as DINO's teacher (never switched to eval): a head with batch
        # norm normalises with the teacher's batch statistics and updates its own moving ones.
        teacher_logits = self.teacher_head(
            ops.concatenate(teacher_features, axis=0), training=training
        )
        teacher_logits = ops.split(ops.stop_gradient(teacher_logits), 2, axis=0)
        loss = dino_loss(
            list(student_logits),
            list(teacher_logits),
            self.center,
            student_temperature=self.student_temperature,
            teacher_temperature=self.current_teacher_temperature(),
        )
        if training:
            self.center.assign(
                dino_center_update(
                    self.center,
                    list(teacher_logits),
                    self.center_momentum,
                    reduce_mean=distributed.global_batch_mean,  # the global batch's mean
                )
            )
        return loss, {}

    def transform_gradients(self, gradients):
        # Taken before the optimizer's update, for `after_optimizer_step`: this step's
        # learning rate (the optimizer's schedule moves on with its step), whether the last
        # layer is frozen, and the values of the variables that step rescales or restores.
        step = self._pre_update
        step.learning_rate = ops.copy(ops.cast(self.optimizer.learning_rate, "float32"))
        step.iterations = ops.copy(self.optimizer.iterations)
        step.frozen = None
        held = [v for v, _ in self._scaled_variables()]
        if self.freeze_last_layer_epochs:
            step.frozen = ops.cast(self.steps_taken(), "float32") < self.epochs_to_steps(
                self.freeze_last_layer_epochs
            )
            held += [v for v in self.last_layer_variables() if v.trainable]
        step.values = {id(v): ops.stop_gradient(ops.copy(v.value)) for v in held}
        return gradients

    def after_optimizer_step(self):
        step = self._pre_update
        before = getattr(step, "values", None) or {}
        multipliers = {}
        for variable, multiplier in self._scaled_variables():
            # An optimizer's update is linear in its learning rate (SGD, momentum, Adam's
            # moments do not depend on it), so scaling the step scales the rate.
            value = before[id(variable)]
            variable.assign(value + ops.cast(multiplier, value.dtype) * (variable - value))
            multipliers[id(variable)] = multiplier
        if self.weight_decay or self.final_weight_decay:
            if getattr(self.optimizer, "weight_decay", None):
                warnings.warn(
                    "DINO applies its own weight-decay schedule, and the optimizer decays the "
                    f"weights too (weight_decay={self.optimizer.weight_decay}). Compile with "
                    "weight_decay=0.0, or build DINO with weight_decay=0, final_weight_decay=0.",
                    stacklevel=2,
                )
            learning_rate = getattr(step, "learning_rate", None)
            if learning_rate is None:  # called without the step's `transform_gradients`
                learning_rate = ops.cast(self.optimizer.learning_rate, "float32")
            rate = learning_rate * self.current_weight_decay()
            # No decay where the optimizer skipped the step (a loss scale's overflow), as in the
            # official code, whose AdamW decays inside the step that the scaler skips.
            iterations_before = getattr(step, "iterations", None)
            if iterations_before is not None:
                rate = ops.where(self.optimizer.iterations > iterations_before, rate, 0.0)
            by_multiplier = {}
            for _, student in self.teacher_student_pairs():
                for variable in student.trainable_weights:
                    if len(variable.shape) > 1:  # not biases and norms, as the paper
                        multiplier = multipliers.get(id(variable), 1.0)
                        by_multiplier.setdefault(multiplier, []).append(variable)
            for multiplier, variables in by_multiplier.items():
                scale_variables(variables, 1.0 - rate * multiplier)
        frozen = getattr(step, "frozen", None)
        if frozen is not None:
            # The frozen last layer keeps its values: no update and no decay, as at learning
            # rate 0 (DINOv2). Its gradient still reaches the optimizer, whose moments are then
            # warm when it thaws: a zeroed gradient would leave Adam's moments at zero under
            # bias corrections of the whole run, and its first steps several times too long.
            for variable in self.last_layer_variables():
                if id(variable) in before:
                    variable.assign(ops.where(frozen, before[id(variable)], variable.value))
        step.values = step.iterations = step.learning_rate = step.frozen = None
        momentum = self.teacher_momentum()
        for teacher, student in self.teacher_student_pairs():
            self.update_teacher(teacher, student, momentum)

    def _scaled_variables(self):
        return [(v, m) for v, m in self.learning_rate_multipliers() if m != 1.0]

    # ---- hooks for subclasses (DINOv2) ---------------------------------------------------
    def teacher_student_pairs(self):
        """`(teacher, student)` networks: the students decay, the teachers follow their EMA."""
        return [(self.teacher_backbone, self.backbone), (self.teacher_head, self.head)]

    def last_layer_variables(self):
        """Variables frozen during the first `freeze_last_layer_epochs` epochs."""
        return list(self.head.last_layer_variables)

    def learning_rate_multipliers(self):
        """`(variable, multiplier)` pairs: these train at `multiplier` times the optimizer's
        learning rate (and decay at that multiple too). DINO: none; DINOv2: layer-wise decay.
        """
        return []

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                name: getattr(self, name)
                for name in (
                    "output_dim",
                    "hidden_dim",
                    "bottleneck_dim",
                    "norm_last_layer",
                    "use_bn_in_head",
                    "head_layers",
                    "student_temperature",
                    "warmup_teacher_temperature",
                    "teacher_temperature",
                    "warmup_teacher_temperature_epochs",
                    "center_momentum",
                    "momentum",
                    "final_momentum",
                    "weight_decay",
                    "final_weight_decay",
                    "freeze_last_layer_epochs",
                )
            }
        )
        return config
