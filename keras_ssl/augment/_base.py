"""Private base class for keras_ssl augmentation layers.

This is the ONLY module that imports Keras-private symbols (``DataLayer`` and
``DynamicBackend``); every other module of :mod:`keras_ssl.augment` goes through here.
"""

import contextvars
import json
import numbers
import sys

import keras
import numpy as np
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.layers.preprocessing.data_layer import DataLayer
from keras.src.utils.backend_utils import DynamicBackend, in_tf_graph
from keras.src.utils.jax_utils import is_in_jax_tracing_scope

from keras_ssl.augment._random_streams import (
    current_stream,
    eager_calls,
    next_seed_atomically,
    reseed_for_stream,
)

__all__ = [
    "AugmentationLayer",
    "DataLayer",
    "assert_unit_range_in_graph",
    "check_channel_axis",
    "check_channels_last",
    "config_without_sublayers",
    "current_backend",
    "derive_seed",
    "to_unit_float",
    "unit_range_error",
]


def current_backend():
    """A backend dispatcher (``.numpy``, ``.random``, ``.core`` ...) for the active backend."""
    return DynamicBackend()


def derive_seed(seed, *offsets):
    """Deterministically derives a sub-seed from ``seed`` (``None`` stays ``None``)."""
    if seed is None:
        return None
    value = int(seed)
    for offset in offsets:
        value = (value * 1000003 + 7919 * (int(offset) + 1)) % (2**31 - 1)
    return value


def _is_tf_tensor(x):
    return type(x).__module__.startswith("tensorflow")


def _in_tf_graph_outside_xla():
    """Whether TensorFlow is tracing a graph that XLA does not compile: a `tf.data` function
    (or a plain `tf.function`), not a `jit_compile` train step, where a mutex or an
    assertion would not compile."""
    tf = sys.modules.get("tensorflow")
    if tf is None or tf.executing_eagerly():
        return False
    from tensorflow.python.ops import control_flow_util  # no public equivalent

    return not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _is_eager(inputs):
    """Whether a layer call runs now on concrete values: not traced (a JAX or TensorFlow
    function, a `tf.data` map), not symbolic, not inside a stateless call."""
    if isinstance(inputs, keras.KerasTensor) or in_stateless_scope() or in_tf_graph():
        return False
    return not is_in_jax_tracing_scope(inputs)


def _integer_image_scale(dtype):
    """The divisor that maps integer images of ``dtype`` to [0, 1]: 65535 for ``uint16``,
    255 for every other integer dtype (8-bit values); None for a non-integer dtype."""
    dtype = keras.backend.standardize_dtype(dtype)
    if "int" not in dtype:
        return None
    return 65535.0 if dtype == "uint16" else 255.0


