import keras
import numpy as np
import pytest
from PIL import Image

from keras_ssl.data import image_folder


def _save(path, size, color, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


@pytest.fixture
def tree(tmp_path):
    # cats/ (3 images, one nested), dogs/ (2 images), different sizes and formats.
    root = tmp_path / "images"
    _save(root / "cats" / "a.png", (20, 12), (255, 0, 0))
    _save(root / "cats" / "b.JPG", (9, 17), (0, 255, 0), fmt="JPEG")
    _save(root / "cats" / "deep" / "er" / "c.jpeg", (16, 16), (0, 0, 255), fmt="JPEG")
    _save(root / "dogs" / "d.png", (8, 8), (255, 255, 255))
    _save(root / "dogs" / "e.png", (30, 10), (0, 0, 0))
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "dogs" / ".hidden.png").write_bytes(b"junk")
    return root


def test_unlabelled_shapes_range_dtype(tree):
    data = image_folder(tree, image_size=(8, 6), batch_size=2, shuffle=False)
    assert isinstance(data, keras.utils.PyDataset)
    assert len(data) == 3 and data.num_samples == 5
    batches = [data[i] for i in range(len(data))]
    assert [b.shape for b in batches] == [(2, 8, 6, 3), (2, 8, 6, 3), (1, 8, 6, 3)]
    for b in batches:
        assert b.dtype == np.float32 and b.min() >= 0.0 and b.max() <= 1.0
    # sorted order, no shuffle: cats/a.png (red) first, dogs/e.png (black) last
    np.testing.assert_allclose(batches[0][0].mean(axis=(0, 1)), [1, 0, 0], atol=1e-6)
    assert batches[2].max() == 0.0
    grey = image_folder(tree, 4, batch_size=5, shuffle=False, color_mode="grayscale")
    assert grey[0].shape == (5, 4, 4, 1)
    flat = image_folder(tree / "cats", 4, recursive=False, shuffle=False)
    assert flat.num_samples == 2


def test_labels_and_class_names(tree):
    data = image_folder(tree, 4, batch_size=8, labels=True, shuffle=False)
    assert data.class_names == ["cats", "dogs"] and data.num_classes == 2
    images, labels = data[0]
    assert images.shape == (5, 4, 4, 3)
    assert labels.dtype == np.int32 and labels.tolist() == [0, 0, 0, 1, 1]


def test_labels_reject_loose_images(tree):
    _save(tree / "loose.png", (4, 4), (1, 2, 3))
    with pytest.raises(ValueError, match="loose.png"):
        image_folder(tree, 4, labels=True)


def test_seeded_shuffle(tree):
    def epochs(seed):
        data = image_folder(tree, 4, batch_size=5, labels=True, seed=seed)
        orders = []
        for _ in range(4):
            orders.append(tuple(np.asarray(data.file_paths)[data._order]))
            data.on_epoch_end()
        return orders, data

    a, data = epochs(7)
    b, _ = epochs(7)
    assert a == b
    assert len(set(a)) > 1  # reshuffled across epochs
    # labels stay attached to their images after shuffling
    images, labels = data[0]
    for image, label in zip(images, labels, strict=True):
        is_dog_colour = image.mean() in (0.0, 1.0)  # dogs are black / white
        assert is_dog_colour == (label == 1)


def test_the_order_is_a_function_of_seed_and_epoch(tree):
    data = image_folder(tree, 4, batch_size=5, seed=7)
    orders = []
    for _ in range(3):
        orders.append(data._order.copy())
        data.on_epoch_end()
    fresh = image_folder(tree, 4, batch_size=5, seed=7)
    fresh.set_epoch(2)  # as a run resumed at epoch 2 sets it
    np.testing.assert_array_equal(fresh._order, orders[2])
    assert not np.array_equal(orders[0], orders[2])


def test_shards_split_each_epochs_order_into_equal_disjoint_parts(tree):
    from keras_ssl.distributed import DataParallelEngine

    whole = image_folder(tree, 4, batch_size=1, seed=3)
    shards = [
        image_folder(tree, 4, batch_size=1, seed=3, num_shards=2, shard_index=i) for i in (0, 1)
    ]
    for epoch in range(3):
        for data in (whole, *shards):
            data.set_epoch(epoch)
        # 5 images: the epoch's order cut to 4, then every second image
        np.testing.assert_array_equal(shards[0]._order, whole._order[0:4:2])
        np.testing.assert_array_equal(shards[1]._order, whole._order[1:4:2])
        assert len(shards[0]) == len(shards[1]) == 2 and shards[0].num_samples == 2
    engine = DataParallelEngine("torch", num_replicas=2, process_index=1, num_processes=2)
    sharded = engine.shard(image_folder(tree, 4, batch_size=1, seed=3))
    sharded.set_epoch(2)
    np.testing.assert_array_equal(sharded._order, shards[1]._order)
    with pytest.raises(ValueError, match="same `seed` in every process"):
        image_folder(tree, 4, num_shards=2, shard_index=0)
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, num_shards\)"):
        image_folder(tree, 4, seed=0, num_shards=2, shard_index=2)
    with pytest.raises(TypeError, match="engine.shard takes arrays or an image_folder"):
        engine.shard(keras.utils.PyDataset())


