"""`ContrastiveTrainer`: the one base class every self-supervised method subclasses."""

import contextlib
import os

import keras
from keras import ops

from keras_ssl.augment._base import to_unit_float
from keras_ssl.ops.ema import ema_update
from keras_ssl.trainer._input_checks import (
    check_crop_sizes,
    check_fit_data,
    check_patch_size,
    empty_data_error,
)
from keras_ssl.trainer._input_data import with_readable_data
from keras_ssl.trainer._saving import (
    BATCH_COUNTER_KEY,
    VERSION_KEY,
    check_config_version,
    current_version,
    load_seed_states,
    reraise_corrupt_file_errors,
    save_seed_states,
    split_seed_states,
)
from keras_ssl.trainer._uint16_inputs import uint16_arrays_to_unit_float

if keras.backend.backend() == "tensorflow":
    from keras_ssl.trainer._tensorflow import BackendStep
elif keras.backend.backend() == "jax":
    from keras_ssl.trainer._jax import BackendStep
elif keras.backend.backend() == "torch":
    from keras_ssl.trainer._torch import BackendStep
else:
    raise ImportError(
        "keras_ssl supports the tensorflow, jax and torch backends, not "
        f"{keras.backend.backend()!r}. Set KERAS_BACKEND to one of them."
    )


