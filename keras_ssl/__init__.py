"""keras_ssl: self-supervised visual representation learning for Keras 3.

One code base for the TensorFlow, JAX and PyTorch backends (`KERAS_BACKEND`).
"""

from keras_ssl import (
    augment,
    backbones,
    data,
    datasets,
    eval,
    layers,
    methods,
    ops,
    optimizers,
    visualize,
)
from keras_ssl.methods import BYOL, DINO, DINOv2, MoCoV2, SimCLR
from keras_ssl.trainer import ContrastiveTrainer

__version__ = "0.1.0"

__all__ = [
    "BYOL",
    "ContrastiveTrainer",
    "DINO",
    "DINOv2",
    "MoCoV2",
    "SimCLR",
    "augment",
    "backbones",
    "data",
    "datasets",
    "eval",
    "layers",
    "methods",
    "ops",
    "optimizers",
    "visualize",
]
