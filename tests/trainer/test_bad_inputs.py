"""The bad-input matrix: one test a row, each checking that the error names the problem and
the fix (or, for rows handled by design, that the input works as documented).

Row -> where it is caught (test):

- wrong rank (N, D) / (N, T, H, W, C) -> trainer, every batch (test_wrong_rank)
- channels-first images -> trainer, every batch (test_channels_first)
- wrong channel count -> trainer, every batch (test_wrong_channel_count)
- any failure (or Ctrl-C) in fit / evaluate / predict -> the model keeps its weights
  (test_a_failed_call_keeps_the_trained_state)
- floats in [0, 255] / normalised floats -> fit, arrays (test_float_images_out_of_range)
- uint8 images -> accepted, scaled to [0, 1] (test_uint8_images_are_scaled)
- uint16 images (arrays, tf.data, PyDataset, generators, grain, torch DataLoader) -> accepted,
  scaled by 65535 (test_uint16_images_are_scaled_by_their_range,
  test_uint16_tensors_from_a_torch_data_loader)
- NaN / Inf pixels in arrays -> fit, arrays (test_nan_and_inf_images)
- NaN in a streamed batch (tf.data) -> TerminateOnNaN names the terms
  (test_nan_in_a_streamed_batch_is_reported)
- batch of 1 for a method that needs 2 -> trainer, every batch (test_batch_of_one)
- a last batch of 1 -> fit, arrays (test_last_batch_of_one)
- a last batch that does not split over the replicas -> fit, arrays
  (test_last_batch_that_does_not_split_over_the_replicas)
- methods that need 2 images -> class attribute (test_minimum_batch_sizes)
- MoCo queue smaller than the batch -> MoCoV2, every batch (test_moco_queue_smaller_than_batch)
- MoCo queue not divisible by the batch -> accepted: a ring buffer
  (test_moco_queue_not_divisible_by_batch)
- images smaller than the crops -> trainer, every batch (test_images_smaller_than_crops)
- empty data set (arrays, tf.data, torch) -> fit (test_empty_data_set)
- labels passed to an unsupervised fit -> trainer, every batch (test_labels_are_refused)
- images but no augmenter -> trainer (test_images_without_augmenter)
- a backbone without global pooling -> the method's constructor (test_unpooled_backbone)
- wrong number of views -> each method (test_wrong_number_of_views)
- config from a newer keras_ssl -> from_config / load_model (test_config_from_a_newer_version)
- corrupt or truncated `.weights.h5` -> ContrastiveTrainer.load_weights (test_corrupt_weights_file)
- corrupt or truncated `.keras` -> keras.saving.load_model, load_weights (test_corrupt_keras_file)

Unknown presets and corrupt preset files are tested with the presets (tests/presets).
"""

import json
import os
import warnings
import zipfile

import keras
import numpy as np
import pytest

import keras_ssl
from keras_ssl.backbones import ConvNet

BATCH, SIZE = 4, 16


