"""Backend-agnostic SSL math written in `keras.ops`: losses, EMA, schedules."""

from keras_ssl.ops.nt_xent import contrastive_accuracy, nt_xent_loss

__all__ = ["contrastive_accuracy", "nt_xent_loss"]
