import keras
import numpy as np
import pytest

import keras_ssl
from keras_ssl.callbacks import KNNMonitor
from keras_ssl.eval import extract_features, knn_accuracy


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = (rng.random((n, 16, 16, 1)) * 0.5 + 0.25 * y[:, None, None, None]).astype("float32")
    return x, y


def _model():
    return keras_ssl.SimCLR(
        keras_ssl.backbones.ConvNet(widths=(8, 16), input_channels=1),
        augmenter=keras_ssl.augment.SimCLRAugment.small_images(16, seed=0),
        projection_dim=8,
    )


def test_knn_top1_lands_in_history_and_progress_bar(capsys):
    unlabelled = _data(64, 0)[0]
    train, test = _data(48, 1), _data(24, 2)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    monitor = KNNMonitor(train, test, every_n_epochs=2, k=5, linear_probe={"epochs": 2})
    history = model.fit(unlabelled, batch_size=32, epochs=3, verbose=2, callbacks=[monitor])
    # every 2 epochs, and always after the last one
    assert sorted(monitor.results) == [2, 3]
    assert len(history.history["knn_top1"]) == 2 and len(history.history["linear_top1"]) == 2
    assert len(history.history["loss"]) == 3
    # the last value is the kNN accuracy of the final backbone, computed independently
    expected = knn_accuracy(
        extract_features(model.backbone, train[0]), train[1],
        extract_features(model.backbone, test[0]), test[1], k=5,
    )  # fmt: skip
    assert history.history["knn_top1"][-1] == pytest.approx(expected)
    assert "knn_top1:" in capsys.readouterr().out  # Keras's per-epoch line shows it


def test_teacher_features_and_errors():
    train, test = _data(32, 3), _data(16, 4)
    byol = keras_ssl.BYOL(
        keras_ssl.backbones.ConvNet(widths=(8,), input_channels=1),
        augmenter=keras_ssl.augment.BYOLAugment.small_images(16, seed=0),
        hidden_dim=16, projection_dim=8,
    )  # fmt: skip
    byol.compile(optimizer="adam")
    monitor = KNNMonitor(train, test, use_teacher=True, k=3, evaluate_at_start=True)
    history = byol.fit(_data(32, 5)[0], batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    assert sorted(monitor.results) == [0, 1]
    expected = knn_accuracy(
        extract_features(byol.teacher_backbone, train[0]), train[1],
        extract_features(byol.teacher_backbone, test[0]), test[1], k=3,
    )  # fmt: skip
    assert history.history["teacher_knn_top1"] == [pytest.approx(expected)]

    simclr = _model()
    simclr.compile(optimizer="adam")
    # Refused before training, not at the first evaluation epochs later.
    with pytest.raises(ValueError, match="no EMA teacher"):
        simclr.fit(
            _data(32, 5)[0], batch_size=16, epochs=3, verbose=0,
            callbacks=[KNNMonitor(train, test, use_teacher=True, every_n_epochs=3)],
        )  # fmt: skip
    assert int(keras.ops.convert_to_numpy(simclr.optimizer.iterations)) == 0
    with pytest.raises(ValueError, match="one label per image"):
        KNNMonitor((train[0], train[1][:3]), test)
    with pytest.raises(ValueError, match="every_n_epochs"):
        KNNMonitor(train, test, every_n_epochs=0)


def test_a_diverged_model_logs_nan_and_training_goes_on():
    # NaN features used to score about 1.0 (NaN votes never outrank the true class). A
    # ViT's features are NaN with NaN weights (a ConvNet's ReLU maps NaN to 0).
    train, test = _data(32, 6), _data(16, 7)
    vit = keras_ssl.backbones.ViT(
        patch_size=8, hidden_dim=16, depth=1, num_heads=2, input_channels=1, pretrain_image_size=16
    )
    model = keras_ssl.SimCLR(
        vit, augmenter=keras_ssl.augment.SimCLRAugment.small_images(16, seed=0), projection_dim=8
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    for weight in vit.weights:
        weight.assign(np.full(weight.shape, np.nan, dtype=weight.dtype))
    monitor = KNNMonitor(train, test, k=5, linear_probe={"epochs": 1}, evaluate_at_start=True)
    with pytest.warns(UserWarning, match="NaN or infinite.*diverged"):
        history = model.fit(
            _data(32, 8)[0], batch_size=16, epochs=2, verbose=0, callbacks=[monitor]
        )
    assert len(history.history["loss"]) == 2
    assert sorted(monitor.results) == [0, 1, 2]
    for key in ("knn_top1", "linear_top1"):
        assert len(history.history[key]) == 2 and np.isnan(history.history[key]).all(), key


def test_bad_labels_and_channels_first_images_are_refused_before_training():
    train, test = _data(32, 3), _data(16, 4)
    with pytest.raises(ValueError, match="labelled_train labels must be class indices.*-1"):
        KNNMonitor((train[0], train[1] - 1), test)
    model = _model()
    model.compile(optimizer="adam")
    channels_first = (test[0].transpose(0, 3, 1, 2), test[1])
    with pytest.raises(ValueError, match=r"KNNMonitor got images of shape \(16, 1, 16, 16\)"):
        model.fit(
            _data(32, 5)[0], batch_size=16, epochs=1, verbose=0,
            callbacks=[KNNMonitor(train, channels_first)],
        )  # fmt: skip
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
