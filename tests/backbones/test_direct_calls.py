"""Functional backbones run their layers' own `call`s, skipping `Layer.__call__`, only where
that changes nothing: the results, gradients and batch-norm statistics of Keras's graph,
and Keras's path wherever a layer needs what `Layer.__call__` does."""

import weakref

import keras
import numpy as np
import pytest
from keras.src.backend.common.variables import AutocastScope

from keras_ssl.backbones import ResNet, ViT, _direct_calls
from tests._support.dtype_policy import global_dtype_policy

VIT = dict(
    patch_size=4,
    hidden_dim=32,
    depth=2,
    num_heads=2,
    pretrain_image_size=32,
    num_register_tokens=1,
    layer_scale_init=0.1,
)
RESNET = dict(block_type="basic", stackwise_num_blocks=(1, 1), stem="cifar", width=8)
BACKBONES = {
    "vit": lambda **kw: ViT(**{**VIT, **kw}),
    "vit_tokens": lambda **kw: ViT(**{**VIT, "output": "tokens", **kw}),
    "resnet": lambda **kw: ResNet(**{**RESNET, **kw}),
    "resnet_last": lambda **kw: ResNet(**{**RESNET, "data_format": "channels_last", **kw}),
    "resnet_map": lambda **kw: ResNet(**{**RESNET, "pooling": None, **kw}),
}


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _images(n=4, h=32, w=32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, 3)).astype("float32")


def _build(name, seed=1, **kwargs):
    model = BACKBONES[name](**kwargs)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(0, 0.2, variable.shape)
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value.astype(variable.dtype))
    return model


@pytest.fixture
def layer_calls(monkeypatch):
    """Names of the layers entered through `Layer.__call__`."""
    names = []
    original = keras.layers.Layer.__call__

    def counting(self, *args, **kwargs):
        names.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting)
    return names


def _through_keras(monkeypatch):
    monkeypatch.setattr(_direct_calls, "allowed", lambda *args: False)


def _assert_same(a, b, atol=1e-6):
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b), strict=True):
        np.testing.assert_allclose(_np(x), _np(y), rtol=0, atol=atol)


def _graph_call(model, x, training):
    """Keras's functional graph: every layer through `Layer.__call__`."""
    functional_call = super(_direct_calls.DirectCalls, model).call
    return functional_call(keras.ops.convert_to_tensor(x), training=training)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_call_skips_layer_dispatch_and_matches_the_graph(layer_calls, name, training):
    model, twin = _build(name), _build(name)
    x = _images(h=32, w=24)
    layer_calls.clear()  # the graph's construction
    direct = model(x, training=training)
    assert layer_calls == [model.name]
    graph = _graph_call(twin, x, training)
    assert len(layer_calls) > 8
    _assert_same(direct, graph)
    # Batch norm in training mode updates its moving statistics the same way.
    _assert_same(model.non_trainable_weights, twin.non_trainable_weights)