def to_unit_float(x):
    """Integer images -> float32 in [0, 1]; anything else (floats included) unchanged.

    ``uint16`` images (e.g. 16-bit PNGs) are divided by 65535, as torchvision's
    ``convert_image_dtype`` scales them; every other integer dtype (``uint8``, ``int32``, ...)
    is taken as 8-bit values in [0, 255] and divided by 255, as torchvision's ``ToTensor``.
    The one conversion of integer images in keras_ssl: it works on NumPy arrays, on TF
    tensors (also inside ``tf.data`` / ``tf.function`` whatever the Keras backend) and on
    backend tensors, traced or not.

    Note that Keras turns a NumPy ``uint16`` array into an ``int32`` tensor on the torch
    backend, which would then be read as 8-bit values: convert NumPy images with this
    function before they become tensors (the augmentation layers and ``Preprocessing`` do).
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return x
    scale = _integer_image_scale(dtype)
    if scale is None:
        return x
    if isinstance(x, np.ndarray):
        return x.astype("float32") / np.float32(scale)
    if _is_tf_tensor(x) or (in_tf_graph() and not isinstance(x, keras.KerasTensor)):
        import tensorflow as tf

        return tf.cast(x, tf.float32) / scale
    return keras.ops.divide(keras.ops.cast(x, "float32"), scale)


# How far float images may stray outside [0, 1] (rounding error) before they are refused.
UNIT_RANGE_TOLERANCE = 1e-3


_HINT_0_255 = (
    "They look like 0-255 pixel values: divide them by 255 (`x / 255.0`) or pass them as "
    "uint8, which is scaled for you."
)
_HINT_NORMALISED = "Pass unnormalised images in [0, 1]: normalise after augmenting, not before."


def _unit_range_message(subject, uses, values, hint):
    return (
        f"Float images must lie in [0, 1] for {subject} ({'; '.join(uses)}), got values in "
        f"{values}. {hint}"
    )


def unit_range_error(low, high, subject, uses):
    """The ``ValueError`` for float images whose values span ``[low, high]`` beyond [0, 1]
    (past rounding error), with the fix; None when they lie in [0, 1] (or are NaN).

    ``subject`` names what needs the range: ``"the augmentation"`` for ``fit``'s check of
    its data, a layer's class name for an augmentation layer's check of its input; ``uses``
    says why (the steps that assume it, e.g. ``["ColorJitter clips to [0, 1]"]``).
    """
    if not (low < -UNIT_RANGE_TOLERANCE or high > 1.0 + UNIT_RANGE_TOLERANCE):
        return None
    hint = _HINT_0_255 if high > 10.0 else _HINT_NORMALISED
    return ValueError(_unit_range_message(subject, uses, f"[{low:g}, {high:g}]", hint))


def assert_unit_range_in_graph(images, subject, uses):
    """``images`` (a float tensor of a TensorFlow graph) behind an assertion that they lie in
    [0, 1], which fails as the graph runs with `unit_range_error`'s message: the check of a
    `tf.data` map, where the values are not known when the layer is called."""
    import tensorflow as tf

    low, high = tf.reduce_min(images), tf.reduce_max(images)
    # Written as `unit_range_error`'s test, so that NaN passes as it does there.
    out_of_range = tf.logical_or(low < -UNIT_RANGE_TOLERANCE, high > 1.0 + UNIT_RANGE_TOLERANCE)

    def message(hint):
        return tf.strings.format(_unit_range_message(subject, uses, "[{}, {}]", hint), (low, high))

    hint_for_the_values = tf.where(high > 10.0, message(_HINT_0_255), message(_HINT_NORMALISED))
    check = tf.debugging.Assert(tf.logical_not(out_of_range), [hint_for_the_values])
    with tf.control_dependencies([check]):
        return tf.identity(images)


def check_channel_axis(shape, layer_name):
    """Refuses a 3-D static ``shape`` whose last dimension is too large for the channels of
    one image (grey, grey + alpha, RGB and RGBA have 1 to 4): a batch of single-channel
    images without a channel axis, ``(N, H, W)`` (as MNIST-like data sets load), which read
    as one ``(H, W, C)`` image would be cropped and blurred across images. Any other shape,
    or one not known statically, passes."""
    try:
        shape = tuple(shape)
    except (TypeError, ValueError):  # a TensorShape of unknown rank
        return
    if len(shape) != 3 or shape[-1] is None or shape[-1] <= 4:
        return
    raise ValueError(
        f"{layer_name} got images of shape {shape}, which look like a batch of "
        "single-channel images without a channel axis (N, H, W): one image (H, W, C) has "
        f"1 to 4 channels, not {shape[-1]}. Add the channel axis: `images[..., None]` "
        "(`keras.ops.expand_dims(images, -1)` for tensors). (For one image with more "
        "channels, add a batch axis instead: `image[None]`.)"
    )


def check_channels_last(shape, layer_name):
    """Refuses images whose static ``shape`` looks channels-first: ``(N, C, H, W)`` (or
    ``(C, H, W)``) with C 1 or 3 and a last dimension that is neither. Any other shape, or
    one not known statically, passes (the layers' own checks see it)."""
    try:
        shape = tuple(shape)
    except (TypeError, ValueError):  # a TensorShape of unknown rank
        return
    if len(shape) not in (3, 4) or shape[-1] is None or shape[-1] in (1, 3):
        return
    if shape[-3] not in (1, 3):
        return
    if len(shape) == 4:
        fix = (
            "channels_last images (N, H, W, C). Transpose them first: "
            "`np.transpose(images, (0, 2, 3, 1))`, or `keras.ops.transpose(images, "
            "(0, 2, 3, 1))` for tensors."
        )
    else:
        fix = (
            "channels_last images (H, W, C). Transpose it first: `np.transpose(image, "
            "(1, 2, 0))`, or `keras.ops.transpose(image, (1, 2, 0))` for a tensor. (A batch "
            "of single-channel images without a channel axis, (N, H, W), needs one: "
            "`images[..., None]`.)"
        )
    layout = "(N, C, H, W)" if len(shape) == 4 else "(C, H, W)"
    raise ValueError(
        f"{layer_name} got images of shape {shape}, which look channels_first {layout}: "
        f"keras_ssl's augmentations take {fix}"
    )


def _host_images(inputs):
    """A Python list of pixel values (nested lists of numbers or NumPy arrays) as one NumPy
    array, so that it is checked like one and its integers are scaled by `to_unit_float`
    like a NumPy integer image's (floats become float32); anything else, a list of tensors
    included, unchanged."""
    if not isinstance(inputs, list):
        return inputs
    first = inputs
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if not isinstance(first, (numbers.Number, np.ndarray, np.generic)):
        return inputs
    array = np.asarray(inputs)
    return array.astype("float32") if array.dtype.kind == "f" else array


def check_probability(name, value):
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value}")
    return value