@keras.saving.register_keras_serializable(package="keras_ssl")
class ContrastiveTrainer(BackendStep, keras.Model):
    """Base class of the self-supervised methods: a `keras.Model` you `compile` and `fit`.

    The trainer owns everything that is the same for every method: turning a
    batch into views (augmenting images inside the train step, or taking
    views made by the data pipeline), validating the input, computing
    gradients and applying the optimizer on each backend (`tf.GradientTape`,
    `jax.value_and_grad` with stateless variables, torch autograd), and the
    metrics. A method subclasses it and writes, with `keras.ops` only:

    - `compute_ssl_loss(views, training)`: views -> embeddings -> loss;
      returns `(loss, logs)` where `logs` maps metric names (listed in the
      class attribute `metric_names`) to scalars. Non-gradient state that
      depends on the forward pass (a queue, a centre) is `assign`ed here.
    - `after_optimizer_step()`: optional, state updated after the weights
      moved (EMA teachers). Runs without gradients.
    - `uses_run_length = True` where the method's schedules read the run's
      length (`schedule_length`, `epochs_to_steps`): `fit` then refuses data
      whose length it cannot know, unless `steps_per_epoch` is given.

    Calling the model on images returns the backbone's features (a tuple of
    them for a tuple of views), so `model.predict(images)` gives the
    representation.

    Args:
        backbone: a `keras.Model` mapping `(N, H, W, C)` images to `(N, D)`
            features; it needs an `output_dim` attribute or a static output
            shape.
        augmenter: a layer mapping a batch of images to a tuple of views,
            e.g. `keras_ssl.augment.SimCLRAugment`. `None` means the data
            pipeline already yields the views as a tuple.

    Data: `fit` takes batches of images `(N, H, W, C)` (float in [0, 1], or
    uint8 which is scaled to [0, 1]; `(N, H, W)` for one-channel
    backbones), or tuples of pre-made views, each `(N, H, W, C)`. Labels are
    refused: pretraining is unsupervised.

    Example, a new method in a few lines (it predicts one view's features
    from the other's with a cosine loss; no negatives, so it would collapse,
    but it trains):

    ```python
    import keras
    from keras import ops
    import keras_ssl

    class CosineAlign(keras_ssl.ContrastiveTrainer):
        def compute_ssl_loss(self, views, training=True):
            a, b = self.encode_views(self.backbone, views, training=training)
            a = a / ops.norm(a, axis=1, keepdims=True)
            b = b / ops.norm(b, axis=1, keepdims=True)
            return -ops.mean(ops.sum(a * b, axis=1)), {}

    model = CosineAlign(keras_ssl.backbones.ConvNet(input_channels=1),
                        augmenter=keras_ssl.augment.SimCLRAugment.small_images(28))
    model.compile(optimizer="adam")
    ```
    """

    metric_names = ()
    """Names of the scalars `compute_ssl_loss` logs besides `loss`."""
    min_batch_size = 1
    """Smallest batch the method can learn from (2 where negatives come from the batch)."""
    uses_run_length = False
    """Whether the method's schedules read the run's length (`schedule_length`)."""

    def __init__(self, backbone, augmenter=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.Model):
            raise TypeError(
                "`backbone` must be a keras.Model mapping images to features, "
                f"got {type(backbone)}."
            )
        _check_backbone_output(backbone)
        self.backbone = backbone
        self.augmenter = augmenter
        # The length of the run, for schedules (EMA momentum, temperatures): recorded from
        # `fit`'s epochs x steps when training begins, saved with the model so a resumed run
        # continues the same schedule. The position is `batches_trained` (`schedule_step`).
        self.total_steps = self.add_weight(
            name="total_steps", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self.steps_per_epoch = self.add_weight(
            name="steps_per_epoch", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        # Every train step's batch, the steps a loss scale skips included (the optimizer's
        # `iterations` leaves them out), as the official code's `it`. Saved by name.
        self.batches_trained = self.add_weight(
            name="batches_trained", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self._trackers = {
            name: keras.metrics.Mean(name=name) for name in ("loss", *self.metric_names)
        }
        # Methods create and build all their layers in __init__ (the backbone knows its
        # feature width), so the model is complete here: Keras must not try to build it by
        # calling it on a batch of views, and saving never meets an unbuilt model.
        self.built = True

    # ---- what a method writes -------------------------------------------------------------
    def compute_ssl_loss(self, views, training=True):
        """Returns `(loss, logs)` for a tuple of views. Subclasses implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_ssl_loss(views, training)."
        )

    def after_optimizer_step(self):
        """Updates non-gradient state after each optimizer step (EMA teachers). Default: none."""

    def transform_gradients(self, gradients):
        """Gradients of `trainable_variables`, in order, before the optimizer sees them.

        Default: unchanged. DINO keeps the values its `after_optimizer_step` needs here.
        """
        return gradients

    def make_teacher(self, network, input_shape=None, name=None):
        """A frozen copy of `network` (same architecture and weights) for EMA teachers.

        Create teachers after their students, in `__init__`: weights are saved and
        loaded in creation order. The teacher never receives gradients
        (`trainable=False`); update it with `keras_ssl.ops.ema_update` in
        `after_optimizer_step`.

        Args:
            network: the student, a built layer or model.
            input_shape: shape to build the copy with, for layers that are not
                models with an input (heads).
            name: name of the copy (default `"teacher_" + network.name`).
        """
        config = network.get_config()
        config["name"] = name or f"teacher_{network.name}"
        teacher = type(network).from_config(config)
        if not teacher.built:
            if input_shape is None:
                raise ValueError(
                    f"make_teacher needs `input_shape` to build a copy of {network.name!r}."
                )
            teacher.build(input_shape)
        if len(teacher.weights) != len(network.weights):
            raise ValueError(
                f"The copy of {network.name!r} has {len(teacher.weights)} weights, the original "
                f"{len(network.weights)}: its get_config does not describe it fully."
            )
        for target, source in zip(teacher.weights, network.weights, strict=True):
            target.assign(ops.copy(source))  # a copy: on JAX, assign(source) aliases the buffer
        teacher.trainable = False
        # Frozen means "no gradients", not "inference mode": MoCo, BYOL and DINO run their
        # teachers in train mode, normalising with the batch's statistics. Keras runs the batch
        # norm of a non-trainable layer in inference mode, so those layers stay trainable and
        # their variables are frozen one by one instead.
        for layer in teacher._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
                for variable in layer.weights:
                    variable.trainable = False
        return teacher

    def update_teacher(self, teacher, student, momentum):
        """EMA step `teacher <- m * teacher + (1 - m) * student` over the student's parameters.

        Only the parameters are averaged (as MoCo, BYOL and DINO do); the teacher's
        batch-norm statistics come from its own forward passes. Under gradient accumulation
        the teacher moves only on the batches where the optimizer updates the student.
        """
        pairs = [
            (t, s) for t, s in zip(teacher.weights, student.weights, strict=True) if s.trainable
        ]
        accumulation = _accumulation_steps(self.optimizer)
        if accumulation > 1:  # an update on every k-th batch (this one counted)
            batches = ops.cast(self.batches_trained, "int32")
            momentum = ops.where(ops.equal(batches % accumulation, 0), momentum, 1.0)
        ema_update([t for t, _ in pairs], [s for _, s in pairs], momentum)

    def steps_taken(self):
        """Optimizer steps of the run so far (int32): in the forward pass, the index of the
        current step. The batches trained, over `k` under gradient accumulation, with the
        steps a loss scale skipped, as the official code's iteration counter, so that the
        schedules keep to the run's length; the optimizer's `iterations` (which Keras's
        learning-rate schedules read) leaves those out.
        """
        batches = ops.maximum(ops.cast(self.batches_trained, "int32"), 0)
        return batches // _accumulation_steps(self.optimizer)

    def schedule_step(self):
        """Index of the optimizer step just taken (0 for the first), for `after_optimizer_step`."""
        return ops.maximum(self.steps_taken() - 1, 0)

    def schedule_length(self):
        """Total steps of the run (`fit`'s epochs x steps per epoch), at least 1."""
        return ops.maximum(self.total_steps, 1)

    def epochs_to_steps(self, epochs):
        """`epochs` of the current run in optimizer steps (float32), for epoch-based schedules.

        Under gradient accumulation over `k` batches an epoch is `steps_per_epoch / k` steps.
        """
        batches = ops.cast(epochs, "float32") * ops.cast(
            ops.maximum(self.steps_per_epoch, 1), "float32"
        )
        accumulation = _accumulation_steps(self.optimizer)
        return batches / accumulation if accumulation > 1 else batches

    def set_run_length(self, total_steps, steps_per_epoch):
        """Sets the run's length for the schedules, for training outside `fit`
        (`train_on_batch` or a loop of your own); `fit` sets it itself.

        Args:
            total_steps: optimizer steps of the whole run, those taken already included.
            steps_per_epoch: batches per epoch, for the schedules counted in epochs (DINO's
                teacher-temperature warm-up and frozen last layer).

        Example:

        ```python
        import numpy as np
        import keras_ssl

        model = keras_ssl.BYOL(
            keras_ssl.backbones.ConvNet((8,), input_channels=1),
            augmenter=keras_ssl.augment.BYOLAugment.small_images(16, seed=0),
            hidden_dim=16, projection_dim=8,
        )
        model.compile(optimizer="adam")
        batches = np.random.default_rng(0).random((3, 8, 16, 16, 1), "float32")
        epochs = 2
        model.set_run_length(total_steps=epochs * len(batches), steps_per_epoch=len(batches))
        for epoch in range(epochs):
            for batch in batches:
                model.train_on_batch(batch)
        ```
        """
        if int(total_steps) < 1 or int(steps_per_epoch) < 1:
            raise ValueError(
                f"total_steps and steps_per_epoch must be >= 1, got {total_steps} and "
                f"{steps_per_epoch}."
            )
        self.total_steps.assign(int(total_steps))
        self.steps_per_epoch.assign(int(steps_per_epoch))

    def train_on_batch(self, *args, **kwargs):
        if self.uses_run_length and _as_int(self.total_steps) <= _as_int(self.steps_taken()):
            raise ValueError(
                f"{type(self).__name__}'s schedules (EMA momentum, temperatures, weight decay) "
                "run over the whole training run, whose length train_on_batch cannot know: "
                "they would sit at their end values (a teacher that no longer moves). Call "
                "model.set_run_length(total_steps, steps_per_epoch) first (fit does this "
                "itself)."
            )
        return super().train_on_batch(*args, **kwargs)

    def fit(self, *args, callbacks=None, **kwargs):
        data = args[0] if args else kwargs.get("x")
        args, kwargs = with_readable_data(args, kwargs)
        x = args[0] if args else kwargs.get("x")
        batch_size = args[2] if len(args) > 2 else kwargs.get("batch_size")
        check_fit_data(self, x, batch_size, kwargs)
        recorder = _RecordTotalSteps(data)  # the user's data set, which may order the epochs
        # First, so that its `on_train_batch_end` counts a step before another callback raises.
        callbacks = [recorder, *(callbacks or [])]
        try:
            history = super().fit(*args, callbacks=callbacks, **kwargs)
        except BaseException as error:
            with contextlib.suppress(Exception):  # the error that got here is the one to see
                recorder.undo_if_no_step()
            if recorder.batches_run:
                raise
            if isinstance(error, StopIteration) and not recorder.training_began:
                raise empty_data_error() from error  # JAX's first peek at an empty iterator
            if _in_keras_jax_fit(error):  # its epoch loop, once a model has trained, read no batch
                raise empty_data_error() from error
            if (
                isinstance(error, RuntimeError)  # torch's: the model is built on a `None` batch
                and "Unable to automatically build" in str(error)
                and "NoneType" in str(error)
            ):
                raise empty_data_error() from error
            raise
        # TensorFlow runs an empty tf.data set without a word (no step, or not even an epoch).
        epochs = args[3] if len(args) > 3 else kwargs.get("epochs", 1)
        requested = epochs > kwargs.get("initial_epoch", 0) and not any(
            isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks
        )
        # Batches, not optimizer steps: a loss scale skips the steps whose gradients overflow.
        no_step = not history.history or not recorder.batches_run
        if (recorder.epochs_run or requested) and no_step:
            recorder.undo_if_no_step()
            raise empty_data_error()
        return history

    def evaluate(self, *args, **kwargs):
        args, kwargs = with_readable_data(args, kwargs)
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        args, kwargs = with_readable_data(args, kwargs)
        return super().predict(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        if args:  # NumPy uint16 images would become int32 tensors (8-bit values) on torch
            args = (uint16_arrays_to_unit_float(args[0]), *args[1:])
        return super().__call__(*args, **kwargs)

    # ---- shared plumbing ------------------------------------------------------------------
    @property
    def feature_dim(self):
        """Width of the backbone's feature vector."""
        dim = getattr(self.backbone, "output_dim", None)
        return int(dim) if dim is not None else int(self.backbone.output_shape[-1])

    @property
    def image_channels(self):
        return int(self.backbone.input_shape[-1])

    @property
    def metrics(self):
        return list(self._trackers.values())

    def call(self, images, training=False):
        images = _payload_of_dict(images)
        if isinstance(images, (tuple, list)):
            return tuple(self.call(view, training=training) for view in images)
        return self.backbone(self._prepare_images(images), training=training)

    def encode_views(self, encoder, views, training=True):
        """Runs `encoder` on every view, one call per group of views of the same size.

        Views of one resolution are concatenated along the batch axis (so
        batch norm sees them together and the matrix products are larger,
        as in SimCLR's and DINO's code) and split again afterwards; returns
        one output per view, in order.
        """
        groups = {}
        for index, view in enumerate(views):
            groups.setdefault(tuple(view.shape[1:3]), []).append(index)
        outputs = [None] * len(views)
        for indices in groups.values():
            if len(indices) == 1:
                outputs[indices[0]] = encoder(views[indices[0]], training=training)
                continue
            joined = encoder(
                ops.concatenate([views[i] for i in indices], axis=0), training=training
            )
            for i, part in zip(indices, ops.split(joined, len(indices), axis=0), strict=True):
                outputs[i] = part
        return outputs

    def views_from_data(self, data):
        """The tuple of views for one batch of `fit` data (see the class docstring)."""
        data = _payload_of_dict(data)
        # Keras adapters wrap `x` as `(x,)` or `(x, None, None)`; unwrap to the payload.
        while isinstance(data, (tuple, list)):
            data = [d for d in data if d is not None]
            if len(data) == 1:
                data = data[0]
            else:
                nested = any(isinstance(d, (tuple, list, dict)) for d in data)
                if nested or min(len(d.shape) for d in data) < 3:
                    raise ValueError(
                        "fit() received (images, labels)-like batches, but self-supervised "
                        "pretraining takes images only. Drop the labels: pass `x=images`, map "
                        "your tf.data dataset with `lambda x, y: x`, or yield only images from "
                        "your DataLoader / PyDataset. Use labelled data for evaluation "
                        "(keras_ssl.eval) instead."
                    )
                views = tuple(self._prepare_images(v) for v in data)
                for view in views:
                    check_patch_size(tuple(view.shape), self._patch_size())
                return views
        images = self._prepare_images(data)
        check_crop_sizes(tuple(images.shape), self.augmenter, self._patch_size())
        if self.augmenter is None:
            raise ValueError(
                f"{type(self).__name__} got a batch of images but has no augmenter to make views "
                "from it. Pass `augmenter=` (e.g. keras_ssl.augment.SimCLRAugment(image_size)) or "
                "feed a tuple of pre-made views."
            )
        return tuple(self.augmenter(images, training=True))

    def _patch_size(self):
        return getattr(self.backbone, "patch_size", None)  # a ViT's

    def _prepare_images(self, images):
        shape = tuple(images.shape)
        channels = self.image_channels
        if len(shape) == 3 and channels == 1:
            images = ops.expand_dims(images, -1)
            shape = tuple(images.shape)
        if len(shape) != 4:
            raise ValueError(
                f"Expected a batch of images (N, H, W, {channels}) in channels_last order, got "
                f"shape {shape}."
            )
        if shape[-1] != channels:
            if shape[1] == channels:
                raise ValueError(
                    f"Images of shape {shape} look channels_first (N, C, H, W); keras_ssl uses "
                    f"channels_last (N, H, W, C). Transpose them, e.g. "
                    "`images.transpose(0, 2, 3, 1)` or `ops.transpose(images, (0, 2, 3, 1))`."
                )
            raise ValueError(
                f"Images have {shape[-1]} channels but the backbone expects {channels}: "
                f"got shape {shape}. Build the backbone with input_channels={shape[-1]} or "
                "convert the images."
            )
        return to_unit_float(images)

    def _forward_and_loss(self, data, training):
        views = self.views_from_data(data)
        batch_size = views[0].shape[0]
        too_small = (
            f"{type(self).__name__} needs at least {self.min_batch_size} images per batch, "
            "got {}. Increase the batch size, or drop a smaller last batch (tf.data: "
            "`batch(..., drop_remainder=True)`)."
        )
        if batch_size is None:  # a TensorFlow graph retraced for batches of any size
            from keras_ssl.trainer._tensorflow import assert_batch_size_at_least

            views = assert_batch_size_at_least(views, self.min_batch_size, too_small)
        elif batch_size < self.min_batch_size:
            raise ValueError(too_small.format(batch_size))
        loss, logs = self.compute_ssl_loss(views, training=training)
        # A non-finite input pixel makes the loss NaN, whatever the network does with it (XLA
        # on CPU turns NaN into numbers in max-based ops such as ReLU and pooling), so that
        # TerminateOnNaN sees it on every backend; the step's gradients are then zero.
        floating = [
            x
            for x in keras.tree.flatten(data)
            if x is not None and "float" in keras.backend.standardize_dtype(x.dtype)
        ]
        if floating:
            finite = ops.all(ops.stack([ops.all(ops.isfinite(x)) for x in floating]))
            # NaN from the loss itself, not a constant (on CUDA a host copy per step).
            loss = ops.where(finite, loss, ops.stop_gradient(loss) * float("nan"))
        unknown = set(logs) - set(self.metric_names)
        if unknown:
            raise ValueError(
                f"compute_ssl_loss returned logs {sorted(unknown)} that are not declared in "
                f"{type(self).__name__}.metric_names = {self.metric_names}."
            )
        return loss, logs

    def _after_update(self):
        """The end of every train step, after the optimizer's update (every backend)."""
        self.batches_trained.assign_add(ops.ones((), "int32"))
        self.after_optimizer_step()

    def _update_trackers(self, loss, logs):
        self._trackers["loss"].update_state(loss)
        for name, value in logs.items():
            self._trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def load_weights(self, filepath, *args, **kwargs):
        # A compiled model's optimizer is built by its first step, and Keras skips the state of
        # an unbuilt one (with a warning): its step count, which every schedule reads, and its
        # moments. Built first, a checkpoint resumes where it stopped.
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.trainable_variables)
        with reraise_corrupt_file_errors(filepath):
            return super().load_weights(filepath, *args, **kwargs)

    def _indexed_own_variables(self):
        """The own variables saved by index, in Keras's order: all but `batches_trained`."""
        variables = self._trainable_variables + self._non_trainable_variables
        return [v for v in variables if v is not self.batches_trained]

    def save_own_variables(self, store):
        for index, variable in enumerate(self._indexed_own_variables()):
            store[f"{index}"] = variable
        # By name, so files written before it existed keep their layout.
        store[BATCH_COUNTER_KEY] = ops.convert_to_numpy(self.batches_trained)
        save_seed_states(self, store)  # augmentation and mask RNGs: a resumed run continues them

    def load_own_variables(self, store):
        own, seeds = split_seed_states(store)
        batches = own.pop(BATCH_COUNTER_KEY, None)
        variables = self._indexed_own_variables()
        if len(own) != len(variables):
            raise ValueError(
                f"{type(self).__name__} '{self.name}' has {len(variables)} variables of its own "
                f"({[v.name for v in variables]}), the file holds {len(own)}: it was saved from "
                "another method or configuration."
            )
        for index, variable in enumerate(variables):
            variable.assign(own[f"{index}"])
        # Saved before the counter existed: -1 until `fit` derives it (`_RecordTotalSteps`).
        self.batches_trained.assign(-1 if batches is None else batches)
        load_seed_states(self, seeds)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "augmenter": keras.saving.serialize_keras_object(self.augmenter),
                VERSION_KEY: current_version(),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        check_config_version(config, cls.__name__)
        for key in ("backbone", "augmenter"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _check_backbone_output(backbone):
    """Refuses a backbone whose output is not one feature vector per image."""
    try:
        shape = backbone.output_shape
    except (AttributeError, ValueError):  # a subclassed model not built yet: unknown
        return
    if isinstance(shape, list) or len(shape) != 2:
        raise ValueError(
            "`backbone` must map images to one feature vector each, shape (batch, features), "
            f"but its output shape is {shape}. Build it with global pooling (e.g. "
            "keras_ssl.backbones.ResNet18(pooling='avg'), keras.applications.ResNet50("
            "include_top=False, pooling='avg')) or end it with "
            "keras.layers.GlobalAveragePooling2D()."
        )


def _accumulation_steps(optimizer):
    """`gradient_accumulation_steps` of `optimizer` (or of the one a loss scale wraps), or 1."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return int(getattr(optimizer, "gradient_accumulation_steps", None) or 1)


def _payload_of_dict(data):
    """A dict batch's views (a tuple) or images; anything else as it is."""
    if not isinstance(data, dict):
        return data
    if "views" in data:
        return tuple(data["views"])
    if "images" in data:
        return data["images"]
    raise ValueError(f"A dict batch needs an 'images' or a 'views' key, got keys {sorted(data)}.")


def _as_int(variable):
    return int(ops.convert_to_numpy(variable))


def _in_keras_jax_fit(error):
    """Whether `error` is an `UnboundLocalError` of Keras's JAX `fit` itself (it reads its
    last step's logs after an epoch that had none), not of the code it runs."""
    if not isinstance(error, UnboundLocalError) or error.__traceback__ is None:
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    code = frame.tb_frame.f_code
    keras_jax_trainer = os.path.join("keras", "src", "backend", "jax", "trainer.py")
    return code.co_name == "fit" and code.co_filename.endswith(keras_jax_trainer)


class _RecordTotalSteps(keras.callbacks.Callback):
    """Stores the run's length and its steps per epoch in the model, counts the epochs and
    batches that ran, and tells the data each epoch's number (`set_epoch`).

    The run's length is the steps taken before this `fit` plus the steps it has left:
    `batches_trained + steps x (epochs - first epoch)` (under gradient accumulation over `k`
    batches, divided by `k`), the steps a loss scale skipped included. It is taken at the
    first epoch this `fit` runs, after `initial_epoch` or `BackupAndRestore` has placed it,
    so a resumed run keeps the length of the run it resumes, and a second `fit` extends the
    schedules over its own steps instead of finding them at their end. A `fit` that ends or
    fails before its first batch has run puts them back (`undo_if_no_step`).
    """

    training_began = False
    epochs_run = 0
    batches_run = 0
    _replaced = None  # (total_steps, steps_per_epoch) before the first epoch set them

    def __init__(self, data=None):
        super().__init__()
        # What orders the data by epoch: `image_folder`'s data set, a torch DistributedSampler.
        self._epoch_setters = [
            target.set_epoch
            for target in (data, getattr(data, "sampler", None))
            if callable(getattr(target, "set_epoch", None))
        ]

    def _run_length(self):
        return self.model.total_steps, self.model.steps_per_epoch

    def _step_counter(self):
        model = self.model
        if _as_int(model.batches_trained) < 0:  # loaded from a file saved before the counter
            # The optimizer's own counter: the batches, under gradient accumulation too.
            optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
            model.batches_trained.assign(_as_int(optimizer._iterations))
        return model.batches_trained

    def undo_if_no_step(self):
        """Puts back the run's length this `fit` replaced, if no batch ran."""
        if self.batches_run or self._replaced is None:
            return
        for variable, value in zip(self._run_length(), self._replaced, strict=True):
            variable.assign(value)

    def on_train_begin(self, logs=None):
        self.training_began = True

    def on_epoch_begin(self, epoch, logs=None):
        for set_epoch in self._epoch_setters:
            set_epoch(epoch)  # the epoch's order, also in a run resumed at `epoch`
        self.epochs_run += 1
        if self.epochs_run > 1:
            return
        model = self.model
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        self._replaced = tuple(_as_int(v) for v in self._run_length())
        batches_done = _as_int(self._step_counter())
        accumulation = _accumulation_steps(model.optimizer)
        if steps and epochs:
            # In optimizer steps: one every `k` batches under gradient accumulation.
            batches = batches_done + int(steps) * (int(epochs) - epoch)
            model.total_steps.assign(batches // accumulation)
            model.steps_per_epoch.assign(int(steps))
        elif model.uses_run_length and _as_int(model.total_steps) <= batches_done // accumulation:
            raise ValueError(
                f"{type(model).__name__}'s schedules (EMA momentum, temperatures, weight decay) "
                "run over the whole training run, and fit() cannot tell its length from this "
                "data (a generator, or a tf.data set whose cardinality is unknown, e.g. after "
                "filter()). Pass steps_per_epoch= to fit()."
            )

    def on_train_batch_end(self, batch, logs=None):
        self.batches_run += 1
