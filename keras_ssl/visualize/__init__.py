"""Pictures of a run: training curves, DINO attention maps, augmentation grids (PNG)."""

from keras_ssl.visualize.attention import attention_maps, save_attention_overlays
from keras_ssl.visualize.augmentations import augmentation_grid
from keras_ssl.visualize.curves import plot_history

__all__ = ["attention_maps", "augmentation_grid", "plot_history", "save_attention_overlays"]
