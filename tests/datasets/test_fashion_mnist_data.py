import gzip
import hashlib

import numpy as np
import pytest

from keras_ssl.datasets import fashion_mnist

FULL_AVAILABLE = all(
    (fashion_mnist.DEBIAN_DIR / name).is_file() for name in fashion_mnist.FILES.values()
)


def _write_idx(path, array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_embedded_shapes_dtypes_and_balance():
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data("embedded")
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    assert x_test.dtype == np.uint8 and y_test.dtype == np.uint8
    assert x_train.shape[1:] == (28, 28) and x_test.shape[1:] == (28, 28)
    assert len(x_train) == len(y_train) >= 5000
    assert len(x_test) == len(y_test) >= 1000
    for y in (y_train, y_test):
        counts = np.bincount(y, minlength=10)
        assert len(counts) == 10
        assert counts.min() == counts.max() == len(y) // 10
    assert len(fashion_mnist.CLASS_NAMES) == 10
    assert x_train.max() > 200  # real images, not blank


def test_embedded_file_size():
    assert fashion_mnist.EMBEDDED_PATH.stat().st_size <= 6 * 1024 * 1024


def test_unknown_source():
    with pytest.raises(ValueError, match="Unknown source"):
        fashion_mnist.load_data("mnist")


def test_read_idx_roundtrip_and_bad_magic(tmp_path):
    good = tmp_path / "good-idx3-ubyte.gz"
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(good, data)
    np.testing.assert_array_equal(fashion_mnist.read_idx(good, 3), data)
    with pytest.raises(ValueError, match="dimension"):
        fashion_mnist.read_idx(good, 1)
    bad = tmp_path / "bad-idx3-ubyte.gz"
    _write_idx(bad, data, magic=0x00000D03)  # float data, not unsigned bytes
    with pytest.raises(ValueError, match="magic"):
        fashion_mnist.read_idx(bad)
    truncated = tmp_path / "short-idx1-ubyte"
    truncated.write_bytes((0x801).to_bytes(4, "big") + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(ValueError, match="announces"):
        fashion_mnist.read_idx(truncated)


def _fake_cache(root):
    folder = root / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (20, 28, 28)),
        "y_train": np.arange(20) % 10,
        "x_test": rng.integers(0, 256, (10, 28, 28)),
        "y_test": np.arange(10),
    }
    for key, name in fashion_mnist.FILES.items():
        _write_idx(folder / name, arrays[key])
    return arrays


def test_full_from_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    arrays = _fake_cache(tmp_path / "kh")
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data("full")
    np.testing.assert_array_equal(x_train, arrays["x_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert fashion_mnist.load_data("auto")[0][0].shape == (20, 28, 28)


def test_full_missing_raises_and_auto_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as info:
        fashion_mnist.load_data("full")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "empty") in message and "no-debian" in message
    (x_train, _), _ = fashion_mnist.load_data("auto")
    assert len(x_train) == len(fashion_mnist.load_data("embedded")[0][0])


@pytest.mark.skipif(
    not FULL_AVAILABLE,
    reason=f"full Fashion-MNIST not in {fashion_mnist.DEBIAN_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_full_set_and_subset_rows_come_from_it():
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data("full")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.uint8 and y_train.max() == 9
    (sx_train, sy_train), (sx_test, sy_test) = fashion_mnist.load_data("embedded")
    for full_x, full_y, sub_x, sub_y in (
        (x_train, y_train, sx_train, sy_train),
        (x_test, y_test, sx_test, sy_test),
    ):
        index = {
            hashlib.sha1(row.tobytes() + bytes([label])).digest()
            for row, label in zip(full_x, full_y, strict=True)
        }
        for row, label in zip(sub_x, sub_y, strict=True):
            assert hashlib.sha1(row.tobytes() + bytes([label])).digest() in index
    with np.load(fashion_mnist.EMBEDDED_PATH, allow_pickle=False) as f:
        np.testing.assert_array_equal(x_train[f["train_indices"]], sx_train)
        np.testing.assert_array_equal(y_test[f["test_indices"]], sy_test)


def test_make_embedded_data_tool_is_stratified_and_deterministic(tmp_path):
    import importlib.util
    from pathlib import Path

    tool_path = Path(__file__).resolve().parents[2] / "tools" / "make_embedded_data.py"
    spec = importlib.util.spec_from_file_location("make_embedded_data", tool_path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    arrays = _fake_cache(tmp_path)
    source = str(tmp_path / "datasets" / "fashion-mnist")
    outputs = []
    for name in ("a.npz", "b.npz"):
        out = tmp_path / name
        tool.main(
            [
                "--source",
                source,
                "--output",
                str(out),
                "--train-size",
                "10",
                "--test-size",
                "10",
                "--seed",
                "3",
            ]
        )
        outputs.append(out.read_bytes())
        with np.load(out, allow_pickle=False) as f:
            assert np.bincount(f["y_train"], minlength=10).tolist() == [1] * 10
            np.testing.assert_array_equal(arrays["x_train"][f["train_indices"]], f["x_train"])
    assert outputs[0] == outputs[1]
    with pytest.raises(ValueError, match="multiple"):
        tool.main(["--source", source, "--output", str(tmp_path / "c.npz"), "--train-size", "15"])
