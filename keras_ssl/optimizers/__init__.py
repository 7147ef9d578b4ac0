"""Optimizers the papers train with."""

from keras_ssl.optimizers.lars import LARS

__all__ = ["LARS"]
