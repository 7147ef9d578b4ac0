"""Keras's PyTorch tree utilities without the reference cycle that keeps tensors alive.

On the torch backend Keras's `keras.tree` (`keras/src/tree/torchtree_impl.py`, up to at
least Keras 3.15.1) flattens one level of a structure with
`torch.utils._pytree.tree_flatten(structure, is_leaf=lambda x: x is not structure)`.
torch's `tree_flatten` recurses through a nested function that refers to itself, a
reference cycle, and that cycle holds the `is_leaf` lambda, which holds `structure`. So
every tensor (and list of tensors) that passes through `keras.tree.flatten`,
`traverse` or `pack_sequence_as`, as every layer call's inputs and outputs do, stays
alive until Python's cyclic garbage collector runs, not until its last use
(keras-team/keras#23110). In a DINO ViT-Tiny step on the CPU that was 1.5-7 MiB more
resident memory a step, growing until a full collection, and thousands of page faults a
step as fresh memory replaced what the cycles held; on a GPU it is device memory.

`patch()` replaces the two functions of that module with the same algorithm whose
`is_leaf` compares identities (`id(x) != id(structure)`) and holds no reference to the
structure. It does so only where `keras.tree` is seen to keep a traversed object alive
without the collector (`retains_traversed()`), so a Keras release with its own fix is
left alone.
"""

import gc
import importlib.util
import weakref
from collections import defaultdict


class _Probe:
    """A weak-referenceable leaf."""


def retains_traversed():
    """Whether `keras.tree.traverse` leaves what it visited reachable only through garbage
    cycles."""
    import keras

    probe = _Probe()
    alive = weakref.ref(probe)
    enabled = gc.isenabled()
    gc.disable()
    try:
        keras.tree.traverse(lambda _: None, [probe])
        del probe
        return alive() is not None
    finally:
        if enabled:
            gc.enable()


def keras_own_module():
    """A fresh, unpatched copy of Keras's `torchtree_impl` (for comparisons and measurements)."""
    from keras.src.tree import torchtree_impl

    spec = importlib.util.spec_from_file_location("_keras_torchtree", torchtree_impl.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patch():
    """Installs the cycle-free functions on the torch backend where Keras's keep objects
    alive; returns whether it did."""
    import keras

    if keras.backend.backend() != "torch" or not retains_traversed():
        return False
    from keras.src.tree import torchtree_impl

    torchtree_impl._dict_to_ordered_dict = _dict_to_ordered_dict
    torchtree_impl.traverse = traverse
    return True


def _one_level(structure):
    """`structure`'s children and treespec, without descending into the children."""
    from torch.utils import _pytree

    own_id = id(structure)  # an int: the flattening's cycle must not hold the structure
    return _pytree.tree_flatten(structure, is_leaf=lambda x: id(x) != own_id)


def _dict_to_ordered_dict(structure):
    """Keras's `_dict_to_ordered_dict`: dicts (the first found on each path) with their
    keys sorted, as the other tree implementations order them."""
    from torch.utils import _pytree

    if type(structure) is dict:
        return {key: structure[key] for key in sorted(structure)}
    if type(structure) is defaultdict:
        ordered = {key: structure[key] for key in sorted(structure)}
        return defaultdict(structure.default_factory, ordered)
    children, spec = _one_level(structure)
    if spec.num_nodes == 1 and spec.num_leaves == 1:
        return structure
    return _pytree.tree_unflatten([_dict_to_ordered_dict(c) for c in children], spec)


def traverse(func, structure, top_down=True):
    """Keras's `torchtree_impl.traverse` (see `keras.tree.traverse`)."""
    from torch.utils import _pytree

    def traverse_children(node):
        children, spec = _one_level(node)
        if spec.num_nodes == 1 and spec.num_leaves == 1:
            return node
        return _pytree.tree_unflatten(
            [traverse(func, c, top_down=top_down) for c in children], spec
        )

    structure = _dict_to_ordered_dict(structure)
    if top_down:
        result = func(structure)
        if result is None:
            return traverse_children(structure)
    else:
        traversed = traverse_children(structure)
        result = func(traversed)
        if result is None:
            return traversed
    if isinstance(result, type) and result.__name__ == "MAP_TO_NONE":
        return None
    return result
