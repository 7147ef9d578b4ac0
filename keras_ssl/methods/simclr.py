"""SimCLR (Chen et al. 2020)."""

import keras

from keras_ssl.layers.projection_head import ProjectionHead
from keras_ssl.ops.nt_xent import contrastive_accuracy, nt_xent_loss
from keras_ssl.trainer.contrastive_trainer import ContrastiveTrainer


@keras.saving.register_keras_serializable(package="keras_ssl")
class SimCLR(ContrastiveTrainer):
    """SimCLR: "A Simple Framework for Contrastive Learning of Visual
    Representations" (Chen, Kornblith, Norouzi, Hinton, ICML 2020).

    Two augmented views of every image go through the backbone `f` and the
    projection head `g` (`Linear -> BN -> ReLU -> Linear`, Sec. 2.1); the
    NT-Xent loss (eq. 1, `keras_ssl.ops.nt_xent_loss`) pulls the two views of
    an image together against the other `2(N - 1)` views of the batch. Both
    views are encoded in one backbone call, so batch norm sees all `2N`.
    Logs `loss` and `contrastive_accuracy` (top-1 of the positive among the
    `2N - 1` candidates). The paper trains with LARS
    (`keras_ssl.optimizers.LARS`, lr `0.3 x N / 256`, weight decay 1e-6).

    Args:
        backbone: the encoder `f`, images -> features.
        augmenter: makes two views from a batch of images, e.g.
            `keras_ssl.augment.SimCLRAugment(image_size)`; `None` when the
            data pipeline yields the two views itself.
        projection_dim: output width of `g` (128 in the paper).
        hidden_dim: hidden width of `g`; default the backbone's feature width.
        temperature: NT-Xent temperature `T` (0.5 in the paper's CIFAR-10
            runs; 0.1 with very large ImageNet batches).

    Example:

    ```python
    import keras_ssl
    from keras_ssl.datasets import fashion_mnist

    (x_train, _), _ = fashion_mnist.load_data(source="embedded")
    model = keras_ssl.SimCLR(
        keras_ssl.backbones.ConvNet(input_channels=1),
        augmenter=keras_ssl.augment.SimCLRAugment.small_images(28),
    )
    model.compile(optimizer=keras_ssl.optimizers.LARS(learning_rate=0.3))
    model.fit(x_train[:512], batch_size=128, epochs=1)
    features = model.predict(x_train[:10])
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
        temperature=0.5,
        **kwargs,
    ):
        super().__init__(backbone=backbone, augmenter=augmenter, **kwargs)
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.projection_head = ProjectionHead(
            output_dim=projection_dim,
            hidden_dim=hidden_dim or self.feature_dim,
            num_layers=2,
            batch_norm=True,
            name="projection_head",
        )
        self.projection_head.build((None, self.feature_dim))

    def compute_ssl_loss(self, views, training=True):
        if len(views) != 2:
            raise ValueError(f"SimCLR takes exactly 2 views per image, got {len(views)}.")
        features = self.encode_views(self.backbone, views, training=training)
        z_a, z_b = (self.projection_head(h, training=training) for h in features)
        loss = nt_xent_loss(z_a, z_b, temperature=self.temperature)
        return loss, {"contrastive_accuracy": contrastive_accuracy(z_a, z_b)}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "projection_dim": self.projection_dim,
                "hidden_dim": self.hidden_dim,
                "temperature": self.temperature,
            }
        )
        return config


__all__ = ["SimCLR"]
