"""Optimizers the papers train with."""

from keras_ssl.optimizers.lars import LARS
from keras_ssl.optimizers.layer_decay import vit_layer_decay

__all__ = ["LARS", "vit_layer_decay"]