def _simclr(channels=1, augmenter="default", **kwargs):
    if augmenter == "default":
        augmenter = keras_ssl.augment.SimCLRAugment.small_images(SIZE, seed=1)
    model = keras_ssl.SimCLR(
        ConvNet(widths=(4, 8), input_channels=channels),
        augmenter=augmenter,
        projection_dim=8,
        hidden_dim=8,
        **kwargs,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def _images(n=2 * BATCH, size=SIZE, channels=1):
    rng = np.random.default_rng(0)
    return rng.uniform(size=(n, size, size, channels)).astype("float32")


def test_wrong_rank():
    model = _simclr()
    with pytest.raises(ValueError, match=r"Expected a batch of images \(N, H, W, 1\)"):
        model.fit(np.zeros((BATCH, SIZE * SIZE), "float32"), batch_size=BATCH, verbose=0)
    with pytest.raises(ValueError, match="channels_last order, got shape"):
        model.fit(np.zeros((BATCH, 2, SIZE, SIZE, 1), "float32"), batch_size=BATCH, verbose=0)


def test_channels_first():
    model = _simclr(channels=3)
    with pytest.raises(ValueError, match=r"look channels_first.*transpose\(0, 2, 3, 1\)"):
        model.fit(np.zeros((BATCH, 3, SIZE, SIZE), "float32"), batch_size=BATCH, verbose=0)


def test_wrong_channel_count():
    model = _simclr(channels=3)
    with pytest.raises(ValueError, match="expects 3.*input_channels=1"):
        model.fit(_images(channels=1), batch_size=BATCH, verbose=0)


def test_a_failed_call_keeps_the_trained_state(monkeypatch):
    # Keras's JAX loops detach the variables' values while they run; a call that failed
    # before its first step returned left a model without weights.
    model = _simclr()
    model.fit(_images(), batch_size=BATCH, verbose=0)

    def values():
        return {
            v.path: keras.ops.convert_to_numpy(v)
            for v in [*model.variables, *model.optimizer.variables]
            # not the random state, which an eager step (torch) advances before it fails
            if not v.path.endswith("seed_generator_state")
        }

    trained = values()
    wrong = _images(channels=3)
    with pytest.raises(ValueError, match="expects 1"):
        model.fit(wrong, batch_size=BATCH, verbose=0)
    with pytest.raises(ValueError, match="expects 1"):
        model.evaluate(wrong, batch_size=BATCH, verbose=0)
    with pytest.raises(ValueError, match="expects 1"):
        model.predict(wrong, batch_size=BATCH, verbose=0)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "compute_ssl_loss", interrupt)  # a new batch size retraces
    with pytest.raises(KeyboardInterrupt):
        model.fit(_images(), batch_size=2 * BATCH, verbose=0)
    monkeypatch.undo()
    kept = values()
    assert sorted(kept) == sorted(trained)
    for path, value in trained.items():
        np.testing.assert_array_equal(kept[path], value, err_msg=path)
    model.fit(_images(), batch_size=BATCH, verbose=0)  # and it trains on
    assert not np.array_equal(
        keras.ops.convert_to_numpy(model.trainable_variables[0]),
        trained[model.trainable_variables[0].path],
    )


def test_float_images_out_of_range():
    model = _simclr()
    with pytest.raises(
        ValueError, match=r"must lie in \[0, 1\] for the augmentation \(.*ColorJitter clips.*divide"
    ):
        model.fit(_images() * 255.0, batch_size=BATCH, verbose=0)
    # ImageNet-normalised floats: normalise after augmenting.
    with pytest.raises(ValueError, match="normalise after augmenting"):
        model.fit((_images() - 0.45) / 0.225, batch_size=BATCH, verbose=0)
    # Pre-made views are the user's business (they may be normalised), but 0-255 warns.
    views_model = _simclr(augmenter=None)
    views = (_images() * 255.0, _images() * 255.0)
    with pytest.warns(UserWarning, match="divide them by 255"):
        views_model.fit(views, batch_size=BATCH, epochs=1, verbose=0)
    # So are images for an augmenter whose steps take any range (a flip, a bilinear crop).
    geometric = keras_ssl.augment.MultiViewAugment(
        [[keras_ssl.augment.RandomHorizontalFlip(seed=0)]] * 2
    )
    with pytest.warns(UserWarning, match=r"The images reach .*divide them by 255"):
        _simclr(augmenter=geometric).fit(_images() * 255.0, batch_size=BATCH, verbose=0)


def test_uint8_images_are_scaled():
    model = _simclr()
    model.fit((_images() * 255).astype("uint8"), batch_size=BATCH, verbose=0)
    # The same pixels as floats in [0, 1] give the same first-step views (scaled, not clipped).
    from keras_ssl.trainer.contrastive_trainer import ContrastiveTrainer

    uint8 = ContrastiveTrainer._prepare_images(model, (_images() * 255).astype("uint8"))
    floats = (_images() * 255).astype("uint8") / np.float32(255)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(uint8), floats, atol=1e-6)


class _Batches(keras.utils.PyDataset):
    def __init__(self, images, **kwargs):
        super().__init__(**kwargs)
        self.images = images

    def __len__(self):
        return len(self.images) // BATCH

    def __getitem__(self, index):
        return self.images[index * BATCH : (index + 1) * BATCH]


def _fit_loss(data, **kwargs):
    keras.utils.set_random_seed(3)
    return _simclr().fit(data, verbose=0, **kwargs).history["loss"]


