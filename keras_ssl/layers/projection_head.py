"""MLP heads on top of the backbone: projection (SimCLR, MoCo-v2, BYOL) and prediction (BYOL)."""

import keras

from keras_ssl.layers import fused_batch_norm, fused_dense


@keras.saving.register_keras_serializable(package="keras_ssl")
class ProjectionHead(keras.layers.Layer):
    """An MLP `Linear -> [BN] -> ReLU -> ... -> Linear [-> BN]`.

    SimCLR (Chen et al. 2020, Sec. 2.1 and B.9) uses two layers,
    `Linear(D, D) -> BN -> ReLU -> Linear(D, 128)`; MoCo-v2 (Chen et al. 2020b)
    the same without batch norm; BYOL (Grill et al. 2020) hidden width 4096
    and output 256. Hidden linear layers have no bias when batch norm follows
    them (the norm's shift replaces it).

    Args:
        output_dim: width of the last layer (the embedding the loss sees).
        hidden_dim: width of the hidden layers.
        num_layers: number of linear layers (>= 1).
        batch_norm: batch norm after each hidden linear layer.
        output_batch_norm: batch norm after the last linear layer, with a learned
            scale and no shift, as in SimCLR v2 (Chen et al. 2020c; the scale changes
            the embedding's direction, so it matters after L2 normalisation).

    Example:

    >>> import numpy as np
    >>> head = ProjectionHead(output_dim=128, hidden_dim=512)
    >>> head(np.zeros((4, 512), "float32")).shape
    (4, 128)
    """

    def __init__(
        self,
        output_dim=128,
        hidden_dim=2048,
        num_layers=2,
        batch_norm=True,
        output_batch_norm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        self.output_dim = output_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.batch_norm = batch_norm
        self.output_batch_norm = output_batch_norm
        self.blocks = []
        for i in range(num_layers - 1):
            self.blocks.append(
                fused_dense.Dense(hidden_dim, use_bias=not batch_norm, name=f"linear_{i}")
            )
            if batch_norm:
                self.blocks.append(
                    fused_batch_norm.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn_{i}")
                )
            self.blocks.append(keras.layers.ReLU(name=f"relu_{i}"))
        last = num_layers - 1
        self.blocks.append(
            fused_dense.Dense(output_dim, use_bias=not output_batch_norm, name=f"linear_{last}")
        )
        if output_batch_norm:
            self.blocks.append(
                fused_batch_norm.BatchNormalization(
                    momentum=0.9, epsilon=1e-5, center=False, name=f"bn_{last}"
                )
            )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_dim": self.output_dim,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "batch_norm": self.batch_norm,
                "output_batch_norm": self.output_batch_norm,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_ssl")
class PredictionHead(ProjectionHead):
    """BYOL's predictor `q` (Grill et al. 2020, Sec. 3.3): `Linear(4096) -> BN -> ReLU ->
    Linear(256)` on top of the projection, online network only. Same layout as
    `ProjectionHead`, with BYOL's widths as defaults.

    Example:

    >>> import numpy as np
    >>> PredictionHead(output_dim=8, hidden_dim=16)(np.zeros((2, 8), "float32")).shape
    (2, 8)
    """

    def __init__(self, output_dim=256, hidden_dim=4096, num_layers=2, batch_norm=True, **kwargs):
        super().__init__(
            output_dim=output_dim,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            batch_norm=batch_norm,
            **kwargs,
        )
