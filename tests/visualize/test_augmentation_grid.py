import numpy as np
import pytest

from keras_ssl.augment import DINOMultiCrop, SimCLRAugment
from keras_ssl.visualize import augmentation_grid, plot_history


def test_grid_of_every_view(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    views = augmentation_grid(
        DINOMultiCrop.small_images(28, num_local_crops=2, seed=0), images, tmp_path / "dino.png"
    )
    assert [v.shape for v in views] == [(3, 28, 28, 1)] * 2 + [(3, 12, 12, 1)] * 2
    assert all(0.0 <= v.min() and v.max() <= 1.0 for v in views)
    assert (tmp_path / "dino.png").stat().st_size > 1000
    rgb = np.random.default_rng(1).random((2, 16, 16, 3)).astype("float32")
    views = augmentation_grid(SimCLRAugment.small_images(16, seed=0), rgb, tmp_path / "s.png")
    assert len(views) == 2 and views[0].shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="images must be"):
        augmentation_grid(SimCLRAugment.small_images(16), np.zeros((16, 16)), tmp_path / "x.png")


def test_curves_with_sparse_metrics(tmp_path):
    history = {"loss": [3.0, 2.0, 1.5, 1.2], "knn_top1": [0.5, 0.6]}
    path = plot_history(history, tmp_path / "c.png", epochs={"knn_top1": [2, 4]})
    assert path == tmp_path / "c.png" and path.stat().st_size > 1000