def test_uint16_images_are_scaled_by_their_range():
    # 16-bit images: [0, 65535] -> [0, 1], on every backend and from every kind of data
    # (Keras's torch backend turns NumPy uint16 into int32 tensors, which fit converts first).
    from keras_ssl.augment._base import to_unit_float
    from keras_ssl.trainer.contrastive_trainer import ContrastiveTrainer

    pixels = (_images() * 255).astype("uint8")
    wide = pixels.astype("uint16") * 257  # 255 -> 65535
    expected = pixels / np.float32(255)
    model = _simclr()
    prepared = ContrastiveTrainer._prepare_images(model, keras.ops.convert_to_tensor(wide))
    if keras.backend.standardize_dtype(keras.ops.convert_to_tensor(wide).dtype) == "uint16":
        np.testing.assert_allclose(keras.ops.convert_to_numpy(prepared), expected, atol=1e-6)

    loss = _fit_loss(expected, batch_size=BATCH, shuffle=False)
    assert len(loss) == 1 and np.isfinite(loss[0])
    # The same values read as 8-bit (what Keras's int32 tensors are) reach 257 after the
    # division by 255: TensorFlow's step (a graph XLA does not compile) asserts the
    # augmentation's [0, 1] range, the other backends train differently.
    if keras.backend.backend() == "tensorflow":
        with pytest.raises(Exception, match=r"must lie in \[0, 1\]"):
            _fit_loss(wide.astype("int32"), batch_size=BATCH, shuffle=False)
    else:
        misread = _fit_loss(wide.astype("int32"), batch_size=BATCH, shuffle=False)
        assert abs(misread[0] - loss[0]) > 1e-3

    import grain
    import tensorflow as tf

    def generator():
        for i in range(len(wide) // BATCH):
            yield (wide[i * BATCH : (i + 1) * BATCH],)

    streams = {
        "array": (wide, {"batch_size": BATCH, "shuffle": False}),
        "tf.data": (tf.data.Dataset.from_tensor_slices(wide).batch(BATCH), {}),
        "PyDataset": (_Batches(wide), {"shuffle": False}),
        "generator": (generator(), {}),
        "grain": (grain.MapDataset.source(wide).batch(BATCH), {}),
    }
    for name, (data, kwargs) in streams.items():
        np.testing.assert_allclose(_fit_loss(data, **kwargs), loss, rtol=1e-5, err_msg=name)
    # Worker threads (Keras's enqueuer may hand their batches over in another order: the
    # two batches here are the same images).
    twice = np.concatenate([wide[:BATCH]] * 2)
    threaded = _fit_loss(_Batches(twice, workers=2), shuffle=False)
    from_floats = _fit_loss(to_unit_float(twice), batch_size=BATCH, shuffle=False)
    np.testing.assert_allclose(threaded, from_floats, rtol=1e-5)

    # fit's validation data, evaluate, predict and a direct call read them the same way.
    validated = {}
    for name, data in (("uint16", wide), ("float", expected)):
        keras.utils.set_random_seed(3)
        history = (
            _simclr()
            .fit(expected, batch_size=BATCH, shuffle=False, validation_data=(data,), verbose=0)
            .history
        )
        validated[name] = history["val_loss"]
    np.testing.assert_allclose(validated["uint16"], validated["float"], rtol=1e-5)
    keras.utils.set_random_seed(3)
    from_uint16 = _simclr().evaluate(wide, batch_size=BATCH, verbose=0)
    keras.utils.set_random_seed(3)
    from_floats = _simclr().evaluate(expected, batch_size=BATCH, verbose=0)
    np.testing.assert_allclose(from_uint16, from_floats, rtol=1e-5)
    features = keras.ops.convert_to_numpy(model(expected))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(wide)), features, atol=1e-5)
    np.testing.assert_allclose(model.predict(wide, verbose=0), features, atol=1e-5)
    np.testing.assert_allclose(model.predict(_Batches(wide), verbose=0), features, atol=1e-5)


def test_uint16_tensors_from_a_torch_data_loader():
    import torch

    pixels = (_images() * 255).astype("uint8")
    expected = pixels / np.float32(255)
    wide = torch.from_numpy(pixels.astype("int32") * 257).to(torch.uint16)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(wide), batch_size=BATCH)
    loss = _fit_loss(expected, batch_size=BATCH, shuffle=False)
    np.testing.assert_allclose(_fit_loss(loader), loss, rtol=1e-5)


def test_nan_and_inf_images():
    model = _simclr()
    images = _images()
    images[5, 3, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"contain NaN values \(the first at index 5\).*Remove"):
        model.fit(images, batch_size=BATCH, verbose=0)
    images[5, 3, 2, 0] = np.inf
    with pytest.raises(ValueError, match="contain Inf values"):
        model.fit(images, batch_size=BATCH, verbose=0)


