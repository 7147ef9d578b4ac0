"""Any folder tree of images as a ``keras.utils.PyDataset`` (no labels or metadata files)."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import keras
import numpy as np
from PIL import Image, ImageOps

__all__ = ["DEFAULT_EXTENSIONS", "ImageFolderDataset", "image_folder"]

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _normalise_extensions(extensions):
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = []
    for ext in extensions:
        ext = ext.lower()
        out.append(ext if ext.startswith(".") else "." + ext)
    if not out:
        raise ValueError("`extensions` must name at least one file extension.")
    return tuple(out)


def _list_images(folder, extensions, recursive):
    """Sorted image paths under ``folder`` (hidden files and folders are skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.join(root, name))
        if not recursive:
            break
    return found


# Pillow's 16-bit grey modes, and its 32-bit integer mode "I", in which some versions and
# formats open 16-bit files.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _eight_bit_or_unit_float(img):
    """8-bit images as they are; 16-bit grey images (which Pillow's `convert` would clip
    to white) as a float image in [0, 1]; 32-bit integer images with values outside the
    16-bit range and float images are refused: their range is unknown."""
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):  # mode "I" only
            raise ValueError(
                f"it is a 32-bit integer image (Pillow mode '{img.mode}') with values in "
                f"[{values.min()}, {values.max()}], outside the 16-bit range [0, 65535] it "
                "would be read on; convert it to an 8- or 16-bit image"
            )
        return Image.fromarray(values.astype("float32") / 65535.0, mode="F")
    if img.mode == "F":
        raise ValueError(
            "it is a floating-point image (Pillow mode 'F'), whose value range is unknown; "
            "convert it to an 8- or 16-bit image"
        )
    return img


def _image_size(image_size):
    if isinstance(image_size, numbers.Integral):
        image_size = (image_size, image_size)
    height, width = (int(s) for s in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}.")
    return (height, width)


class ImageFolderDataset(keras.utils.PyDataset):
    """Batches of images decoded with Pillow from a folder tree; see ``image_folder``."""

    def __init__(
        self,
        path,
        image_size,
        batch_size=64,
        labels=False,
        shuffle=True,
        seed=None,
        color_mode="rgb",
        extensions=DEFAULT_EXTENSIONS,
        recursive=True,
        workers=1,
        use_multiprocessing=False,
        max_queue_size=10,
        num_shards=1,
        shard_index=0,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if color_mode not in ("rgb", "grayscale"):
            raise ValueError(f"color_mode must be 'rgb' or 'grayscale', got {color_mode!r}.")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"Image folder not found: {self.path}")
        if not self.path.is_dir():
            raise NotADirectoryError(f"Not a folder: {self.path}")
        self.image_size = _image_size(image_size)
        self.batch_size = int(batch_size)
        self.with_labels = bool(labels)
        self.shuffle = bool(shuffle)
        self.color_mode = color_mode
        self.channels = 3 if color_mode == "rgb" else 1
        self.extensions = _normalise_extensions(extensions)
        self.recursive = bool(recursive)

        if self.with_labels:
            self.class_names = sorted(
                d.name for d in self.path.iterdir() if d.is_dir() and not d.name.startswith(".")
            )
            stray = _list_images(self.path, self.extensions, recursive=False)
            if stray:
                raise ValueError(
                    f"labels=True takes the class from the first-level sub-folder, but "
                    f"{len(stray)} image(s) lie directly in {self.path} (e.g. {stray[0]}). "
                    "Move them into class folders or use labels=False."
                )
            paths, label_ids = [], []
            for i, name in enumerate(self.class_names):
                found = _list_images(self.path / name, self.extensions, self.recursive)
                paths += found
                label_ids += [i] * len(found)
        else:
            self.class_names = None
            paths = _list_images(self.path, self.extensions, self.recursive)
            label_ids = []
        if not paths:
            where = (
                "in its sub-folders"
                if self.with_labels
                else ("in it or its sub-folders" if self.recursive else "directly in it")
            )
            raise ValueError(
                f"No images found in {self.path} ({where}); searched for extensions "
                f"{', '.join(self.extensions)} (case-insensitive)."
            )
        self.file_paths = paths
        self.labels = np.asarray(label_ids, dtype="int32") if self.with_labels else None
        self._seed = np.random.SeedSequence(seed).entropy  # `seed`, or fresh entropy for None
        self._seeded = seed is not None
        self.shard(num_shards, shard_index)

    def shard(self, num_shards, index):
        """Keeps shard `index` of `num_shards`: every epoch, images `index`, `index +
        num_shards`, ... of the epoch's order, the order cut to a multiple of `num_shards`
        so that every shard has as many images (as torch's `DistributedSampler`, which
        pads where this drops). One shard per process in multi-process training
        (`DataParallelEngine.shard` calls this); returns the dataset.
        """
        num_shards, index = int(num_shards), int(index)
        if num_shards < 1 or not 0 <= index < num_shards:
            raise ValueError(
                f"shard_index must be in [0, num_shards), got {index} of {num_shards}."
            )
        if num_shards > 1 and self.shuffle and not self._seeded:
            raise ValueError(
                "Sharded shuffling needs the same `seed` in every process, so that the shards "
                "split one order: pass seed= to image_folder."
            )
        if num_shards > len(self.file_paths):
            raise ValueError(f"{len(self.file_paths)} images cannot fill {num_shards} shards.")
        self.num_shards, self.shard_index = num_shards, index
        self.set_epoch(getattr(self, "epoch", 0))
        return self

    def set_epoch(self, epoch):
        """Orders the images for epoch `epoch` (from 0). With `shuffle`, the order is a
        permutation drawn from `(seed, epoch)`, so a run resumed at an epoch reads the order
        the uninterrupted run read there; keras_ssl's `fit` calls this as each epoch begins.
        """
        self.epoch = int(epoch)
        count = len(self.file_paths)
        if self.shuffle:
            order = np.random.default_rng([self._seed, self.epoch]).permutation(count)
        else:
            order = np.arange(count)
        kept = count - count % self.num_shards
        self._order = order[:kept][self.shard_index :: self.num_shards]

    @property
    def num_classes(self):
        return None if self.class_names is None else len(self.class_names)

    @property
    def num_samples(self):
        """Images this dataset yields an epoch (its shard's, when sharded)."""
        return len(self._order)

    def __len__(self):
        return math.ceil(len(self._order) / self.batch_size)

    def load_image(self, file_path):
        """Decode one file to float32 ``(H, W, C)`` in ``[0, 1]``."""
        height, width = self.image_size
        try:
            with Image.open(file_path) as img:
                img = ImageOps.exif_transpose(img)
                img = _eight_bit_or_unit_float(img)
                if img.mode != "F":
                    img = img.convert("RGB" if self.channels == 3 else "L")
                # Resize the shorter side to fit, then centre crop (keeps the aspect ratio).
                img = ImageOps.fit(img, (width, height), method=Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype="float32")
        except Exception as e:
            raise ValueError(f"Cannot read image file {file_path}: {e}") from e
        if img.mode == "F":  # a 16-bit grey image, already in [0, 1]
            array = np.repeat(array[..., None], self.channels, axis=-1)
            return np.clip(array, 0.0, 1.0)
        if array.ndim == 2:
            array = array[..., None]
        return array / 255.0

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches.")
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        images = np.stack([self.load_image(self.file_paths[i]) for i in rows])
        if self.with_labels:
            return images, self.labels[rows]
        return images

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)


