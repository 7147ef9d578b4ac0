"""Heads and small shared layers."""

from keras_ssl.layers.projection_head import ProjectionHead

__all__ = ["ProjectionHead"]