@pytest.mark.parametrize("premade_views", [True, False])
def test_nan_in_a_streamed_batch_is_reported(premade_views):
    # Streams are not pre-checked (that would read them twice): the step turns a non-finite
    # input into a NaN loss (even where augmentation or XLA's max would hide it) and the
    # guard reports it.
    import tensorflow as tf

    from keras_ssl.callbacks.terminate_on_nan import NonFiniteLossWarning, TerminateOnNaN

    if premade_views:
        data = (_images(3 * BATCH), _images(3 * BATCH))
        data[0][BATCH + 1] = np.nan  # the second batch
        model = _simclr(augmenter=None)
    else:
        data = _images(3 * BATCH)
        data[BATCH + 1] = np.nan
        model = _simclr()
    guard = TerminateOnNaN()
    data = tf.data.Dataset.from_tensor_slices(data).batch(BATCH)
    with pytest.warns(NonFiniteLossWarning, match="Non-finite .*loss at epoch 1, batch 2"):
        history = model.fit(data, epochs=3, callbacks=[guard], verbose=0)
    assert guard.report["batch"] == 1 and guard.report["epoch"] == 0
    assert "loss" in guard.report["terms"]
    assert len(history.history["loss"]) == 1  # stopped in the first epoch


def test_batch_of_one():
    model = _simclr()
    with pytest.raises(ValueError, match="needs at least 2 images per batch, got 1"):
        model.fit(_images(2), batch_size=1, verbose=0)


def test_last_batch_of_one():
    model = _simclr()
    with pytest.raises(ValueError, match=r"last batch of 1 image.*`x\[:8\]`"):
        model.fit(_images(9), batch_size=BATCH, verbose=0)


def test_last_batch_that_does_not_split_over_the_replicas(monkeypatch):
    from keras_ssl.trainer import _input_checks

    model = _simclr()
    assert _input_checks.replicas_per_batch(model) == 1  # one device
    # 2 replicas: a last batch of 2 leaves one image each (SimCLR needs 2), 3 does not split
    monkeypatch.setattr(_input_checks, "replicas_per_batch", lambda model: 2)
    for count in (10, 11):
        with pytest.raises(ValueError, match="splits evenly over its 2 replicas, with at least 2"):
            model.fit(_images(count), batch_size=BATCH, verbose=0)
    model.fit(_images(12), batch_size=BATCH, epochs=1, verbose=0)  # a last batch of 4: fine


def test_minimum_batch_sizes():
    # SimCLR and MoCo draw negatives from the batch, BYOL's heads batch-normalise, DINOv2's
    # KoLeo needs a nearest neighbour; DINO learns from any batch.
    assert keras_ssl.SimCLR.min_batch_size == 2
    assert keras_ssl.MoCoV2.min_batch_size == 2
    assert keras_ssl.BYOL.min_batch_size == 2
    assert keras_ssl.DINOv2.min_batch_size == 2
    assert keras_ssl.DINO.min_batch_size == 1


def _moco(queue_size):
    model = keras_ssl.MoCoV2(
        ConvNet(widths=(4, 8), input_channels=1),
        projection_dim=8,
        hidden_dim=8,
        queue_size=queue_size,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def test_moco_queue_smaller_than_batch():
    model = _moco(queue_size=3)
    with pytest.raises(ValueError, match="smaller than the batch.*queue size of several"):
        model.fit((_images(), _images()), batch_size=BATCH, verbose=0)


def test_moco_queue_not_divisible_by_batch():
    # A ring buffer: 3 steps of 4 keys into 6 slots wrap around mid-batch, no error.
    model = _moco(queue_size=6)
    views = (_images(3 * BATCH), _images(3 * BATCH))
    model.fit(views, batch_size=BATCH, shuffle=False, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.queue_pointer)) == (3 * BATCH) % 6
    queue = keras.ops.convert_to_numpy(model.queue)
    np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-5)


def test_images_smaller_than_crops():
    model = _simclr()
    with pytest.raises(ValueError, match=r"8x8 pixels.*16x16 views.*small_images\(8\)"):
        model.fit(_images(size=8), batch_size=BATCH, verbose=0)


