"""Write the class-stratified Fashion-MNIST subset shipped in keras_ssl.

Reads the four gzipped IDX files of Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando
Research, MIT licence), draws the same number of images from each class of the training
and test splits (deterministic given ``--seed``), keeps them in their original order and
writes ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8) plus the chosen row
indices into the full splits (``train_indices``, ``test_indices``) with
``np.savez_compressed``.

Example:

    python tools/make_embedded_data.py \
        --source /usr/share/datasets/fashion-mnist \
        --output keras_ssl/datasets/fashion_mnist_subset.npz \
        --train-size 10000 --test-size 2000 --seed 0
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "keras_ssl" / "datasets" / "fashion_mnist.py"


def _fashion_mnist_module():
    # Load the module by path so that the tool does not import keras_ssl (nor keras).
    spec = importlib.util.spec_from_file_location("_fashion_mnist", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stratified_indices(labels, size, rng, num_classes=10):
    """Sorted row indices of ``size`` rows with ``size // num_classes`` from each class."""
    if size % num_classes:
        raise ValueError(f"size {size} is not a multiple of the {num_classes} classes.")
    per_class = size // num_classes
    chosen = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            raise ValueError(f"class {c} has {len(rows)} rows, fewer than {per_class}.")
        chosen.append(rng.choice(rows, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def main(argv=None):
    fm = _fashion_mnist_module()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        default=str(fm.DEBIAN_DIR),
        help="folder with the four Fashion-MNIST .gz IDX files",
    )
    parser.add_argument("--output", default=str(fm.EMBEDDED_PATH), help="output .npz path")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test) = fm._load_full(args.source)
    rng = np.random.default_rng(args.seed)
    train_idx = stratified_indices(y_train, args.train_size, rng)
    test_idx = stratified_indices(y_test, args.test_size, rng)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        output,
        x_train=x_train[train_idx],
        y_train=y_train[train_idx],
        x_test=x_test[test_idx],
        y_test=y_test[test_idx],
        train_indices=train_idx.astype(np.int32),
        test_indices=test_idx.astype(np.int32),
    )
    size = os.path.getsize(output)
    print(
        f"wrote {output}: {len(train_idx)} train + {len(test_idx)} test images, "
        f"{size:,} bytes ({size / 2**20:.2f} MiB)"
    )


if __name__ == "__main__":
    main()
