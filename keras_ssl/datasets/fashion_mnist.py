"""Fashion-MNIST: a small built-in data set, with a shipped class-stratified subset.

Fashion-MNIST (Han Xiao, Kashif Rasul, Roland Vollgraf, "Fashion-MNIST: a Novel Image
Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017) is a data
set of Zalando article images by Zalando Research: 60,000 training and 10,000 test
grey-scale 28x28 images in 10 classes. It is distributed under the MIT licence,
Copyright (c) 2017 Zalando SE; the licence text ships next to this module as
``LICENSE-fashion-mnist.txt``.

keras_ssl ships a class-stratified subset (``fashion_mnist_subset.npz``, made by
``tools/make_embedded_data.py``) so that examples and tests work offline with no download.
The full set is read from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``) or from a Keras cache
(``$KERAS_HOME/datasets/fashion-mnist``, by default ``~/.keras/datasets/fashion-mnist``)
when present. This module never downloads anything.

Example:

```python
from keras_ssl.datasets import fashion_mnist

(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data("embedded")
print(x_train.shape, x_train.dtype, fashion_mnist.CLASS_NAMES[y_train[0]])
```
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["CLASS_NAMES", "EMBEDDED_PATH", "full_data_dirs", "load_data", "read_idx"]

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

EMBEDDED_PATH = Path(__file__).resolve().parent / "fashion_mnist_subset.npz"

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

# IDX magic numbers for unsigned-byte data: 0x0000 08 <ndim>.
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}


def read_idx(path, expected_ndim=None):
    """Read a (gzipped) IDX file, as used by MNIST and Fashion-MNIST, into a uint8 array.

    The format is a big-endian int32 magic number ``0x000008NN`` (``08`` = unsigned
    byte, ``NN`` = number of dimensions), then ``NN`` big-endian int32 sizes, then
    the data. Files ending in ``.gz`` are decompressed.

    Args:
        path: path of the ``.gz`` or raw IDX file.
        expected_ndim: if given, the number of dimensions the file must have
            (1 for label files, 3 for image files).

    Returns:
        A ``uint8`` NumPy array of the stored shape.

    Raises:
        ValueError: the magic number, dimensions or length are wrong.

    Example:

    ```python
    import gzip
    import struct

    from keras_ssl.datasets.fashion_mnist import read_idx

    with gzip.open("labels-idx1-ubyte.gz", "wb") as f:  # magic 0x801: 1-D unsigned bytes
        f.write(struct.pack(">ii", 0x801, 3) + bytes([9, 2, 1]))
    print(read_idx("labels-idx1-ubyte.gz", expected_ndim=1))  # [9 2 1]
    ```
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file ({len(data)} bytes).")
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in _IDX_MAGIC:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x00000801 (labels) "
            "or 0x00000803 (images) for unsigned-byte data."
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(
            f"{path}: IDX file has {ndim} dimension(s) (magic 0x{magic:08x}), "
            f"expected {expected_ndim} (magic 0x{_IDX_MAGIC[expected_ndim]:08x})."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(data) - header != count:
        raise ValueError(
            f"{path}: IDX header announces shape {shape} ({count} bytes) but the file "
            f"holds {len(data) - header} bytes of data."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def full_data_dirs():
    """Folders searched, in order, for the full set's four ``.gz`` IDX files."""
    keras_home = os.environ.get("KERAS_HOME")
    if keras_home:
        cache = Path(keras_home).expanduser()
    else:
        cache = Path("~").expanduser() / ".keras"
    return [DEBIAN_DIR, cache / "datasets" / "fashion-mnist"]


def _find_full_dir():
    for d in full_data_dirs():
        if all((d / name).is_file() for name in FILES.values()):
            return d
    return None


def _load_full(directory):
    d = Path(directory)
    x_train = read_idx(d / FILES["x_train"], 3)
    y_train = read_idx(d / FILES["y_train"], 1)
    x_test = read_idx(d / FILES["x_test"], 3)
    y_test = read_idx(d / FILES["y_test"], 1)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise ValueError(f"{d}: {split} images ({len(x)}) and labels ({len(y)}) differ.")
    return (x_train, y_train), (x_test, y_test)


def _load_embedded():
    if not EMBEDDED_PATH.is_file():
        raise FileNotFoundError(
            f"The embedded Fashion-MNIST subset is missing ({EMBEDDED_PATH}); regenerate "
            "it with `python tools/make_embedded_data.py` or reinstall keras_ssl."
        )
    with np.load(EMBEDDED_PATH, allow_pickle=False) as f:
        return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])


def load_data(source="auto"):
    """Load Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) as uint8 NumPy arrays.

    Args:
        source: ``"embedded"`` for the class-stratified subset shipped with keras_ssl
            (works offline, a few thousand images); ``"full"`` for the full 60,000/10,000
            set read from the Debian package ``dataset-fashion-mnist`` or the Keras cache
            (``$KERAS_HOME/datasets/fashion-mnist``, default ``~/.keras``); ``"auto"``
            for the full set where its files exist, else the embedded subset. Nothing is
            ever downloaded.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: images ``uint8`` of shape ``(N, 28, 28)``
        and labels ``uint8`` of shape ``(N,)`` with values in ``0..9``
        (see ``CLASS_NAMES``).

    Raises:
        ValueError: unknown ``source``.
        FileNotFoundError: ``source="full"`` and no folder holds the four files.

    Example:

    ```python
    from keras_ssl.datasets import fashion_mnist

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data("embedded")
    assert x_train.shape[1:] == (28, 28)
    ```
    """
    if source not in ("auto", "embedded", "full"):
        raise ValueError(f"Unknown source {source!r}; expected one of 'auto', 'embedded', 'full'.")
    if source == "embedded":
        return _load_embedded()
    directory = _find_full_dir()
    if directory is not None:
        return _load_full(directory)
    if source == "auto":
        return _load_embedded()
    looked = ", ".join(str(d) for d in full_data_dirs())
    raise FileNotFoundError(
        "The full Fashion-MNIST set was requested but its files "
        f"({', '.join(FILES.values())}) were not found in: {looked}. Install them with "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or run "
        "`keras.datasets.fashion_mnist.load_data()` once with network access to fill the "
        "Keras cache; or use load_data('embedded') for the shipped subset."
    )