def test_views_smaller_than_the_vit_patch():
    def vit():
        return keras_ssl.backbones.ViT(
            patch_size=8,
            hidden_dim=8,
            depth=1,
            num_heads=2,
            input_channels=1,
            pretrain_image_size=16,
        )

    model = keras_ssl.DINO(vit(), output_dim=8, hidden_dim=8, bottleneck_dim=4)
    model.compile(optimizer="adam")
    views = (_images(BATCH), _images(BATCH), _images(BATCH, size=4), _images(BATCH, size=4))
    with pytest.raises(ValueError, match=r"4x4 pixels.*patches are 8x8"):
        model.fit(views, batch_size=BATCH, verbose=0)
    crops = keras_ssl.augment.DINOMultiCrop(global_size=16, local_size=4, num_local_crops=2)
    model = keras_ssl.DINO(vit(), augmenter=crops, output_dim=8, hidden_dim=8, bottleneck_dim=4)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"4x4 pixels.*local_size"):
        model.fit(_images(BATCH), batch_size=BATCH, verbose=0)


@pytest.mark.parametrize("accumulation", [None, 2])
def test_empty_data_set(accumulation):
    import tensorflow as tf

    # Cardinality unknown to TensorFlow: caught after fit ran no step.
    unknown = tf.data.Dataset.from_tensor_slices(_images()).filter(lambda x: False).batch(BATCH)
    model = _simclr()
    model.compile(optimizer=keras.optimizers.SGD(0.01, gradient_accumulation_steps=accumulation))
    with pytest.raises(ValueError, match="empty data set"):
        model.fit(unknown, verbose=0)  # a new model (JAX's first peek finds no batch)
    model.fit(_images(), batch_size=BATCH, epochs=2, verbose=0)

    def run_state():
        # The optimizer's own counter: under accumulation `iterations` is derived from it.
        counter = model.optimizer._iterations
        variables = (model.total_steps, model.steps_per_epoch, counter)
        return [int(keras.ops.convert_to_numpy(v)) for v in variables]

    trained = run_state()
    empty = np.zeros((0, SIZE, SIZE, 1), "float32")
    with pytest.raises(ValueError, match="empty data set"):
        model.fit(empty, batch_size=BATCH, verbose=0)
    with pytest.raises(ValueError, match="empty data set"):
        model.fit(tf.data.Dataset.from_tensor_slices(empty).batch(BATCH), verbose=0)
    with pytest.raises(ValueError, match="empty data set"):
        model.fit(unknown, verbose=0)  # a trained model (JAX's loop fails differently)
    with pytest.raises(ValueError, match="empty data set"):
        model.fit(unknown, steps_per_epoch=2, verbose=0)  # sets a run length, takes no step
    # A fit that ran no batch keeps the run's length and position (Keras's TensorFlow loop
    # counts an optimizer step on the last set).
    assert run_state() == trained


def test_a_fit_that_fails_after_a_step_keeps_its_run(monkeypatch):
    # A step that ran keeps its count and the new run's length, whatever fails after it.
    model = _simclr()
    model.fit(_images(), batch_size=BATCH, verbose=0)

    def state():
        variables = (model.optimizer.iterations, model.total_steps, model.trainable_variables[0])
        return [keras.ops.convert_to_numpy(v) for v in variables]

    class FailAfterTheFirstBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("a callback failed")

    done, _, weights = state()
    with pytest.raises(RuntimeError, match="a callback failed"):
        model.fit(
            _images(), batch_size=BATCH, epochs=3, callbacks=[FailAfterTheFirstBatch()], verbose=0
        )
    iterations, total_steps, new_weights = state()
    assert iterations == done + 1 and total_steps == done + 2 * 3
    assert not np.array_equal(new_weights, weights)

    # After the update, inside the step: on torch (eager) the update has run; on TensorFlow
    # and JAX the step fails as it is traced, before any update. The count follows the weights.
    def fail():
        raise RuntimeError("after the update")

    monkeypatch.setattr(model, "after_optimizer_step", fail)
    done, _, weights = state()
    with pytest.raises(RuntimeError, match="after the update"):
        model.fit(_images(), batch_size=2 * BATCH, verbose=0)  # a new batch size retraces
    iterations, _, new_weights = state()
    assert iterations == done + (not np.array_equal(new_weights, weights))


def test_an_error_in_the_step_is_not_taken_for_empty_data(monkeypatch):
    model = _simclr()
    model.fit(_images(), batch_size=BATCH, verbose=0)

    def broken(*args, **kwargs):
        raise UnboundLocalError("cannot access local variable 'logs'")  # as Keras's JAX fit

    monkeypatch.setattr(model, "compute_ssl_loss", broken)  # a new batch size retraces
    with pytest.raises(UnboundLocalError):
        model.fit(_images(), batch_size=2 * BATCH, verbose=0)


