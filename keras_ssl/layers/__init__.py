"""Heads and small shared layers."""

from keras_ssl.layers.dino_head import DINOHead
from keras_ssl.layers.projection_head import PredictionHead, ProjectionHead

__all__ = ["DINOHead", "PredictionHead", "ProjectionHead"]
