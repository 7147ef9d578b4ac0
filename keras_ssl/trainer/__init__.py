"""The shared training core.

Per-backend code lives in `_tensorflow.py`, `_jax.py` and `_torch.py`, nowhere else.
"""

from keras_ssl.trainer.contrastive_trainer import ContrastiveTrainer

__all__ = ["ContrastiveTrainer"]
