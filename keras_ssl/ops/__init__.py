"""Backend-agnostic SSL math written in `keras.ops`: losses, EMA, schedules."""

from keras_ssl.ops.byol import byol_loss
from keras_ssl.ops.dino import dino_center_update, dino_loss
from keras_ssl.ops.ema import ema_update
from keras_ssl.ops.ibot import ibot_patch_loss, ibot_patch_loss_from_rows, masked_patch_rows
from keras_ssl.ops.info_nce import info_nce_accuracy, info_nce_loss
from keras_ssl.ops.koleo import koleo_loss
from keras_ssl.ops.masking import block_masks
from keras_ssl.ops.normalize import l2_normalize
from keras_ssl.ops.nt_xent import contrastive_accuracy, nt_xent_loss
from keras_ssl.ops.schedules import (
    cosine_schedule,
    linear_schedule,
    linear_warmup_cosine,
    linspace_schedule,
)
from keras_ssl.ops.sinkhorn_knopp import sinkhorn_knopp

__all__ = [
    "block_masks",
    "byol_loss",
    "contrastive_accuracy",
    "cosine_schedule",
    "dino_center_update",
    "dino_loss",
    "ema_update",
    "ibot_patch_loss",
    "ibot_patch_loss_from_rows",
    "info_nce_accuracy",
    "info_nce_loss",
    "koleo_loss",
    "l2_normalize",
    "linear_schedule",
    "linear_warmup_cosine",
    "linspace_schedule",
    "masked_patch_rows",
    "nt_xent_loss",
    "sinkhorn_knopp",
]
