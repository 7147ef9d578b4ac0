"""Safe loading: no pickle at run time, NumPy files without pickles, `torch.load` only in
`tools/` with `weights_only=True`, and Keras' safe mode kept on for every config.

The source checks read the code's syntax tree (not its text), so a comment or a docstring
that mentions pickle does not count and an aliased import does.
"""

import ast
import os
import pathlib

import keras
import numpy as np
import pytest

import keras_ssl

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_ssl"
TOOLS = ROOT / "tools"
_PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def _sources(folder):
    """The project's Python files under `folder` (not hidden folders such as local venvs)."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = [
            d for d in subdirectories if not d.startswith(".") and d != "__pycache__"
        ]
        found += [pathlib.Path(directory, name) for name in files if name.endswith(".py")]
    return sorted(found)


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call, name):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_constant(node, value):
    return isinstance(node, ast.Constant) and node.value is value


def _findings(path, runtime):
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        found += [f"imports {name}" for name in names if name in _PICKLING_MODULES]
    for call, name in _calls(tree):
        where = f"line {call.lineno}: {name}(...)"
        if name.endswith("torch.load"):
            if runtime:
                found.append(f"{where}: torch.load in the package")
            elif not _is_constant(_keyword(call, "weights_only"), True):
                found.append(f"{where}: torch.load without weights_only=True")
        if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy"):
            if not _is_constant(_keyword(call, "allow_pickle"), False):
                found.append(f"{where}: np.load without allow_pickle=False")
        if name.split(".")[-1] in ("load_model", "deserialize_keras_object", "from_config"):
            if _is_constant(_keyword(call, "safe_mode"), False):
                found.append(f"{where}: safe_mode=False")
        if name.split(".")[-1] == "enable_unsafe_deserialization":
            found.append(f"{where}: turns Keras' safe mode off")
        if name.split(".")[-1] in ("loads", "load") and name.split(".")[0] in _PICKLING_MODULES:
            found.append(f"{where}: unpickles")
    return [f"{path.relative_to(ROOT)} {finding}" for finding in found]


def test_the_package_never_unpickles():
    assert _sources(PACKAGE)
    findings = [f for path in _sources(PACKAGE) for f in _findings(path, runtime=True)]
    assert not findings, "\n".join(findings)


def test_tools_load_torch_checkpoints_with_weights_only():
    findings = [f for path in _sources(TOOLS) for f in _findings(path, runtime=False)]
    assert not findings, "\n".join(findings)


def test_the_checker_catches_what_it_looks_for(tmp_path):
    # The checks above can fail: a file with every forbidden pattern is flagged line by line.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\n"
        "import numpy as np\n"
        "import torch\n"
        "import keras\n"
        "np.load('x.npy')\n"
        "np.load('x.npy', allow_pickle=True)\n"
        "np.load('x.npz', allow_pickle=False)\n"
        "torch.load('w.pt')\n"
        "keras.saving.load_model('m.keras', safe_mode=False)\n"
        "keras.config.enable_unsafe_deserialization()\n"
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = _findings(bad, runtime=False)
    finally:
        ROOT = saved
    assert len(found) == 6, found
    assert any("imports pickle" in f for f in found)
    assert sum("allow_pickle=False" in f for f in found) == 2
    assert any("weights_only=True" in f for f in found)


def test_load_model_keeps_safe_mode_inside_a_method_config(tmp_path):
    # A backbone holding Python code (a Lambda layer) must not be deserialised from a file:
    # the method's from_config deserialises its backbone inside Keras' safe-mode scope.
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    backbone = keras.Model(inputs, x)
    model = keras_ssl.SimCLR(backbone, projection_dim=4, hidden_dim=4)
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ValueError, match="unsafe|lambda"):
        keras.saving.load_model(path)


def test_embedded_data_set_has_no_pickles():
    from keras_ssl.datasets import fashion_mnist

    with np.load(fashion_mnist.EMBEDDED_PATH, allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