def _strip_layer_names(config):
    if isinstance(config, dict):
        is_layer_config = "trainable" in config and "name" in config
        return {
            k: _strip_layer_names(v)
            for k, v in config.items()
            if not (is_layer_config and k in ("name", "seed"))
        }
    if isinstance(config, (list, tuple)):
        return [_strip_layer_names(v) for v in config]
    return config


_CONFIG_WITHOUT_SUBLAYERS = contextvars.ContextVar("config_without_sublayers", default=False)


def config_without_sublayers():
    """Whether ``get_config`` is being asked for a layer's own arguments only: a container
    then leaves out the configs of the layers it holds. `_StaticLayer` asks so, as its key
    holds each layer of the tree with its own arguments."""
    return _CONFIG_WITHOUT_SUBLAYERS.get()


def _own_config_key(layer):
    """JSON of ``layer``'s own arguments (names and seeds aside), cached on the layer until
    one of its attributes is set (`AugmentationLayer.__setattr__` drops the cache)."""
    key = layer.__dict__.get("_own_config_json")
    if key is None:
        token = _CONFIG_WITHOUT_SUBLAYERS.set(True)
        try:
            config = layer.get_config()
        finally:
            _CONFIG_WITHOUT_SUBLAYERS.reset(token)
        key = json.dumps(_strip_layer_names(config), sort_keys=True, default=str)
        object.__setattr__(layer, "_own_config_json", key)
    return key


def _tree_key(layer):
    """``(class, own arguments, keys of the layers it runs, in their order)`` for a tree of
    keras_ssl augmentations; None if the tree holds any other layer (a user's layer may keep
    state outside its config)."""
    if not isinstance(layer, AugmentationLayer) or not type(layer).__module__.startswith(
        "keras_ssl.augment"
    ):
        return None
    inner_keys = []
    for inner in layer._sublayers_in_call_order():
        inner_key = _tree_key(inner)
        if inner_key is None:
            return None
        inner_keys.append(inner_key)
    return (type(layer), _own_config_key(layer), tuple(inner_keys))