def image_folder(
    path,
    image_size,
    batch_size=64,
    labels=False,
    shuffle=True,
    seed=None,
    color_mode="rgb",
    extensions=DEFAULT_EXTENSIONS,
    recursive=True,
    workers=1,
    use_multiprocessing=False,
    max_queue_size=10,
    num_shards=1,
    shard_index=0,
):
    """A folder tree of images as batches for ``model.fit`` on any Keras backend.

    Any tree of image files works: no label file, metadata or fixed layout is needed,
    which suits self-supervised pre-training on unlabelled images. Files are decoded with
    Pillow (EXIF orientation applied), converted to RGB or grey-scale, resized so that
    the image covers ``image_size`` (shorter side first, keeping the aspect ratio) and
    centre cropped to exactly ``image_size`` (``PIL.ImageOps.fit``, bilinear); 16-bit grey
    images are read on their [0, 65535] scale (32-bit integer ones too, if their values
    fit in it), floating-point images are refused. Hidden files and folders (names
    starting with ``.``) are skipped. The last batch may be smaller.

    Args:
        path: root folder.
        image_size: int or ``(height, width)`` of the output images.
        batch_size: images per batch.
        labels: if True, yield ``(images, labels)`` with int32 labels taken from the
            first-level sub-folder names (sorted, see ``.class_names``); every image must
            then sit inside such a sub-folder.
        shuffle: shuffle the order, a new order every epoch (see ``set_epoch``).
        seed: seed of the shuffling (``None``: not reproducible).
        color_mode: ``"rgb"`` (3 channels) or ``"grayscale"`` (1 channel).
        extensions: file extensions to include (case-insensitive).
        recursive: look into sub-folders at any depth (with ``labels=True``: below each
            class folder); if False, only the files directly in ``path`` (or directly in
            each class folder).
        workers, use_multiprocessing, max_queue_size: passed to
            ``keras.utils.PyDataset`` for parallel loading.
        num_shards, shard_index: in multi-process training (PyTorch DDP, JAX on several
            hosts), each process reads shard ``shard_index`` of ``num_shards`` (see
            ``ImageFolderDataset.shard``; ``engine.shard(data)`` sets them); sharded
            shuffling needs the same ``seed`` in every process.

    Returns:
        An ``ImageFolderDataset`` (a ``keras.utils.PyDataset``) whose batches are float32
        arrays ``(B, H, W, C)`` in ``[0, 1]``, or ``(images, labels)`` pairs. It also
        exposes ``file_paths``, ``labels``, ``class_names`` and ``num_classes``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no image found, or an image file cannot be decoded (raised when its
            batch is read, naming the file).

    Example:

    ```python
    import keras
    from keras_ssl.data import image_folder

    data = image_folder("photos/", image_size=64, batch_size=32, labels=True, seed=0)
    model = keras.Sequential([
        keras.Input((64, 64, 3)),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(data.num_classes, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data, epochs=1)
    ```
    """
    return ImageFolderDataset(
        path,
        image_size,
        batch_size=batch_size,
        labels=labels,
        shuffle=shuffle,
        seed=seed,
        color_mode=color_mode,
        extensions=extensions,
        recursive=recursive,
        workers=workers,
        use_multiprocessing=use_multiprocessing,
        max_queue_size=max_queue_size,
        num_shards=num_shards,
        shard_index=shard_index,
    )