def test_vit_methods_match_keras_dispatch(monkeypatch, layer_calls):
    model = _build("vit")
    x = _images(h=16, w=16)
    masks = np.random.default_rng(2).random((4, 16)) < 0.5
    layer_calls.clear()
    runs = [
        lambda: model.forward_features(x, masks=masks),
        lambda: model.get_last_self_attention(x),
        lambda: model.get_intermediate_layers(x, n=2),
    ]
    direct = [run() for run in runs]
    assert layer_calls == []
    _through_keras(monkeypatch)
    for run, expected in zip(runs, direct, strict=True):
        _assert_same(run(), expected)
    assert layer_calls


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_gradients_match_keras_dispatch(monkeypatch, name):
    from tests._support.gradients import gradients

    model = _build(name)
    x = _images(h=24, w=24)
    frozen = [v.value for v in model.non_trainable_variables]

    def loss(*values):
        outputs, _ = model.stateless_call(values, frozen, x, training=True)
        return keras.ops.sum(keras.ops.square(outputs))

    weights = [_np(v) for v in model.trainable_variables]
    direct = gradients(loss, *weights)
    _through_keras(monkeypatch)
    for a, b in zip(gradients(loss, *weights), direct, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_stateless_call_reads_and_returns_the_given_state(name):
    model = _build(name)
    x = _images()
    trainable = [v.value * 0.5 for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    outputs, new_frozen = model.stateless_call(trainable, frozen, x, training=True)
    for variable, value in zip(model.trainable_variables, trainable, strict=True):
        variable.assign(value)
    _assert_same(outputs, model(x, training=True))
    _assert_same(new_frozen, model.non_trainable_variables)


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_outer_autocast_scope_leaves_a_float32_model_in_float32(name):
    # Inside a mixed-precision model's scope each layer's __call__ would reopen its own
    # float32 scope; the direct path opens it once.
    model = _build(name)
    x = _images()
    expected = model(x)
    with AutocastScope("float16"):
        _assert_same(model(x), expected)
        if name == "vit":
            _assert_same(model.forward_features(x)["cls"], expected)


def _different_policy(model):
    model.layers[len(model.layers) // 2].dtype_policy = "float64"


def _rematerialized(model):
    with keras.RematScope(mode="full"):
        remat = keras.layers.ReLU()
    model.layers[-2]._remat_mode = remat._remat_mode


def _torch_hook(model):
    model.layers[3].register_forward_hook(lambda *args: None)


@pytest.mark.parametrize("name", ["vit", "resnet"])
@pytest.mark.parametrize(
    "change", [_different_policy, _rematerialized, _torch_hook], ids=lambda f: f.__name__[1:]
)
def test_layers_that_need_dispatch_get_it(layer_calls, change, name):
    if change is _torch_hook and keras.backend.backend() != "torch":
        pytest.skip("torch module hooks exist on the torch backend only")
    model = _build(name)
    x = _images()
    assert _direct_calls.allowed(model, x)
    change(model)
    layer_calls.clear()
    assert not _direct_calls.allowed(model, x)
    model(x)
    assert len(layer_calls) > 8


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_mixed_precision_takes_keras_dispatch(layer_calls, name):
    with global_dtype_policy("mixed_bfloat16"):
        model = _build(name)
    layer_calls.clear()
    outputs = model(_images())
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"
    assert len(layer_calls) > 8


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_symbolic_inputs_take_keras_dispatch(name):
    model = _build(name)
    inputs = keras.Input((None, None, 3))
    wrapper = keras.Model(inputs, model(inputs))
    x = _images(h=16, w=24)
    _assert_same(wrapper(x), model(x))
    if name == "vit":
        features = model.forward_features(inputs)
        wrapper = keras.Model(inputs, features["patches"])
        _assert_same(wrapper(x), model.forward_features(x)["patches"])


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_a_mask_takes_keras_path(monkeypatch, name):
    from keras.src.models.functional import Functional

    model = _build(name)
    x = keras.ops.convert_to_tensor(_images())
    mask = keras.ops.ones((4, 32, 32), dtype="bool")
    monkeypatch.setattr(Functional, "call", lambda self, inputs, training=None, mask=None: mask)
    assert model.call(x, mask=mask) is mask
    assert model.call(x) is not mask  # no mask: the direct path


class _Log:
    """Weak references to the doublings' outputs, and what the probe saw (an object:
    Keras would copy a list or dict assigned to a layer)."""

    def __init__(self):
        self.outputs, self.alive = [], []


class _Doubling(keras.layers.Layer):
    """`2 x`, keeping a weak reference to its output (no gradient saves it)."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    def call(self, x):
        y = x * 2.0
        self.log.outputs.append(weakref.ref(y))
        return y


class _Probe(keras.layers.Layer):
    """Passes `x` through, noting whether the first doubling's output is still alive."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    def call(self, x):
        self.log.alive.append(self.log.outputs[0]() is not None)
        return x


class _Chain(_direct_calls.DirectCalls, keras.Model):
    pass


def test_each_intermediate_is_dropped_after_its_last_use():
    """x -> 2x -> 4x -> probe: when the probe runs, 2x (read only by the second doubling)
    is gone on the direct path; Keras's own graph keeps it to the end."""
    log = _Log()
    inputs = keras.Input((3,))
    x = _Doubling(log)(_Doubling(log)(inputs))
    model = _Chain(inputs, _Probe(log)(x))
    data = np.ones((2, 3), "float32")
    log.alive.clear()  # the symbolic call's
    keras_path = super(_direct_calls.DirectCalls, model).call
    for call in (model.call, keras_path):
        log.outputs.clear()
        np.testing.assert_allclose(_np(call(data)), 4.0 * data)
    assert log.alive == [False, True], "direct path / Keras's path: was 2x alive at the probe?"
