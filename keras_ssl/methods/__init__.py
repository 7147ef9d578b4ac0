"""One file a method, each a `ContrastiveTrainer` subclass."""

from keras_ssl.methods.simclr import SimCLR

__all__ = ["SimCLR"]
