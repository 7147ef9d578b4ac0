"""The shared core: a toy method in a few lines, every data source, input checks, state plumbing."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_ssl
from keras_ssl.backbones import ConvNet

BATCH, SIZE = 8, 16


class CosineAlign(keras_ssl.ContrastiveTrainer):
    """A toy method: align the two views' features (cosine), log their mean similarity."""

    metric_names = ("similarity",)

    def compute_ssl_loss(self, views, training=True):
        a, b = self.encode_views(self.backbone, views, training=training)
        a = a / ops.norm(a, axis=1, keepdims=True)
        b = b / ops.norm(b, axis=1, keepdims=True)
        similarity = ops.mean(ops.sum(a * b, axis=1))
        return -similarity, {"similarity": ops.stop_gradient(similarity)}


class StepCounter(keras_ssl.ContrastiveTrainer):
    """Copies the optimizer's step count into a variable after every step."""

    def __init__(self, backbone, **kwargs):
        super().__init__(backbone, **kwargs)
        self.seen_step = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def compute_ssl_loss(self, views, training=True):
        (a,) = self.encode_views(self.backbone, views[:1], training=training)
        return ops.mean(ops.square(a)), {}

    def after_optimizer_step(self):
        self.seen_step.assign(ops.cast(self.optimizer.iterations, "float32"))


def _backbone(channels=1):
    return ConvNet(widths=(4, 8), input_channels=channels)


def _augmenter():
    return keras_ssl.augment.SimCLRAugment.small_images(SIZE, seed=1)


def _images(n=32, channels=1):
    return np.random.default_rng(0).uniform(size=(n, SIZE, SIZE, channels)).astype("float32")


def _fit(model, x, **kwargs):
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model.fit(x, epochs=kwargs.pop("epochs", 1), verbose=0, **kwargs)


def test_toy_method_trains_and_logs_its_metric():
    images = _images()
    views = (images, np.clip(images + 0.05, 0, 1))
    model = CosineAlign(_backbone())
    history = _fit(model, views, batch_size=BATCH, epochs=5)
    assert set(history.history) == {"loss", "similarity"}
    assert history.history["loss"][-1] < history.history["loss"][0]
    np.testing.assert_allclose(history.history["loss"], -np.array(history.history["similarity"]))


def test_after_step_sees_the_live_step_count():
    # On JAX the step is traced once: a schedule that read a frozen value would stay at 1.
    model = StepCounter(_backbone(), augmenter=_augmenter())
    _fit(model, _images(24), batch_size=BATCH, epochs=2)
    assert float(ops.convert_to_numpy(model.seen_step)) == 6.0
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 6


