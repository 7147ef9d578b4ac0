"""One file a method, each a `ContrastiveTrainer` subclass."""

from keras_ssl.methods.byol import BYOL
from keras_ssl.methods.dino import DINO
from keras_ssl.methods.dinov2 import DINOv2
from keras_ssl.methods.moco import MoCoV2
from keras_ssl.methods.simclr import SimCLR

__all__ = ["BYOL", "DINO", "DINOv2", "MoCoV2", "SimCLR"]
