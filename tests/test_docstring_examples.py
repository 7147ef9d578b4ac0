"""Every ```python example in keras_ssl's docstrings runs, on every backend.

The examples are collected from the docstrings that keras_ssl itself writes (modules,
classes, functions, methods; not those inherited from Keras) and each runs as written, in
a fresh namespace, in a working directory of its own. What an example reads that its user
would have (a folder of photos, a checkpoint, a Hugging Face download) is made in that
directory first (`_FILES`), with random weights and the Hugging Face Hub offline. An
example that changes process-wide state (a distribution) runs in a process of its own,
under `torchrun` on PyTorch as its docstring says.
"""

import functools
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_ssl
from tests.presets._preset_support import cache_card_files, go_offline, safetensors_bytes

_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _documented(module):
    """`(name, docstring)` of the module and of what it defines, methods included."""
    yield module.__name__, module.__doc__
    for obj in vars(module).values():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if obj.__module__ != module.__name__:
            continue
        name = f"{module.__name__}.{obj.__qualname__}"
        yield name, obj.__doc__
        if inspect.isclass(obj):
            for attribute, member in vars(obj).items():
                function = getattr(member, "__func__", member)  # class and static methods
                if isinstance(member, property):
                    function = member.fget
                if inspect.isfunction(function):
                    yield f"{name}.{attribute}", function.__doc__


def collect_examples():
    examples = {}
    for info in pkgutil.walk_packages(keras_ssl.__path__, "keras_ssl."):
        module = importlib.import_module(info.name)
        for name, doc in _documented(module):
            for index, block in enumerate(_BLOCK.findall(inspect.cleandoc(doc or ""))):
                examples[name if index == 0 else f"{name}#{index}"] = block
    return examples


EXAMPLES = collect_examples()


# ---- what the examples read ---------------------------------------------------------------
def _photo_folder(directory, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (directory / "photos" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(directory / "photos" / label / f"{i}.png")


@functools.cache
def _timm_vit_small_bytes():
    """timm's ViT-S/16 with random weights, as timm saves `vit_small_patch16_224.dino`:
    safetensors bytes, made once (three examples read it)."""
    import tempfile

    from tests._support.torch_reference import import_timm

    model = import_timm().create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    state = {k: v.detach().contiguous().numpy() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as directory:
        return safetensors_bytes(state, directory)


def _timm_vit_small_file(directory, monkeypatch):
    (directory / "model.safetensors").write_bytes(_timm_vit_small_bytes())


def _dino_vits16_in_offline_cache(directory, monkeypatch):
    """The files of the built-in card `dino_vits16`, in an offline Hugging Face cache."""
    from keras_ssl.presets import registry

    go_offline(monkeypatch, directory / "hf")
    card = registry.get_card("dino_vits16")
    files = card["source"]["files"]
    files = {
        files["weights"]: _timm_vit_small_bytes(),
        files["config"]: {"architecture": "vit_small_patch16_224", "num_classes": 0},
    }
    cache_card_files(card, files, directory / "hf", directory, monkeypatch)


def _transformers_folder(kind):
    """`save_pretrained` of a small transformers ViT or DINOv2 with random weights."""

    def write(directory, monkeypatch):
        from tests._support.torch_reference import import_torchvision

        import_torchvision()
        import transformers

        size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
        if kind == "vit":
            config = transformers.ViTConfig(
                **size, intermediate_size=64, image_size=32, patch_size=8, layer_norm_eps=1e-6
            )
            model = transformers.ViTModel(config, add_pooling_layer=False)
        else:
            config = transformers.Dinov2Config(**size, image_size=32, patch_size=8)
            model = transformers.Dinov2Model(config)
        model.save_pretrained(directory, safe_serialization=True)

    return write


_FILES = {
    "keras_ssl.data.image_folder.image_folder": _photo_folder,
    "keras_ssl.presets": _dino_vits16_in_offline_cache,
    "keras_ssl.presets.loader.from_preset": _dino_vits16_in_offline_cache,
    "keras_ssl.presets.converters.timm_vit": _timm_vit_small_file,
    "keras_ssl.presets.converters.transformers_vit": _transformers_folder("vit"),
    "keras_ssl.presets.converters.transformers_dinov2": _transformers_folder("dinov2"),
}
_OWN_PROCESS = {"keras_ssl.distributed.engine.data_parallel"}


def test_the_examples_are_found():
    assert len(EXAMPLES) >= 40, sorted(EXAMPLES)
    assert set(_FILES) | _OWN_PROCESS <= set(EXAMPLES), "an example named here has moved"
    assert "keras_ssl.methods.dino.DINO" in EXAMPLES


def _run_in_own_process(code, directory):
    script = directory / "example.py"
    script.write_text(code)
    command = [sys.executable, str(script)]
    if keras.backend.backend() == "torch":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node=1", str(script)]
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docstring_example_runs(name, tmp_path, monkeypatch):
    code = EXAMPLES[name]
    monkeypatch.chdir(tmp_path)
    if name in _FILES:
        _FILES[name](tmp_path, monkeypatch)
    if name in _OWN_PROCESS:
        _run_in_own_process(code, tmp_path)
        return
    exec(compile(code, f"<example {name}>", "exec"), {"__name__": "__example__"})