def test_xla_compiled_step_builds_its_optimizer_first():
    # On TensorFlow `jit_compile=True` failed in the first step: the optimizer's slots were
    # made inside the step's control dependencies, which XLA cannot lift variables out of.
    # (PyTorch's `jit_compile` is torch.compile, another matter: its step runs eagerly here.)
    model = keras_ssl.SimCLR(_backbone(), augmenter=_augmenter(), projection_dim=8)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3), jit_compile=keras.backend.backend() != "torch"
    )
    history = model.fit(_images(), batch_size=BATCH, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 32 // BATCH


def test_a_last_batch_too_small_for_the_method_is_refused_from_tf_data():
    # TensorFlow retraces the step for the smaller last batch with an unknown batch size,
    # where the static check cannot see it: a one-image SimCLR batch trained silently.
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(_images(2 * BATCH + 1)).batch(BATCH)
    model = keras_ssl.SimCLR(_backbone(), augmenter=_augmenter(), projection_dim=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    with pytest.raises(Exception, match="SimCLR needs at least 2 images per batch, got 1"):
        model.fit(data, epochs=1, verbose=0)


def test_predict_returns_backbone_features():
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    images = _images(4)
    np.testing.assert_allclose(
        model.predict(images, verbose=0), model.backbone.predict(images, verbose=0), atol=1e-6
    )


def test_validation_data_is_scored_every_epoch():
    # validate within fit: on JAX an evaluate nested in fit, between two epochs' steps
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    history = _fit(model, _images(), batch_size=BATCH, epochs=2, validation_data=_images(4))
    assert len(history.history["val_loss"]) == 2
    assert np.all(np.isfinite(history.history["val_loss"]))


def test_numpy_images_augmented_in_the_step():
    history = _fit(CosineAlign(_backbone(), augmenter=_augmenter()), _images(), batch_size=BATCH)
    assert np.isfinite(history.history["loss"][0])


def test_uint8_and_rank3_grayscale_images():
    images = (np.random.default_rng(0).uniform(size=(16, SIZE, SIZE)) * 255).astype("uint8")
    history = _fit(CosineAlign(_backbone(), augmenter=_augmenter()), images, batch_size=BATCH)
    assert np.isfinite(history.history["loss"][0])


def test_tf_data_of_images_and_of_views():
    import tensorflow as tf

    images = _images()
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    _fit(model, tf.data.Dataset.from_tensor_slices(images).batch(BATCH))
    pipeline_augment = _augmenter()  # its own instance: it runs on TensorFlow inside tf.data
    views = tf.data.Dataset.from_tensor_slices(images).batch(BATCH).map(pipeline_augment)
    history = _fit(CosineAlign(_backbone()), views)
    assert np.isfinite(history.history["loss"][0])


def test_py_dataset():
    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.images = _images()

        def __len__(self):
            return len(self.images) // BATCH

        def __getitem__(self, index):
            return self.images[index * BATCH : (index + 1) * BATCH]

    history = _fit(CosineAlign(_backbone(), augmenter=_augmenter()), Batches())
    assert np.isfinite(history.history["loss"][0])


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        folder = tmp_path / "a" if i % 2 else tmp_path / "b" / "nested"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.uniform(size=(20, 24, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i}.png")
    data = keras_ssl.data.image_folder(tmp_path, image_size=SIZE, batch_size=4)
    model = CosineAlign(_backbone(3), augmenter=_augmenter())
    history = _fit(model, data)
    assert np.isfinite(history.history["loss"][0])


class _ImageItems:
    """A map-style data set whose items are bare images (not `(image,)` tuples)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


@pytest.mark.parametrize("items", ["tuples", "images"])
def test_torch_dataloader(items):
    # On every backend, as Keras takes a DataLoader on each. Keras's JAX and TensorFlow
    # adapters read a batch as a tuple, which split a bare (N, H, W, C) batch into N images.
    import torch

    images = _images()
    tensor = torch.from_numpy(images)
    dataset = torch.utils.data.TensorDataset(tensor) if items == "tuples" else _ImageItems(tensor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH)
    losses = []
    for data, kwargs in ((images, {"batch_size": BATCH, "shuffle": False}), (loader, {})):
        keras.utils.set_random_seed(4)
        model = CosineAlign(_backbone(), augmenter=_augmenter())
        losses.append(_fit(model, data, **kwargs).history["loss"])
        features = model.predict(
            data, verbose=0, **{k: v for k, v in kwargs.items() if k != "shuffle"}
        )
        np.testing.assert_allclose(features, model.predict(images, verbose=0), atol=1e-5)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    assert loader.collate_fn is torch.utils.data.default_collate  # the user's loader is untouched


def test_grain_dataset():
    import grain  # a dev dependency

    images = _images()
    losses = []
    for data, kwargs in (
        (images, {"batch_size": BATCH, "shuffle": False}),
        (grain.MapDataset.source(images).batch(BATCH), {}),
        (grain.MapDataset.source(images).batch(BATCH).to_iter_dataset(), {}),
    ):
        keras.utils.set_random_seed(4)
        model = CosineAlign(_backbone(), augmenter=_augmenter())
        losses.append(_fit(model, data, **kwargs).history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    np.testing.assert_allclose(losses[2], losses[0], rtol=1e-5)


def _flip_views(images):
    """Two views as NumPy arrays: the batch and its mirror image."""
    batch = np.stack(images)
    return [batch, np.ascontiguousarray(batch[:, :, ::-1])]


def test_torch_dataloader_of_premade_views():
    # Views made in the loader (a collate function returning NumPy arrays) on every
    # backend; Keras's JAX and TensorFlow adapters take torch tensors only. (A random
    # augmenter would not do here: TensorFlow's adapter reads two batches ahead for their
    # shapes, so the views of its first epoch come from later draws.)
    import torch

    images = list(_images())
    loader = torch.utils.data.DataLoader(images, batch_size=BATCH, collate_fn=_flip_views)
    batches = [tuple(_flip_views(images[i : i + BATCH])) for i in range(0, len(images), BATCH)]
    losses = []
    for data in (loader, (batch for batch in batches)):
        keras.utils.set_random_seed(4)
        model = CosineAlign(_backbone(), augmenter=None)
        losses.append(_fit(model, data, steps_per_epoch=len(batches)).history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_labels_are_refused():
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="takes images only"):
        model.fit(_images(16), np.zeros(16, "int32"), batch_size=BATCH, verbose=0)


def test_channels_first_is_named():
    model = CosineAlign(_backbone(3), augmenter=_augmenter())
    model.compile(optimizer="sgd")
    channels_first = np.zeros((BATCH, 3, SIZE, SIZE), "float32")
    with pytest.raises(ValueError, match="channels_first"):
        model.fit(channels_first, batch_size=BATCH, verbose=0)


def test_wrong_channel_count_is_named():
    model = CosineAlign(_backbone(3), augmenter=_augmenter())
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="input_channels=1"):
        model.fit(np.zeros((BATCH, SIZE, SIZE, 1), "float32"), batch_size=BATCH, verbose=0)


def test_images_without_augmenter_are_refused():
    model = CosineAlign(_backbone())
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="no augmenter"):
        model.fit(_images(BATCH), batch_size=BATCH, verbose=0)


def test_undeclared_metric_is_refused():
    class Sloppy(CosineAlign):
        metric_names = ()

    model = Sloppy(_backbone(), augmenter=_augmenter())
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="not declared"):
        model.fit(_images(BATCH), batch_size=BATCH, verbose=0)


def test_fit_records_the_run_length_for_schedules():
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    _fit(model, _images(24), batch_size=BATCH, epochs=2)
    assert int(ops.convert_to_numpy(model.total_steps)) == 2 * 3
    # A second fit continues the step count: its schedules run over the steps done and its
    # own, instead of starting at their end.
    model.fit(_images(24), batch_size=BATCH, epochs=1, verbose=0)
    assert int(ops.convert_to_numpy(model.total_steps)) == 6 + 3
    model.fit(_images(24), batch_size=BATCH, epochs=3, initial_epoch=2, verbose=0)
    assert int(ops.convert_to_numpy(model.total_steps)) == 9 + 3
    assert int(ops.convert_to_numpy(model.steps_per_epoch)) == 3


def test_gradient_accumulation_schedules_and_teachers_count_optimizer_steps():
    # Over k = 2 batches: 4 batches an epoch are 2 optimizer steps, the run's length and
    # epochs count those, and the teacher moves only with the student (on every 2nd batch).
    model = keras_ssl.BYOL(_backbone(), augmenter=_augmenter(), projection_dim=8, hidden_dim=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))

    def teacher():  # the EMA's variables (its batch-norm statistics follow its own passes)
        pairs = zip(model.teacher_backbone.weights, model.backbone.weights, strict=True)
        return [ops.convert_to_numpy(t) for t, s in pairs if s.trainable]

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seen = [teacher()]

        def on_train_batch_end(self, batch, logs=None):
            assert self.model is model  # syncs JAX's state into the variables
            self.seen.append(teacher())

    watch = Watch()
    model.fit(_images(32), batch_size=BATCH, epochs=1, callbacks=[watch], verbose=0)
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 2
    assert int(ops.convert_to_numpy(model.total_steps)) == 2
    np.testing.assert_allclose(float(model.epochs_to_steps(1.0)), 2.0)
    moved = [
        any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
        for before, after in zip(watch.seen[:-1], watch.seen[1:], strict=True)
    ]
    assert moved == [False, True, False, True]


def _batches(images, batch_size):
    """A Python generator: data whose length fit() cannot know."""
    for start in range(0, len(images), batch_size):
        yield (images[start : start + batch_size],)


def test_data_of_unknown_length_needs_steps_per_epoch_for_schedules():
    class Scheduled(CosineAlign):
        uses_run_length = True

    model = Scheduled(_backbone(), augmenter=_augmenter())
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(_batches(_images(24), BATCH), epochs=1, verbose=0)
    model.fit(_batches(_images(24), BATCH), epochs=1, steps_per_epoch=3, verbose=0)
    assert int(ops.convert_to_numpy(model.total_steps)) == 3
    # A method without run-length schedules trains on such data as it is.
    plain = CosineAlign(_backbone(), augmenter=_augmenter())
    plain.compile(optimizer=keras.optimizers.SGD(0.1))
    plain.fit(_batches(_images(24), BATCH), epochs=1, verbose=0)
    assert int(ops.convert_to_numpy(plain.optimizer.iterations)) == 3


def test_data_of_unknown_length_counts_only_the_steps_taken():
    import tensorflow as tf

    # Keras's TensorFlow loop ends each such epoch with a call that finds no data, and the
    # optimizer's count went up in it: 2 epochs of 3 batches counted 8 steps.
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    unknown = tf.data.Dataset.from_tensor_slices(_images(24)).filter(lambda x: True)
    model.fit(unknown.batch(BATCH), epochs=2, verbose=0)
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 2 * 3


def test_data_of_unknown_length_logs_the_loss_of_the_steps_taken():
    import tensorflow as tf

    # The same batches with and without a known length: the same epoch loss and the same
    # random state after it (TensorFlow's loop ended such an epoch with a call that counted
    # a step in the loss tracker, 3/4 of the loss, and drew augmentation randomness).
    batches = tf.data.Dataset.from_tensor_slices(_images(24))
    results = []
    for data in (batches, batches.filter(lambda x: True)):
        keras.utils.set_random_seed(4)
        model = CosineAlign(_backbone(), augmenter=_augmenter())
        model.compile(optimizer=keras.optimizers.SGD(0.1))
        loss = model.fit(data.batch(BATCH), epochs=2, verbose=0).history["loss"]
        state = [ops.convert_to_numpy(v) for v in model.augmenter.non_trainable_variables]
        results.append((loss, state))
    (known_loss, known_state), (unknown_loss, unknown_state) = results
    np.testing.assert_allclose(unknown_loss, known_loss, rtol=1e-6)
    for a, b in zip(unknown_state, known_state, strict=True):
        np.testing.assert_array_equal(a, b)


def test_make_teacher_copies_weights_and_takes_no_gradient():
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    teacher = model.make_teacher(model.backbone)
    assert not teacher.trainable and not teacher.trainable_weights
    assert len(teacher.weights) == len(model.backbone.weights)
    for t, s in zip(teacher.weights, model.backbone.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(t), ops.convert_to_numpy(s))
    # An independent copy: moving the student leaves the teacher where it was.
    before = ops.convert_to_numpy(teacher.weights[0])
    model.backbone.weights[0].assign(model.backbone.weights[0] + 1.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(teacher.weights[0]), before)
    head = keras_ssl.layers.ProjectionHead(output_dim=4, hidden_dim=8)
    head.build((None, 8))
    head_copy = model.make_teacher(head, input_shape=(None, 8))
    assert len(head_copy.weights) == len(head.weights)


def test_teacher_normalises_with_batch_statistics_like_its_student():
    # MoCo, BYOL and DINO run the teacher in train mode; a frozen Keras batch norm would
    # silently switch to its (never updated) moving statistics instead.
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    teacher = model.make_teacher(model.backbone)
    images = _images(8)
    np.testing.assert_allclose(
        ops.convert_to_numpy(teacher(images, training=True)),
        ops.convert_to_numpy(model.backbone(images, training=True)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert not teacher.trainable_weights
    assert not {id(v) for v in teacher.weights} & {id(v) for v in model.trainable_variables}


def test_train_on_batch_needs_the_run_length_of_a_schedule():
    # Outside fit the run's length was 0, so every schedule sat at its end from the first
    # step: BYOL's teacher momentum 1.0, a teacher that no longer moved.
    model = keras_ssl.BYOL(_backbone(), augmenter=_augmenter(), hidden_dim=16, projection_dim=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    batch = _images(BATCH)
    with pytest.raises(ValueError, match=r"model.set_run_length\(total_steps, steps_per_epoch\)"):
        model.train_on_batch(batch)
    model.set_run_length(total_steps=10, steps_per_epoch=5)
    teachers = []
    for _ in range(3):
        model.train_on_batch(batch)
        # The EMA's part: the moving batch-norm statistics follow the teacher's own passes.
        averaged = [w for w in model.teacher_backbone.weights if "moving" not in w.path]
        teachers.append([ops.convert_to_numpy(w) for w in averaged])
    for before, after in zip(teachers, teachers[1:], strict=False):
        assert any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True))
    with pytest.raises(ValueError, match="must be >= 1"):
        model.set_run_length(0, 5)


def test_dict_batches_of_images_and_of_views():
    # Keras builds a fresh model by calling it on the first batch: a dict failed there on
    # JAX and PyTorch (TensorFlow builds later).
    images = _images(2 * BATCH)
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    history = _fit(model, {"images": images}, batch_size=BATCH)
    assert np.isfinite(history.history["loss"]).all()
    model = CosineAlign(_backbone(), augmenter=_augmenter())
    history = _fit(model, {"views": [images, images[:, ::-1]]}, batch_size=BATCH)
    assert np.isfinite(history.history["loss"]).all()
