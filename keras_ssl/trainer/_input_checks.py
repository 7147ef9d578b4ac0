"""Checks of the data given to `fit`, before training starts: each error names the fix.

Arrays (NumPy or backend tensors) are checked whole, in chunks: empty, NaN/Inf, float
images outside [0, 1], a last batch too small for the method. Data sets whose length is
known (`tf.data` with a known cardinality, `PyDataset`, torch `DataLoader`) are checked
for emptiness. A `tf.data` data set's first batch is read once more to check its value
range: tf.data pipelines often make floats in [0, 255] (`tf.image.resize`,
`keras.utils.image_dataset_from_directory`), which the augmentation in the train step
would clip without a word, and a wrong scale shows in every batch. Shapes (rank, channels,
crop sizes) are checked by the trainer on every batch, whatever the data source.
"""

import sys
import warnings

import keras
import numpy as np

from keras_ssl.augment._base import unit_range_error

_CHUNK = 1024  # images checked at a time: bounds the memory the checks take


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "dtype") and len(getattr(x, "shape", ())) >= 2


def _to_numpy(x):
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _payload(x):
    """The array, or tuple of view arrays, `fit` was given (None for other data sources)."""
    if isinstance(x, dict):
        if "views" in x:
            return tuple(x["views"])
        x = x.get("images")
    if isinstance(x, (tuple, list)) and x and all(_is_array(v) for v in x):
        return tuple(x)
    return x if _is_array(x) else None


def _known_length(x):
    """Number of batches of a data set whose length is cheap to know, else None."""
    if type(x).__module__.startswith("tensorflow"):
        cardinality = getattr(x, "cardinality", None)
        if cardinality is not None:
            value = int(cardinality())
            return value if value >= 0 else None  # -1 infinite, -2 unknown
        return None
    if isinstance(x, keras.utils.PyDataset):
        try:
            return len(x)
        except (TypeError, NotImplementedError):
            return None
    if type(x).__module__.startswith("torch") and hasattr(x, "__len__"):
        try:
            return len(x)
        except TypeError:
            return None
    return None


def empty_data_error():
    return ValueError(
        "fit() got an empty data set: there is no image to train on. Check the path or the "
        "filter that built it (e.g. keras_ssl.data.image_folder found no image files) and "
        "that the batch size is not larger than a data set batched with drop_remainder=True."
    )


def check_fit_data(model, x, batch_size=None, fit_kwargs=None):
    """Raises a `ValueError` naming the fix for data `model.fit` cannot learn from."""
    fit_kwargs = fit_kwargs or {}
    payload = _payload(x)
    if payload is None:
        length = _known_length(x)
        if length == 0:
            raise empty_data_error()
        _check_first_batch_range(model, x)
        return
    arrays = payload if isinstance(payload, tuple) else (payload,)
    count = int(arrays[0].shape[0])
    if count == 0:
        raise empty_data_error()
    # Images the augmenter turns into views, or views (a tuple) the user made.
    augmenter = model.augmenter if not isinstance(payload, tuple) else None
    for array in arrays:
        _check_values(array, augmenter)
    batch_size = batch_size or 32
    last = count % batch_size
    uses_whole_arrays = not fit_kwargs.get("validation_split") and not fit_kwargs.get(
        "steps_per_epoch"
    )
    replicas = replicas_per_batch(model)
    if uses_whole_arrays and last and (last % replicas or last // replicas < model.min_batch_size):
        need = f"at least {model.min_batch_size} per batch"
        if replicas > 1:
            need = (
                f"a batch that splits evenly over its {replicas} replicas, with at least "
                f"{model.min_batch_size} image(s) each"
            )
        raise ValueError(
            f"{count} images in batches of {batch_size} leave a last batch of {last} image(s), "
            f"but {type(model).__name__} needs {need}. Drop the remainder "
            f"(`x[:{count - last}]`) or choose a batch size that divides the data set."
        )


def replicas_per_batch(model):
    """Devices that split each batch this process feeds to `fit`: the replicas of a
    `tf.distribute` strategy, the local devices of JAX's data-parallel mesh, else 1 (a
    torch process feeds one device)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = getattr(model, "distribute_strategy", None)
        return int(getattr(strategy, "num_replicas_in_sync", 1))
    if backend == "jax":
        distribution = keras.distribution.distribution()
        mesh = getattr(distribution, "device_mesh", None)
        if mesh is None:
            return 1
        import jax

        return max(1, int(np.prod(mesh.shape)) // jax.process_count())
    return 1


def _check_first_batch_range(model, x):
    """Checks the value range of the first batch of a `tf.data` data set, as
    `_check_values` checks arrays' (NaN and Inf are left to the step's guard)."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(x, tf.data.Dataset):
        return
    batch = next(iter(x.take(1)), None)
    payload = None if batch is None else _payload(batch)
    if payload is None:
        return
    augmenter = model.augmenter if not isinstance(payload, tuple) else None
    for array in payload if isinstance(payload, tuple) else (payload,):
        if "float" in str(array.dtype):
            values = _to_numpy(array)
            try:
                _check_range(float(values.min()), float(values.max()), augmenter)
            except ValueError as error:
                raise ValueError(f"In the first batch of the tf.data data set: {error}") from None


