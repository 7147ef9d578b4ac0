"""Evaluation of frozen representations: weighted kNN, linear probe (the papers' feature
protocols), feature extraction, collapse measurements."""

from keras_ssl.eval.collapse import (
    distribution_entropy,
    effective_rank,
    normalized_embedding_std,
)
from keras_ssl.eval.features import (
    PROTOCOLS,
    feature_model,
    linear_probe_backbone,
    probe_features,
    vit_block_tokens,
    vit_probe_model,
)
from keras_ssl.eval.knn import knn_accuracy
from keras_ssl.eval.linear import LinearProbeResult, extract_features, linear_probe

__all__ = [
    "PROTOCOLS",
    "LinearProbeResult",
    "distribution_entropy",
    "effective_rank",
    "extract_features",
    "feature_model",
    "knn_accuracy",
    "linear_probe",
    "linear_probe_backbone",
    "normalized_embedding_std",
    "probe_features",
    "vit_block_tokens",
    "vit_probe_model",
]
