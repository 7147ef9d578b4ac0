import keras
import numpy as np
import pytest

import keras_ssl
from keras_ssl.backbones import ConvNet
from tests._support.views import blocky_views


def _model(**kwargs):
    return keras_ssl.SimCLR(
        ConvNet(widths=(8, 16), input_channels=1),
        augmenter=keras_ssl.augment.SimCLRAugment.small_images(16, seed=0),
        projection_dim=8,
        **kwargs,
    )


def _images(n=16):
    return np.random.default_rng(0).uniform(size=(n, 16, 16, 1)).astype("float32")


def test_thirty_steps_on_a_fixed_batch_lower_the_loss():
    views = blocky_views(16)
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(views, batch_size=16, epochs=30, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 30
    assert losses[-1] < losses[0] - 0.5, losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    accuracy = history.history["contrastive_accuracy"]
    assert accuracy[-1] > accuracy[0]


def test_loss_is_nt_xent_of_the_projections():
    images = _images(8)
    views = (images, images[:, ::-1].copy())
    model = _model(temperature=0.2)
    h = [model.backbone(v, training=False) for v in views]
    z = [keras.ops.convert_to_numpy(model.projection_head(x, training=False)) for x in h]
    loss, logs = model.compute_ssl_loss(
        tuple(keras.ops.convert_to_tensor(v) for v in views), training=False
    )
    expected = keras_ssl.ops.nt_xent_loss(z[0], z[1], temperature=0.2)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    assert set(logs) == {"contrastive_accuracy"}


def test_batch_of_one_is_refused():
    model = _model()
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="at least 2 images"):
        model.fit(_images(1), batch_size=1, verbose=0)


def test_save_and_load_restore_identical_outputs(tmp_path):
    model = _model(temperature=0.3)
    model.compile(optimizer=keras_ssl.optimizers.LARS(learning_rate=0.5))
    model.fit(_images(), batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "simclr.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, keras_ssl.SimCLR)
    assert restored.temperature == 0.3
    images = _images(4)
    np.testing.assert_array_equal(
        restored.predict(images, verbose=0), model.predict(images, verbose=0)
    )
    features = model.backbone(images, training=False)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored.projection_head(features, training=False)),
        keras.ops.convert_to_numpy(model.projection_head(features, training=False)),
    )
    assert type(restored.augmenter) is type(model.augmenter)


def test_backbone_alone_saves_and_is_reused(tmp_path):
    model = _model()
    model.compile(optimizer="sgd")
    model.fit(_images(), batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "backbone.keras"
    model.backbone.save(path)
    backbone = keras.saving.load_model(path)
    images = _images(4)
    np.testing.assert_array_equal(
        backbone.predict(images, verbose=0), model.backbone.predict(images, verbose=0)
    )
    # Reused: a classifier on top of the pretrained encoder trains.
    classifier = keras.Sequential([backbone, keras.layers.Dense(3)])
    classifier.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    classifier.fit(_images(8), np.arange(8) % 3, verbose=0)


def test_config_round_trip():
    model = _model(temperature=0.1, hidden_dim=32)
    clone = keras_ssl.SimCLR.from_config(model.get_config())
    assert clone.temperature == 0.1
    assert clone.projection_head.hidden_dim == 32
    assert clone.count_params() == model.count_params()
