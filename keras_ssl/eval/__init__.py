"""Evaluation of frozen representations: weighted kNN, linear probe, feature extraction."""

from keras_ssl.eval.knn import knn_accuracy
from keras_ssl.eval.linear import LinearProbeResult, extract_features, linear_probe

__all__ = ["LinearProbeResult", "extract_features", "knn_accuracy", "linear_probe"]
