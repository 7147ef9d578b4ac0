"""Keras callbacks for self-supervised pretraining: evaluation and alarms during `fit`
(kNN on a labelled set, collapse, non-finite losses)."""

from keras_ssl.callbacks.collapse_monitor import CollapseMonitor
from keras_ssl.callbacks.knn_monitor import KNNMonitor
from keras_ssl.callbacks.terminate_on_nan import NonFiniteLossWarning, TerminateOnNaN

__all__ = ["CollapseMonitor", "KNNMonitor", "NonFiniteLossWarning", "TerminateOnNaN"]
