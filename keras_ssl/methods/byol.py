"""BYOL (Grill et al. 2020)."""

import keras

from keras_ssl.layers.projection_head import PredictionHead, ProjectionHead
from keras_ssl.ops.byol import byol_loss
from keras_ssl.ops.schedules import cosine_schedule
from keras_ssl.trainer.contrastive_trainer import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="keras_ssl")
class BYOL(ContrastiveTrainer):
    """BYOL: "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning"
    (Grill et al., NeurIPS 2020).

    The online network (encoder `f_theta`, projector `g_theta`, predictor `q_theta`)
    predicts the target network's projection of the other view; the target
    (`f_xi`, `g_xi`) is an exponential moving average of the online weights,
    `xi <- tau xi + (1 - tau) theta` (Sec. 3.1), with `tau` following
    `1 - (1 - tau_base)(cos(pi k / K) + 1) / 2` from 0.996 to 1 over the run's
    `K` steps (Sec. 3.2). The loss is the normalised MSE
    `2 - 2 cos(q_theta(z_theta), z'_xi)` (eq. 2), symmetrised over the two views
    (eq. 3-4: the sum of both directions). The target never receives gradients.
    Projector and predictor are `Linear(4096) -> BN -> ReLU -> Linear(256)`. The
    views are asymmetric (`keras_ssl.augment.BYOLAugment`). Trains with LARS
    (lr 0.2 x N / 256, weight decay 1.5e-6) in the paper.

    Args:
        backbone: the encoder `f`.
        augmenter: two-view augmentation; `None` for views made by the data pipeline.
        projection_dim: output width of projector and predictor (256).
        hidden_dim: hidden width of projector and predictor (4096).
        momentum: `tau_base` (0.996).
        final_momentum: `tau` at the end of training (1.0).

    Example:

    ```python
    import keras, keras_ssl
    model = keras_ssl.BYOL(
        keras_ssl.backbones.ConvNet(input_channels=1),
        augmenter=keras_ssl.augment.BYOLAugment.small_images(28),
        hidden_dim=512, projection_dim=128,
    )
    model.compile(optimizer=keras_ssl.optimizers.LARS(learning_rate=0.2))
    ```
    """

    min_batch_size = 2  # the heads' batch norm: one image normalises to a constant
    uses_run_length = True  # the teacher's momentum schedule

    def __init__(
        self,
        backbone,
        augmenter=None,
        projection_dim=256,
        hidden_dim=4096,
        momentum=0.996,
        final_momentum=1.0,
        **kwargs,
    ):
        super().__init__(backbone=backbone, augmenter=augmenter, **kwargs)
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.momentum = momentum
        self.final_momentum = final_momentum
        self.projection_head = ProjectionHead(
            output_dim=projection_dim, hidden_dim=hidden_dim, name="projection_head"
        )
        self.projection_head.build((None, self.feature_dim))
        self.prediction_head = PredictionHead(
            output_dim=projection_dim, hidden_dim=hidden_dim, name="prediction_head"
        )
        self.prediction_head.build((None, projection_dim))
        self.teacher_backbone = self.make_teacher(backbone)
        self.teacher_head = self.make_teacher(self.projection_head, (None, self.feature_dim))

    def compute_ssl_loss(self, views, training=True):
        if len(views) != 2:
            raise ValueError(f"BYOL takes exactly 2 views per image, got {len(views)}.")
        online = [
            self.prediction_head(self.projection_head(h, training=training), training=training)
            for h in self.encode_views(self.backbone, views, training=training)
        ]
        target = [
            self.teacher_head(h, training=training)
            for h in self.encode_views(self.teacher_backbone, views, training=training)
        ]
        loss = byol_loss(online[0], target[1]) + byol_loss(online[1], target[0])
        return loss, {}

    def teacher_momentum(self):
        """`tau` of the step just taken (cosine from `momentum` to `final_momentum`)."""
        return cosine_schedule(
            self.schedule_step(), self.schedule_length(), self.momentum, self.final_momentum
        )

    def after_optimizer_step(self):
        tau = self.teacher_momentum()
        self.update_teacher(self.teacher_backbone, self.backbone, tau)
        self.update_teacher(self.teacher_head, self.projection_head, tau)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "projection_dim": self.projection_dim,
                "hidden_dim": self.hidden_dim,
                "momentum": self.momentum,
                "final_momentum": self.final_momentum,
            }
        )
        return config
