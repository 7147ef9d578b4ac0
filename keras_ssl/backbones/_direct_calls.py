"""Running a functional backbone's layers through their own `call`.

`Layer.__call__` does more than call `call`: it converts and casts the inputs, resolves
`training` from the call context, opens autocast scopes, and applies quantization,
rematerialization, a distribution's output layouts and torch module hooks. It costs
about 0.1 ms a layer call on PyTorch, where nothing is compiled, and keeps a larger
working set between the calls. A ViT-Tiny backbone's three passes in a DINO step, two
runs of `tools/measure_backbone_passes.py vit` (2 cores): 3.18 and 3.08 s through Keras's
graph, 3.07 and 3.01 s with direct calls, 3.02 and 2.94 s in timm.

In a model of one float dtype (no mixed precision) whose layers share its dtype policy
and use none of the rest, what is left of that work is the inputs' cast, one autocast
scope and passing `training` on, which `run_graph` does once per call. Everything else
(symbolic calls, masked inputs, mixed precision, quantized, rematerialized or hooked
layers, a Keras distribution) keeps Keras's path.
"""

import contextlib
import functools

import keras
from keras import ops
from keras.src.backend.common.variables import AutocastScope


def allowed(model, inputs, layers=None):
    """Whether `model` may run `layers` (default: all of its layers) on `inputs`
    through the layers' own `call`."""
    if any(keras.backend.is_keras_tensor(x) for x in keras.tree.flatten(inputs)):
        return False
    policy = model.dtype_policy
    if (
        policy.compute_dtype != policy.variable_dtype
        or policy.quantization_mode is not None
        or keras.distribution.distribution() is not None
    ):
        return False
    torch = keras.backend.backend() == "torch"
    for layer in model.layers if layers is None else layers:
        if (
            layer.dtype_policy.name != policy.name
            or getattr(layer, "_remat_mode", None) is not None
            or (torch and (layer._forward_hooks or layer._forward_pre_hooks))
        ):
            return False
    return True


def _cast_inputs(model, x):
    """`x` as a tensor, floating point cast to the model's compute dtype."""
    x = ops.convert_to_tensor(x)
    if keras.backend.is_float_dtype(x.dtype):
        return ops.cast(x, model.compute_dtype)
    return x


def _autocast_scope(model):
    """The scope each layer's `__call__` would open, inside an outer model's scope too."""
    return AutocastScope(model.compute_dtype)


def run_graph(model, inputs, training=None):
    """`Functional.call` of `model` with each layer's own `call` (see the module).

    Only where `allowed(model, inputs)`; `training` goes to every layer that takes it.
    """
    inputs = [_cast_inputs(model, x) for x in model._standardize_inputs(inputs)]

    def operation_fn(operation):
        call = operation.call
        if training is None or "training" not in getattr(
            operation, "call_signature_parameters", ()
        ):
            return call
        return lambda *args, **kwargs: call(*args, **{**kwargs, "training": training})

    with _autocast_scope(model):
        return _run_releasing(model, inputs, operation_fn)


def _run_releasing(model, inputs, operation_fn):
    """Keras's `Function._run_through_graph`, dropping each tensor after its last use.

    Keras's own keeps every layer's output until the graph ends. Run eagerly (PyTorch),
    that holds all intermediates of a pass that records no gradient (a teacher's): a
    BYOL ResNet-18 step at batch 256 peaked at 8.2 GB during its forward pass, 4.0 GB
    after it. Compiled graphs (JAX, TensorFlow) are unaffected either way.
    """
    values = {id(x): y for x, y in zip(model.inputs, inputs, strict=True)}
    for node, released in model._release_schedule:
        args, kwargs = node.arguments.fill_in(values)
        outputs = operation_fn(model._get_operation_for_node(node))(*args, **kwargs)
        for x, y in zip(node.outputs, keras.tree.flatten(outputs), strict=True):
            values[id(x)] = y
        for key in released:
            del values[key]
    outputs = [values[id(x)] for x in model.outputs]
    return keras.tree.pack_sequence_as(model._outputs_struct, outputs)


def release_schedule(model):
    """The nodes `Function._run_through_graph` computes, in its order, each with the ids
    of the tensors that no later node and no output reads."""
    available = {id(x) for x in model.inputs}
    nodes = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            if any(id(x) not in available for x in node.input_tensors):
                continue  # not computable from the inputs, as Keras skips it
            nodes.append(node)
            available.update(id(x) for x in node.outputs)
    last_use = {}
    for index, node in enumerate(nodes):
        for x in node.input_tensors:
            last_use[id(x)] = index
    for x in model.outputs:
        last_use.pop(id(x), None)
    released = [[] for _ in nodes]
    for key, index in last_use.items():
        released[index].append(key)
    return list(zip(nodes, released, strict=True))


@contextlib.contextmanager
def named_layers(model, inputs):
    """Yields `(layer, inputs)` for code that runs `model`'s layers by hand.

    `layer(name)` is the layer's own `call` and `inputs` are cast where
    `allowed(model, inputs)` (inside the autocast scope a layer call would open), and
    the layer itself, with `inputs` unchanged, where not.
    """
    layers = model._layers_by_name
    if not allowed(model, inputs, layers.values()):
        yield layers.__getitem__, inputs
        return
    with _autocast_scope(model):
        yield (lambda name: layers[name].call), _cast_inputs(model, inputs)


class DirectCalls:
    """Mixin for a functional `keras.Model`: `call` takes `run_graph` where allowed.

    A `mask` goes through Keras's functional path, which applies it to the inputs.
    """

    @functools.cached_property
    def _layers_by_name(self):
        # A cached property is stored in the instance's __dict__, out of Keras's tracking.
        return {layer.name: layer for layer in self.layers}

    @functools.cached_property
    def _release_schedule(self):
        return release_schedule(self)

    def call(self, inputs, training=None, mask=None):
        if mask is None and allowed(self, inputs, self._layers_by_name.values()):
            return run_graph(self, inputs, training)
        return super().call(inputs, training=training, mask=mask)
