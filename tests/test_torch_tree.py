"""`keras.tree` must not keep what it visits alive after the call (keras-team/keras#23110);
keras_ssl's replacement of two of Keras's PyTorch tree functions must compute what they do."""

import collections
import gc
import weakref

import keras
import numpy as np
import pytest

from keras_ssl import _torch_tree

TORCH = keras.backend.backend() == "torch"
Point = collections.namedtuple("Point", ["y", "x"])


class Leaf:
    """A weak-referenceable leaf that no backend treats as a tree node."""


TREE_OPERATIONS = {
    "traverse top-down": lambda s: keras.tree.traverse(lambda _: None, s),
    "traverse bottom-up": lambda s: keras.tree.traverse(lambda _: None, s, top_down=False),
    "flatten": keras.tree.flatten,
    "flatten_with_path": keras.tree.flatten_with_path,
    "map_structure": lambda s: keras.tree.map_structure(lambda x: x, s),
    "pack_sequence_as": lambda s: keras.tree.pack_sequence_as(s, keras.tree.flatten(s)),
    "lists_to_tuples": keras.tree.lists_to_tuples,
}


@pytest.mark.parametrize("operation", sorted(TREE_OPERATIONS))
def test_tree_operations_release_the_tensors_they_visit(operation):
    tensor, leaf = keras.ops.ones((4, 3)), Leaf()
    watched = [weakref.ref(tensor), weakref.ref(leaf)]
    structures = [tensor, [tensor, leaf], {"b": (tensor,), "a": [leaf, {"c": tensor}]}]
    enabled = gc.isenabled()
    gc.disable()  # only reference counting may free them
    try:
        for structure in structures:
            TREE_OPERATIONS[operation](structure)
        del tensor, leaf, structures, structure
        alive = [ref() is not None for ref in watched]
    finally:
        if enabled:
            gc.enable()
    assert alive == [False, False], f"kept alive after keras.tree {operation}: {alive}"


def _pristine_torchtree():
    pytest.importorskip("torch")
    return _torch_tree.keras_own_module()


def _structures():
    tensor = np.arange(3.0)
    return [
        tensor,
        None,
        [tensor, None, (1, 2.0)],
        {"b": tensor, "a": {"d": 1, "c": [2, 3]}},
        collections.defaultdict(list, {"z": [1], "y": (tensor,)}),
        Point(y=[1, {"k": 2, "j": 3}], x=(4,)),
        ([{"q": 1, "p": None}], {"n": Point(1, 2)}),
    ]


def _mark(node):
    """Replaces leaves with a tag and leaves nodes alone (returns None for them)."""
    return None if isinstance(node, (list, tuple, dict)) else ("leaf", repr(node))


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("index", range(len(_structures())))
def test_replacements_compute_what_keras_does(index):
    keras_impl = _pristine_torchtree()
    structure = _structures()[index]
    assert _same(
        _torch_tree._dict_to_ordered_dict(structure), keras_impl._dict_to_ordered_dict(structure)
    )
    for top_down in (True, False):
        for func in (_mark, lambda _: None, lambda _: keras.tree.MAP_TO_NONE, lambda _: 7):
            ours = _torch_tree.traverse(func, structure, top_down=top_down)
            theirs = keras_impl.traverse(func, structure, top_down=top_down)
            assert _same(ours, theirs), (top_down, ours, theirs)
    visited_ours, visited_theirs = [], []
    _torch_tree.traverse(visited_ours.append, structure, top_down=False)
    keras_impl.traverse(visited_theirs.append, structure, top_down=False)
    assert _same(visited_ours, visited_theirs)


@pytest.mark.skipif(not TORCH, reason="Keras uses its torch tree functions on torch only")
def test_patch_is_installed_where_keras_keeps_traversed_objects(monkeypatch):
    from keras.src.tree import torchtree_impl

    assert torchtree_impl.traverse is _torch_tree.traverse  # `import keras_ssl` patched it
    assert not _torch_tree.retains_traversed()
    keras_impl = _pristine_torchtree()
    monkeypatch.setattr(torchtree_impl, "traverse", keras_impl.traverse)
    monkeypatch.setattr(torchtree_impl, "_dict_to_ordered_dict", keras_impl._dict_to_ordered_dict)
    if not _torch_tree.retains_traversed():
        pytest.skip("this Keras release's own tree functions no longer keep objects alive")
    assert _torch_tree.patch()
    assert torchtree_impl.traverse is _torch_tree.traverse
    assert not _torch_tree.retains_traversed()


@pytest.mark.skipif(TORCH, reason="about the other backends")
def test_patch_leaves_other_backends_alone():
    assert not _torch_tree.patch()