def test_sixteen_bit_images_are_scaled_and_float_images_refused(tmp_path):
    grey = np.full((6, 6), 32768, dtype=np.uint16)  # half of the 16-bit range
    Image.fromarray(grey).save(tmp_path / "a.png")
    for color_mode, channels in (("rgb", 3), ("grayscale", 1)):
        batch = image_folder(tmp_path, 4, batch_size=1, color_mode=color_mode)[0]
        assert batch.shape == (1, 4, 4, channels) and batch.dtype == np.float32
        np.testing.assert_allclose(batch, 32768 / 65535, atol=1e-6)
    Image.fromarray(np.full((6, 6), 0.5, dtype=np.float32)).save(tmp_path / "b.tiff")
    with pytest.raises(ValueError, match=r"b.tiff.*floating-point image \(Pillow mode 'F'\)"):
        image_folder(tmp_path, 4, batch_size=2, shuffle=False)[0]


def test_32_bit_integer_images_beyond_16_bits_are_refused(tmp_path):
    # Pillow's mode "I" was read as 16-bit: values above 65535 came out white, silently.
    Image.fromarray(np.full((6, 6), 100_000, dtype=np.int32)).save(tmp_path / "a.tiff")
    assert Image.open(tmp_path / "a.tiff").mode == "I"
    with pytest.raises(
        ValueError,
        match=r"a.tiff.*32-bit integer image \(Pillow mode 'I'\) with values in \[100000, "
        r"100000\], outside the 16-bit range \[0, 65535\].*convert it to an 8- or 16-bit",
    ):
        image_folder(tmp_path, 4, batch_size=1)[0]
    Image.fromarray(np.full((6, 6), -1, dtype=np.int32)).save(tmp_path / "a.tiff")
    with pytest.raises(ValueError, match=r"with values in \[-1, -1\]"):
        image_folder(tmp_path, 4, batch_size=1)[0]
    # Values that fit in 16 bits (a 16-bit file opened in mode "I") are read on that scale.
    Image.fromarray(np.full((6, 6), 32768, dtype=np.int32)).save(tmp_path / "a.tiff")
    np.testing.assert_allclose(image_folder(tmp_path, 4, batch_size=1)[0], 32768 / 65535)


def test_image_size_may_be_a_numpy_integer(tree):
    data = image_folder(tree, np.int64(4), batch_size=2, shuffle=False)
    assert data.image_size == (4, 4) and data[0].shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match="image_size must be positive"):
        image_folder(tree, 0)


def test_a_resumed_fit_reads_the_order_of_its_epoch(tree):
    import keras_ssl
    from keras_ssl.backbones import ConvNet
    from keras_ssl.data.image_folder import ImageFolderDataset

    class Recording(ImageFolderDataset):
        def __getitem__(self, index):
            self.read.append(tuple(self._order))
            return super().__getitem__(index)

    def last_order_read(initial_epoch):
        data = Recording(tree, 8, batch_size=5, seed=3)
        data.read = []
        model = keras_ssl.SimCLR(
            ConvNet(widths=(4,), input_channels=3),
            augmenter=keras_ssl.augment.SimCLRAugment.small_images(8, seed=0),
            projection_dim=4,
            hidden_dim=4,
        )
        model.compile(optimizer="sgd")
        model.fit(data, epochs=3, initial_epoch=initial_epoch, verbose=0)
        return data.read[-1]

    straight = last_order_read(0)  # epochs 0, 1, 2: the last batch read is epoch 2's
    assert straight != tuple(image_folder(tree, 8, batch_size=5, seed=3)._order)  # not epoch 0's
    assert last_order_read(2) == straight


def test_errors(tmp_path, tree):
    with pytest.raises(FileNotFoundError, match="not found"):
        image_folder(tmp_path / "missing", 4)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"No images found.*\.png"):
        image_folder(empty, 4)
    (tree / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    data = image_folder(tree, 4, batch_size=16, shuffle=False)
    with pytest.raises(ValueError, match="broken.png"):
        data[0]
    with pytest.raises(ValueError, match="color_mode"):
        image_folder(tree, 4, color_mode="cmyk")


def test_fit_on_labelled_folder(tree):
    data = image_folder(tree, 8, batch_size=2, labels=True, seed=0, workers=2)
    assert data.workers == 2 and data.use_multiprocessing is False
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(data.num_classes, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
