"""Private base class for keras_ssl augmentation layers.

This is the ONLY module that imports Keras-private symbols (``DataLayer`` and
``DynamicBackend``); every other module of :mod:`keras_ssl.augment` goes through here.
"""

import json

import keras
import numpy as np
from keras.src.backend.common.stateless_scope import in_stateless_scope
from keras.src.layers.preprocessing.data_layer import DataLayer
from keras.src.utils.backend_utils import DynamicBackend, in_tf_graph
from keras.src.utils.jax_utils import is_in_jax_tracing_scope

__all__ = [
    "AugmentationLayer",
    "DataLayer",
    "current_backend",
    "derive_seed",
    "to_unit_float",
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


def _fully_described_by_config(layer):
    """Whether `layer` and every layer inside it are keras_ssl augmentations, whose configs
    hold everything they compute with (a user's layer may keep state outside its config)."""
    return all(
        type(inner).__module__.startswith("keras_ssl.augment")
        for inner in layer._flatten_layers(include_self=True, recursive=True)
    )


class _StaticLayer:
    """Hashable handle on a layer for ``jax.jit`` static arguments.

    keras_ssl augmentations with the same class and configuration (names and seeds aside: a
    seed only sets the initial random state, which is passed in) compute the same pure
    function of (random state, images), so they share one compiled function. The key holds
    the class and configuration of every layer in the tree, not only the outer one's: a
    recipe's config holds only the recipe's arguments, so a sub-layer changed after
    construction (``probability`` set on one of its layers) must make a key of its own, or
    the call would run a function traced from the unchanged pipeline. Any other layer, or a
    pipeline holding one, has a compiled function of its own.
    """

    def __init__(self, layer):
        self.layer = layer
        self.key = (type(layer), id(layer))
        if _fully_described_by_config(layer):
            try:
                self.key = tuple(
                    (
                        type(inner),
                        json.dumps(
                            _strip_layer_names(inner.get_config()), sort_keys=True, default=str
                        ),
                    )
                    for inner in layer._flatten_layers(include_self=True, recursive=True)
                )
            except Exception:  # an unserialisable layer keeps its own compiled function
                pass

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _StaticLayer) and self.key == other.key


_JITTED = []


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
    Augmentations are always applied (there is no ``training`` flag): self-supervised
    pipelines call them explicitly.
    """

    # Whether an eager call on the JAX backend runs through a cached ``jax.jit``.
    _jit_eager = True

    def __init__(self, seed=None, **kwargs):
        # Pixels stay float32 through the whole pipeline under a mixed-precision policy (a
        # 16-bit policy would round the images after every stage); the model casts its input.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    # -- helpers for subclasses ---------------------------------------------------------------
    def uniform(self, shape, minval=0.0, maxval=1.0):
        """Uniform floats in [minval, maxval) from this layer's seed generator (backend-aware).

        In a step that runs once per replica (a `tf.distribute` strategy, torch DDP), where
        every replica holds the same generator state, each replica takes its own slice of
        one draw for all replicas: otherwise image i of every replica's shard would get the
        same crop and colours.
        """
        from keras_ssl.ops.distributed import replica_id, world_size

        replicas = world_size()
        draws = self.backend.random.uniform(
            (replicas, *shape) if replicas > 1 else shape,
            minval=minval,
            maxval=maxval,
            dtype="float32",
            seed=self._get_seed_generator(self.backend._backend),
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

    # -- Keras plumbing ------------------------------------------------------------------------
    def __call__(self, inputs, **kwargs):
        inputs = to_unit_float(inputs)
        if self._should_jit_eagerly(inputs, kwargs):
            return self._jax_jit_call(inputs)
        return super().__call__(inputs, **kwargs)

    def _should_jit_eagerly(self, inputs, kwargs):
        """Eager JAX calls are compiled as a whole: op-by-op dispatch is very slow."""
        if kwargs or keras.backend.backend() != "jax" or not self._jit_eager:
            return False
        if self.trainable_variables:
            return False
        if isinstance(inputs, keras.KerasTensor) or in_stateless_scope():
            return False
        if _is_tf_tensor(inputs) or in_tf_graph():
            return False
        return not is_in_jax_tracing_scope(inputs)

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