class _StaticLayer:
    """Hashable handle on a layer for ``jax.jit`` static arguments.

    keras_ssl augmentations with the same class and configuration (names and seeds aside: a
    seed only sets the initial random state, which is passed in) compute the same pure
    function of (random state, images), so they share one compiled function. The key holds
    every layer of the tree, each with its own arguments (a container's without its
    sub-layers', which come as keys of their own): a recipe's config holds only the
    recipe's arguments, so a sub-layer changed after construction (``probability`` set on
    one of its layers) must make a key of its own, or the call would run a function traced
    from the unchanged pipeline. Each layer's part of the key is cached on it until one of
    its attributes is set, so an eager call serialises no config; configuration attributes
    are replaced, never changed in place. Any other layer, or a pipeline holding one, has a
    compiled function of its own.
    """

    def __init__(self, layer):
        self.layer = layer
        try:
            key = _tree_key(layer)
        except Exception:  # an unserialisable layer keeps its own compiled function
            key = None
        self.key = (type(layer), id(layer)) if key is None else key

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _StaticLayer) and self.key == other.key


_JITTED = []

# Whether an augmentation layer's call is running: the layers it calls in turn get images
# it has checked already.
_IN_AUGMENTATION = contextvars.ContextVar("in_augmentation", default=False)


def _jitted_stateless_call():
    if not _JITTED:
        import jax

        def stateless(static, values, images):
            return static.layer.stateless_call([], values, images)

        _JITTED.append(jax.jit(stateless, static_argnums=0))
    return _JITTED[0]