def test_empty_torch_loader():
    import torch

    model = _simclr()
    loader = torch.utils.data.DataLoader(torch.zeros((0, SIZE, SIZE, 1)), batch_size=BATCH)
    with pytest.raises(ValueError, match="empty data set"):
        model.fit(loader, verbose=0)


def test_labels_are_refused():
    model = _simclr()
    with pytest.raises(ValueError, match="takes images only. Drop the labels"):
        model.fit(_images(), np.zeros(2 * BATCH, "int32"), batch_size=BATCH, verbose=0)


def test_images_without_augmenter():
    model = _simclr(augmenter=None)
    with pytest.raises(ValueError, match="no augmenter.*Pass `augmenter=`"):
        model.fit(_images(), batch_size=BATCH, verbose=0)


def test_unpooled_backbone():
    with pytest.raises(ValueError, match=r"output shape is \(None, None, None, 8\).*pooling='avg'"):
        keras_ssl.SimCLR(ConvNet(widths=(4, 8), input_channels=1, pooling=None))


def test_wrong_number_of_views():
    model = _simclr(augmenter=None)
    with pytest.raises(ValueError, match="exactly 2 views per image, got 3"):
        model.fit((_images(), _images(), _images()), batch_size=BATCH, verbose=0)


def _rewrite_config(path, edit):
    """Rewrites `config.json` inside a `.keras` zip with `edit(config)`."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(entries["config.json"])
    edit(config)
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def test_config_from_a_newer_version(tmp_path):
    model = _simclr()
    config = model.get_config()
    assert config["keras_ssl_version"] == keras_ssl.__version__
    major = int(keras_ssl.__version__.split(".")[0])

    newer = dict(config, keras_ssl_version=f"{major + 1}.0.0")
    with pytest.raises(ValueError, match=r"newer major version.*pip install -U keras-ssl"):
        keras_ssl.SimCLR.from_config(newer)
    with pytest.raises(ValueError, match="unreadable keras_ssl_version"):
        keras_ssl.SimCLR.from_config(dict(config, keras_ssl_version="banana"))
    # Same major, newer minor: read; no version at all (files written before it): read.
    same_major = keras_ssl.SimCLR.from_config(dict(config, keras_ssl_version=f"{major}.99.0"))
    assert same_major.get_config()["keras_ssl_version"] == keras_ssl.__version__
    unversioned = {k: v for k, v in config.items() if k != "keras_ssl_version"}
    assert isinstance(keras_ssl.SimCLR.from_config(unversioned), keras_ssl.SimCLR)

    path = str(tmp_path / "newer.keras")
    model.save(path)

    def bump(saved):
        saved["config"]["keras_ssl_version"] = f"{major + 1}.0.0"

    _rewrite_config(path, bump)
    with pytest.raises(ValueError, match="newer major version"):
        keras.saving.load_model(path)


def _corruptions(data):
    half = len(data) // 2
    return {
        "truncated": data[:half],
        "zeroed": data[: half // 2] + bytes(half) + data[half // 2 + half :],
        "empty": b"",
    }


def test_corrupt_weights_file(tmp_path):
    model = _simclr()
    path = str(tmp_path / "good.weights.h5")
    model.save_weights(path)
    data = open(path, "rb").read()
    for kind, payload in _corruptions(data).items():
        bad = str(tmp_path / f"{kind}.weights.h5")
        with open(bad, "wb") as f:
            f.write(payload)
        with pytest.raises(ValueError, match=rf"{kind}.weights.h5 is truncated or corrupt.*Re-"):
            model.load_weights(bad)
    model.load_weights(path)  # the intact file still loads


def test_corrupt_keras_file(tmp_path):
    model = _simclr()
    path = str(tmp_path / "good.keras")
    model.save(path)
    data = open(path, "rb").read()
    for kind, payload in _corruptions(data).items():
        bad = str(tmp_path / f"{kind}.keras")
        with open(bad, "wb") as f:
            f.write(payload)
        # Keras' own loader refuses the file (its words: not a zip file, bad CRC) ...
        with pytest.raises((ValueError, zipfile.BadZipFile, OSError)):
            keras.saving.load_model(bad)
        # ... and load_weights on a keras_ssl model says what is wrong and what to do.
        with pytest.raises(ValueError, match=rf"{kind}.keras is truncated or corrupt.*Re-"):
            model.load_weights(bad)
    assert os.path.getsize(path) == len(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras.saving.load_model(path)
