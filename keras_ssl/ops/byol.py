"""The BYOL regression loss: normalised mean squared error between prediction and target."""

from keras import ops

from keras_ssl.ops.normalize import l2_normalize


def byol_loss(prediction, target):
    """BYOL loss (Grill et al. 2020, "Bootstrap Your Own Latent", eq. 2).

    With the online network's prediction `q_theta(z_theta)` (here `p`) and the
    target network's projection `z'_xi` of the other view (here `z'`),

        L = || p / |p| - z' / |z'| ||_2^2 = 2 - 2 * <p, z'> / (|p| |z'|)

    per pair, averaged over the batch. The target is wrapped in
    `ops.stop_gradient` (the target network is updated by EMA only). The
    paper's symmetrised loss is `byol_loss(p1, z2') + byol_loss(p2, z1')`;
    the method calls this function twice. Computed in float32 whatever the
    inputs' dtype.

    Args:
        prediction: `(N, D)` predictions of the online network.
        target: `(N, D)` target projections of the other view.

    Returns:
        A float32 scalar in [0, 4].

    Example:

    >>> import numpy as np
    >>> from keras_ssl.ops import byol_loss
    >>> p = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    >>> round(float(byol_loss(p, p)), 6), round(float(byol_loss(p, -p)), 6)
    (0.0, 4.0)
    """
    prediction = ops.convert_to_tensor(prediction)
    target = ops.convert_to_tensor(target)
    if len(prediction.shape) != 2 or tuple(prediction.shape) != tuple(target.shape):
        raise ValueError(
            "byol_loss expects prediction and target of the same (N, D) shape, got "
            f"{tuple(prediction.shape)} and {tuple(target.shape)}."
        )
    p = ops.cast(prediction, "float32")
    z = ops.cast(ops.stop_gradient(target), "float32")
    p = l2_normalize(p, axis=1)
    z = l2_normalize(z, axis=1)
    return ops.mean(2.0 - 2.0 * ops.sum(p * z, axis=1))