class AugmentationLayer(DataLayer):
    """Base class: per-image random image augmentation usable in ``tf.data`` and in compiled steps.

    Subclasses implement ``augment(images)`` on a 4-D float batch ``(N, H, W, C)`` using
    ``self.backend.*`` ops only, and draw randomness with ``self.uniform(shape)``.
    Integer inputs are converted to float32 in [0, 1] by :func:`to_unit_float` (``uint16``
    divided by 65535, other integer dtypes by 255); 3-D (unbatched) inputs are accepted.
    Images are channels-last: a shape that looks channels-first (``(N, 1 or 3, H, W)`` with
    a last dimension other than 1 or 3) is refused, with the transpose that fixes it, and so
    is a 3-D shape whose last dimension is too large for one image's channels (a batch
    ``(N, H, W)`` without a channel axis), with ``images[..., None]``. Float images must lie
    in [0, 1] for the layers whose math assumes it (``unit_range_uses``, e.g.
    ``ColorJitter`` clips to it; a flip or a blur is linear and takes any range): host data
    (a NumPy array or a Python list) outside it is refused with the fix when the layer is
    called, and images in a TensorFlow graph that XLA does not compile (a ``tf.data`` map)
    by an assertion that fails as the graph runs, with the same message. Backend tensors in
    eager calls and compiled train steps are not checked (it would wait for the device).
    Augmentations are always applied (there is no ``training`` flag): self-supervised
    pipelines call them explicitly.

    Random draws: each call advances the layer's seed state, so sequential calls are
    reproducible from the seed. Calls that run at once (threads, ``tf.data``'s
    ``map(..., num_parallel_calls=...)``) draw distinct parameters, but which call gets
    which draw depends on thread timing: for views reproducible run to run, map
    sequentially or use :func:`keras_ssl.augment.augment_with_rng`.
    """

    # Whether an eager call runs compiled as a whole: a cached ``jax.jit`` on JAX, a
    # ``tf.function`` of the layer on TensorFlow (`_should_jit_eagerly`).
    _jit_eager = True
    # Why this layer's own math needs float images in [0, 1] (None: it takes any range).
    _unit_range_use = None

    def __init__(self, seed=None, **kwargs):
        # Pixels stay float32 through the whole pipeline under a mixed-precision policy (a
        # 16-bit policy would round the images after every stage); the model casts its input.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self._random_stream = current_stream()

    # -- helpers for subclasses ---------------------------------------------------------------
    def uniform(self, shape, minval=0.0, maxval=1.0):
        """Uniform floats in [minval, maxval) from this layer's seed generator (backend-aware).

        In a step that runs once per replica (a `tf.distribute` strategy, torch DDP), where
        every replica holds the same generator state, each replica takes its own slice of
        one draw for all replicas: otherwise image i of every replica's shard would get the
        same crop and colours.
        """
        from keras_ssl.ops.distributed import replica_id, world_size

        generator = self._get_seed_generator(self.backend._backend)
        replicas = world_size()
        if replicas == 1 and self.backend.name == "tensorflow" and _in_tf_graph_outside_xla():
            # Parallel `tf.data` map calls: read and advance the state as one step.
            import tensorflow as tf
            from keras.src.backend.tensorflow.random import _cast_seed

            seed = _cast_seed(next_seed_atomically(generator))
            return tf.random.stateless_uniform(
                shape, seed=seed, minval=minval, maxval=maxval, dtype=tf.float32
            )
        draws = self.backend.random.uniform(
            (replicas, *shape) if replicas > 1 else shape,
            minval=minval,
            maxval=maxval,
            dtype="float32",
            seed=generator,
        )
        if replicas > 1:
            draws = self.backend.numpy.take(draws, replica_id(), axis=0)
        return draws

    def batch_size(self, images):
        return self.backend.core.shape(images)[0]

    def per_image_mask(self, images, probability):
        """Boolean ``(N,)`` mask, True with probability ``probability`` for each image."""
        return self.backend.numpy.less(self.uniform((self.batch_size(images),)), probability)

    def select(self, mask, when_true, when_false):
        """Per-image ``where`` with a ``(N,)`` mask."""
        mask = self.backend.numpy.reshape(mask, (-1, 1, 1, 1))
        return self.backend.numpy.where(mask, when_true, when_false)

    def unit_range_uses(self):
        """Why this layer needs float images in [0, 1]: one phrase per step (its own and its
        sublayers') whose math assumes it, e.g. ``"ColorJitter clips to [0, 1]"``; empty
        when the layer takes images of any range (a flip, a blur, a bilinear crop)."""
        uses = [self._unit_range_use] if self._unit_range_use else []
        for layer in self._sublayers_in_call_order():
            if isinstance(layer, AugmentationLayer):
                uses += [use for use in layer.unit_range_uses() if use not in uses]
        return uses

    def _sublayers_in_call_order(self):
        """The layers this one runs, in the order it runs them (containers override it; the
        jit-cache key of eager JAX calls is built from it)."""
        return list(self._layers)

    # -- Keras plumbing ------------------------------------------------------------------------
    def __setattr__(self, name, value):
        # A changed argument changes this layer's part of the jit-cache key (`_StaticLayer`).
        self.__dict__.pop("_own_config_json", None)
        super().__setattr__(name, value)

    def __call__(self, inputs, **kwargs):
        inputs = _host_images(inputs)
        self._check_images(inputs)
        if self._checks_values_in_graph(inputs):
            inputs = assert_unit_range_in_graph(inputs, type(self).__name__, self.unit_range_uses())
        inputs = to_unit_float(inputs)
        if not _is_eager(inputs):
            token = _IN_AUGMENTATION.set(True)
            try:
                return super().__call__(inputs, **kwargs)
            finally:
                _IN_AUGMENTATION.reset(token)
        with eager_calls():  # draw and advance the seed states as one step (_random_streams.py)
            stream = current_stream()
            if stream != self._random_stream:
                # In a data-loading worker: this layer's and its sublayers' own streams.
                reseed_for_stream(self._layers_with_generators(), stream)
            if self._should_jit_eagerly(inputs, kwargs):
                if keras.backend.backend() == "jax":
                    return self._jax_jit_call(inputs)
                function = self._tf_function()
                if function is not None:
                    return function(inputs)
            return super().__call__(inputs, **kwargs)

    def _layers_with_generators(self):
        """This layer and its sublayers that draw from a seed generator, in a fixed order."""
        return [
            layer
            for layer in self._flatten_layers(include_self=True, recursive=True)
            if isinstance(getattr(layer, "generator", None), keras.random.SeedGenerator)
        ]

    def _check_images(self, inputs):
        """Errors naming the fix for images the layer would silently turn into garbage:
        a channels-first shape or a batch without a channel axis (static shapes, on any
        input), and, for host data only (a NumPy float array; a Python list becomes one),
        values outside [0, 1] where the layer needs them (`unit_range_uses`), which backend
        tensors are not checked for (it would wait for the device in every step)."""
        shape = getattr(inputs, "shape", None)
        if shape is not None:
            check_channels_last(shape, type(self).__name__)
            check_channel_axis(shape, type(self).__name__)
        if isinstance(inputs, np.ndarray) and inputs.dtype.kind == "f" and inputs.size:
            uses = self.unit_range_uses()
            if not uses:
                return
            error = unit_range_error(
                float(np.min(inputs)), float(np.max(inputs)), type(self).__name__, uses
            )
            if error is not None:
                raise error

    def _checks_values_in_graph(self, inputs):
        """Whether this call checks the range of its float images with an assertion in the
        graph: a call (not one from another augmentation layer, which checked them) traced
        in a TensorFlow graph that XLA does not compile, as `tf.data` traces its map, by a
        layer that needs them in [0, 1]."""
        if (
            _IN_AUGMENTATION.get()
            or isinstance(inputs, (np.ndarray, keras.KerasTensor))
            or "float" not in str(getattr(inputs, "dtype", ""))
            or not _in_tf_graph_outside_xla()
        ):
            return False
        return bool(self.unit_range_uses())

    def _should_jit_eagerly(self, inputs, kwargs):
        """Whether this eager call (`__call__` asks for eager ones only) runs compiled as a
        whole, on JAX (`_jax_jit_call`) and on TensorFlow (`_tf_function`): op-by-op
        dispatch is very slow, on TensorFlow ten times the graph's time for a multi-crop
        recipe. `training` is accepted and ignored, as by every augmentation layer."""
        from keras_ssl.ops.distributed import world_size

        if set(kwargs) - {"training"} or not self._jit_eager or self.trainable_variables:
            return False
        if world_size() != 1:
            # Each replica draws its own slice (`uniform`), as the call's replica context
            # says: not something to trace once and keep.
            return False
        backend = keras.backend.backend()
        if backend == "jax":
            return not _is_tf_tensor(inputs)
        if backend != "tensorflow":
            return False
        import tensorflow as tf

        return not tf.distribute.has_strategy()  # mirrored seed states, replica contexts

    def _tf_function(self):
        """This layer's `tf.function` for eager TensorFlow calls, or None for the first
        eager call of the layer as it is configured, which runs op by op: a trace costs a
        few such calls, and many layers are called eagerly once (a preview, a test).
        Traced again after a configuration change (the key of `_StaticLayer`) and, with
        `reduce_retracing`, once for batches of any size. The graph draws and advances the
        seed states as an eager call does, so the views do not depend on which path ran."""
        key = _StaticLayer(self).key
        functions = self.__dict__.get("_tf_functions")
        if functions is None:
            functions = {}
            object.__setattr__(self, "_tf_functions", functions)  # untracked by Keras
        if key not in functions:
            functions[key] = None
            return None
        if functions[key] is None:
            import tensorflow as tf

            layer_call = super().__call__

            def graph_call(images):
                token = _IN_AUGMENTATION.set(True)  # checked by the eager call already
                try:
                    return layer_call(images)
                finally:
                    _IN_AUGMENTATION.reset(token)

            functions[key] = tf.function(graph_call, autograph=False, reduce_retracing=True)
        return functions[key]

    def _jax_jit_call(self, inputs):
        inputs = keras.ops.convert_to_tensor(inputs)
        if not self.built:
            self.build(tuple(inputs.shape))
        variables = self.non_trainable_variables
        outputs, values = _jitted_stateless_call()(
            _StaticLayer(self), [v.value for v in variables], inputs
        )
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
        return outputs

    def call(self, inputs):
        B = self.backend
        x = B.core.cast(B.core.convert_to_tensor(inputs), "float32")
        unbatched = len(x.shape) == 3
        if unbatched:
            x = B.numpy.expand_dims(x, 0)
        if len(x.shape) != 4:
            raise ValueError(f"Expected images of rank 3 or 4, got shape {x.shape}.")
        y = self.augment(x)
        if unbatched:
            y = B.numpy.squeeze(y, 0)
        return B.core.cast(y, self.compute_dtype)

    def augment(self, images):  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self, input_shape=None):
        # No weights; sub-layers (containers) build themselves on their first call.
        self.built = True

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config
