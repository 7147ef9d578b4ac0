"""LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017), as SimCLR trains."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ssl")
class LARS(keras.optimizers.Optimizer):
    """SGD with momentum and a per-layer trust ratio (LARS).

    For a weight `w` with gradient `g`, weight decay `lambda`, trust
    coefficient `eta` and momentum `mu` (You et al. 2017; the variant of
    SimCLR's reference code, Chen et al. 2020 Appendix B.1):

        g     <- g + lambda * w
        ratio  = eta * |w| / |g|   (1 if |w| = 0 or |g| = 0)
        v     <- mu * v + lr * ratio * g
        w     <- w - v              (Nesterov: w - (mu * v + lr * ratio * g))

    Biases and normalisation parameters (every weight of rank <= 1) are
    excluded from both weight decay and adaptation (ratio 1) when
    `exclude_bias_and_norm=True`, as in the paper.

    Args:
        learning_rate: base rate; SimCLR uses `0.3 x batch_size / 256`.
        momentum: `mu`.
        weight_decay: `lambda` (1e-6 in SimCLR), applied through the
            gradient (coupled), not Keras's decoupled decay.
        eta: trust coefficient (0.001).
        nesterov: Nesterov momentum.
        exclude_bias_and_norm: exempt rank <= 1 weights from decay and
            adaptation.

    Example:

    >>> import keras, numpy as np
    >>> from keras_ssl.optimizers import LARS
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile(optimizer=LARS(learning_rate=0.1), loss="mse")
    >>> _ = model.fit(np.ones((8, 4)), np.zeros((8, 2)), verbose=0)
    """

    def __init__(
        self,
        learning_rate=0.3,
        momentum=0.9,
        weight_decay=1e-6,
        eta=0.001,
        nesterov=False,
        exclude_bias_and_norm=True,
        name="lars",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.lars_weight_decay = weight_decay
        self.eta = eta
        self.nesterov = nesterov
        self.exclude_bias_and_norm = exclude_bias_and_norm

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def _is_excluded(self, variable):
        return self.exclude_bias_and_norm and len(variable.shape) <= 1

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        velocity = self.velocities[self._get_variable_index(variable)]
        if not self._is_excluded(variable):
            if self.lars_weight_decay:
                gradient = gradient + self.lars_weight_decay * variable
            w_norm = ops.norm(ops.reshape(variable, (-1,)))
            g_norm = ops.norm(ops.reshape(gradient, (-1,)))
            ratio = ops.where(
                w_norm > 0,
                ops.where(g_norm > 0, self.eta * w_norm / ops.maximum(g_norm, 1e-30), 1.0),
                1.0,
            )
            learning_rate = learning_rate * ops.cast(ratio, variable.dtype)
        step = learning_rate * gradient
        new_velocity = self.momentum * velocity + step
        self.assign(velocity, new_velocity)
        update = self.momentum * new_velocity + step if self.nesterov else new_velocity
        self.assign_sub(variable, update)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.lars_weight_decay,
                "eta": self.eta,
                "nesterov": self.nesterov,
                "exclude_bias_and_norm": self.exclude_bias_and_norm,
            }
        )
        return config
