"""keras_ssl: self-supervised visual representation learning for Keras 3.

One code base for the TensorFlow, JAX and PyTorch backends (`KERAS_BACKEND`).
"""

import keras as _keras

if _keras.backend.backend() == "jax":
    from keras_ssl import _xla_cpu

    _xla_cpu.configure()
elif _keras.backend.backend() == "torch":
    from keras_ssl import _torch_tree

    _torch_tree.patch()

from keras_ssl import (
    augment,
    backbones,
    callbacks,
    data,
    datasets,
    distributed,
    eval,
    layers,
    methods,
    ops,
    optimizers,
    presets,
    visualize,
)
from keras_ssl.methods import BYOL, DINO, DINOv2, MoCoV2, SimCLR
from keras_ssl.presets import from_preset, save_to_preset, upload_preset
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
    "callbacks",
    "data",
    "datasets",
    "distributed",
    "eval",
    "from_preset",
    "layers",
    "methods",
    "ops",
    "optimizers",
    "presets",
    "save_to_preset",
    "upload_preset",
    "visualize",
]