def _check_values(array, augmenter):
    """Refuses NaN / Inf pixels, and pixels outside [0, 1] where `augmenter` needs them
    there (warns at 0-255 values where nothing does: pre-made views, a flip-only augmenter)."""
    dtype = str(array.dtype)
    if "float" not in dtype:
        return
    low, high = np.inf, -np.inf
    for start in range(0, int(array.shape[0]), _CHUNK):
        chunk = _to_numpy(array[start : start + _CHUNK]).astype("float32", copy=False)
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = start + int(np.argwhere(~finite.reshape(len(chunk), -1).all(axis=1))[0, 0])
            kind = "NaN" if np.isnan(chunk).any() else "Inf"
            raise ValueError(
                f"The images contain {kind} values (the first at index {bad}): one such pixel "
                "makes the loss and then every weight NaN. Remove or repair those images "
                "(e.g. `x[np.isfinite(x).all(axis=(1, 2, 3))]`) before calling fit()."
            )
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
    _check_range(low, high, augmenter)


def _check_range(low, high, augmenter):
    """Refuses images spanning `[low, high]` beyond [0, 1] where `augmenter` needs them in
    it; warns at 0-255 values where nothing does (`augmenter` None: pre-made views)."""
    uses = _unit_range_uses(augmenter)
    if uses:
        error = unit_range_error(low, high, "the augmentation", uses)
        if error is not None:
            raise error
    elif high > 10.0:
        warnings.warn(
            f"The {'views' if augmenter is None else 'images'} reach {high:g}: keras_ssl's "
            "models take images in [0, 1] (uint8 is scaled for you). If these are 0-255 "
            "pixel values, divide them by 255.",
            stacklevel=4,
        )


def _unit_range_uses(augmenter):
    """Why `augmenter` needs images in [0, 1]; a user's own augmenter is taken to (as
    every keras_ssl recipe does)."""
    if augmenter is None:
        return []
    if hasattr(augmenter, "unit_range_uses"):
        return augmenter.unit_range_uses()
    return [f"{type(augmenter).__name__} is expected to take keras_ssl's [0, 1] images"]


def check_patch_size(view_shape, patch_size):
    """Refuses a view smaller than a ViT backbone's patch: no patch would fit in it."""
    height, width = view_shape[1], view_shape[2]
    if not patch_size or height is None or width is None or min(height, width) >= patch_size:
        return
    raise ValueError(
        f"A view is {height}x{width} pixels but the backbone's patches are "
        f"{patch_size}x{patch_size}: no patch fits in it. Make every crop at least "
        f"{patch_size} pixels (e.g. DINOMultiCrop's local_size) or build the ViT with a "
        "smaller patch_size."
    )


def check_crop_sizes(image_shape, augmenter, patch_size=None):
    """Refuses images smaller than the views `augmenter` crops from them, and views smaller
    than the backbone's `patch_size` (a ViT's; `None` for others)."""
    height, width = image_shape[1], image_shape[2]
    if height is None or width is None or augmenter is None:
        return
    try:
        view_shapes = augmenter.compute_output_shape(tuple(image_shape))
    except Exception:  # an augmenter that cannot tell its output shape: nothing to check
        return
    if not isinstance(view_shapes, (tuple, list)) or not view_shapes:
        return
    if not isinstance(view_shapes[0], (tuple, list)):
        view_shapes = (view_shapes,)
    for shape in view_shapes:
        crop_h, crop_w = shape[1], shape[2]
        if crop_h is None or crop_w is None:
            continue
        check_patch_size(shape, patch_size)
        if crop_h > height or crop_w > width:
            raise ValueError(
                f"The images are {height}x{width} pixels but the augmenter makes "
                f"{crop_h}x{crop_w} views: every view would be an upsampled blur. Resize the "
                f"images to at least {crop_h}x{crop_w} (e.g. keras_ssl.data.image_folder("
                f"..., image_size={max(crop_h, crop_w)})), or build the augmentation for "
                f"{height}x{width} images (e.g. SimCLRAugment.small_images({height}))."
            )
