"""MoCo-v2 (He et al. 2020; Chen et al. 2020)."""

import keras
from keras import ops

from keras_ssl.layers.projection_head import ProjectionHead
from keras_ssl.ops import distributed
from keras_ssl.ops.info_nce import info_nce_accuracy, info_nce_loss
from keras_ssl.ops.normalize import l2_normalize
from keras_ssl.trainer.contrastive_trainer import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="keras_ssl")
class MoCoV2(ContrastiveTrainer):
    """MoCo-v2: "Improved Baselines with Momentum Contrastive Learning" (Chen, Fan,
    Girshick, He 2020) on MoCo (He et al. 2020, "Momentum Contrast for Unsupervised
    Visual Representation Learning").

    The query `q = g(f(x_1))` comes from the online encoder, the key
    `k = g_k(f_k(x_2))` from a momentum encoder whose weights follow
    `theta_k <- m theta_k + (1 - m) theta_q` after every step (eq. 2, `m` = 0.999)
    and never receive gradients. The InfoNCE loss (eq. 1, temperature `T` = 0.2
    in v2) contrasts `q` with its key against a queue of `K` keys from earlier
    batches; after each step the batch's keys replace the oldest ones. The
    queue and its pointer are model state: saved with the model and restored
    by `keras.saving.load_model`. v2's head is an MLP without batch norm
    (`Linear(2048) -> ReLU -> Linear(128)`); its augmentation adds blur
    (`keras_ssl.augment.MoCoV2Augment`). Trains with SGD (lr 0.03 x N / 256,
    momentum 0.9, weight decay 1e-4) in the paper.

    Shuffling batch norm (the paper's guard against batch-statistics leakage
    between query and key across GPUs) is not needed on one device, where
    the key encoder's batch holds only keys; in data-parallel training,
    `keras_ssl.distributed.convert_sync_batchnorm` keeps it so (global statistics,
    as on one device). The queue receives the keys of the whole global batch.

    Args:
        backbone: the encoder `f`.
        augmenter: two-view augmentation; `None` for views made by the data pipeline.
        projection_dim: embedding width (128).
        hidden_dim: hidden width of the MLP head (default: backbone feature width,
            2048 for ResNet-50 as in the paper).
        queue_size: `K` (65536), at least the batch size; a ring buffer, so any
            batch size (a last partial batch too) fits.
        temperature: `T` (0.2).
        momentum: `m` (0.999).

    Example:

    ```python
    import keras, keras_ssl
    model = keras_ssl.MoCoV2(
        keras_ssl.backbones.ConvNet(input_channels=1),
        augmenter=keras_ssl.augment.MoCoV2Augment.small_images(28),
        queue_size=4096,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.03, momentum=0.9, weight_decay=1e-4))
    ```
    """

    metric_names = ("contrastive_accuracy",)
    min_batch_size = 2

    def __init__(
        self,
        backbone,
        augmenter=None,
        projection_dim=128,
        hidden_dim=None,
        queue_size=65536,
        temperature=0.2,
        momentum=0.999,
        **kwargs,
    ):
        super().__init__(backbone=backbone, augmenter=augmenter, **kwargs)
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.queue_size = queue_size
        self.temperature = temperature
        self.momentum = momentum
        self.projection_head = ProjectionHead(
            output_dim=projection_dim,
            hidden_dim=hidden_dim or self.feature_dim,
            num_layers=2,
            batch_norm=False,
            name="projection_head",
        )
        self.projection_head.build((None, self.feature_dim))
        self.teacher_backbone = self.make_teacher(backbone)
        self.teacher_head = self.make_teacher(self.projection_head, (None, self.feature_dim))
        self.queue = self.add_weight(
            name="queue",
            shape=(queue_size, projection_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=False,
        )
        self.queue.assign(l2_normalize(self.queue, axis=1))
        self.queue_pointer = self.add_weight(
            name="queue_pointer", shape=(), dtype="int32", initializer="zeros", trainable=False
        )

    def compute_ssl_loss(self, views, training=True):
        if len(views) != 2:
            raise ValueError(f"MoCo-v2 takes 2 views per image (query, key), got {len(views)}.")
        batch_size = views[0].shape[0]
        if batch_size is not None:
            batch_size *= distributed.world_size()  # the queue receives the global batch
        if batch_size is not None and batch_size > self.queue_size:
            raise ValueError(
                f"The MoCo queue ({self.queue_size} keys) is smaller than the batch "
                f"({batch_size}): one batch of keys would overwrite itself. Use a queue size "
                "of several batches (the paper uses 65536 keys for batches of 256)."
            )
        query = self.projection_head(self.backbone(views[0], training=training), training=training)
        key = self.teacher_head(
            self.teacher_backbone(views[1], training=training), training=training
        )
        key = ops.stop_gradient(key)
        loss = info_nce_loss(query, key, self.queue, temperature=self.temperature)
        accuracy = info_nce_accuracy(query, key, self.queue)
        if training:
            self._enqueue(key)
        return loss, {"contrastive_accuracy": accuracy}

    def _enqueue(self, keys):
        """Writes the batch's keys over the oldest ones (a ring buffer) and moves the pointer.

        In data-parallel training the keys of the whole global batch, gathered in replica
        order, so every replica's queue is the single-device queue.
        """
        keys = distributed.all_gather(keys)
        keys = ops.cast(keys, self.queue.dtype)
        keys = l2_normalize(keys, axis=1)
        count = ops.shape(keys)[0]
        pointer = ops.convert_to_tensor(self.queue_pointer)
        rows = (pointer + ops.arange(count, dtype="int32")) % self.queue_size
        self.queue.assign(ops.scatter_update(self.queue, ops.expand_dims(rows, 1), keys))
        self.queue_pointer.assign((pointer + count) % self.queue_size)

    def after_optimizer_step(self):
        self.update_teacher(self.teacher_backbone, self.backbone, self.momentum)
        self.update_teacher(self.teacher_head, self.projection_head, self.momentum)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "projection_dim": self.projection_dim,
                "hidden_dim": self.hidden_dim,
                "queue_size": self.queue_size,
                "temperature": self.temperature,
                "momentum": self.momentum,
            }
        )
        return config
