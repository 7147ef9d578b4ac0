"""Exact resume: N steps straight == k steps, a crash, a fresh process, N - k more steps.

For every method, one run trains 3 epochs of 2 steps (N = 6). At the end of epoch 1
(k = 2 steps) `ModelCheckpoint` (which calls `model.save`: a `.keras` file; and with
`save_weights_only=True`, a `.weights.h5` file) and `BackupAndRestore` (weights and
optimizer in `.weights.h5`, the epoch in JSON) have written their files: a snapshot of them
is exactly what a node pre-empted after epoch 1 leaves behind. A fresh Python process (same
`KERAS_BACKEND`) then continues from the snapshot three ways: `keras.saving.load_model` +
`fit(initial_epoch=1)`; a newly built and compiled model + `load_weights` +
`fit(initial_epoch=1)`; and a newly built model + `fit` with the same `BackupAndRestore`.
Each must end where the straight run ended, within 1e-6: every weight (student, teacher,
MoCo queue and pointer, DINO centres, batch-norm statistics, the schedules' run length),
every random-generator state (the augmentation crops and flips, DINOv2's masks) and every
optimizer variable (the step count, which is the schedules' position, and the moments).
Data order is fixed (`shuffle=False`): Keras does not save its shuffling order.

The five methods share one subprocess (importing Keras dominates its cost); the
augmenters are crop + flip only, to keep compilation short. Run this file as a script
(`python tests/trainer/test_resume.py DIR METHOD...`) to do the resuming half.
"""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

METHODS = ("simclr", "mocov2", "byol", "dino", "dinov2")
EPOCHS, CRASH_AFTER_EPOCH, BATCH, SIZE = 3, 1, 8, 16
TOLERANCE = 1e-6


def _images():
    return np.random.default_rng(0).uniform(size=(2 * BATCH, SIZE, SIZE, 1)).astype("float32")


def build(name):
    """A tiny compiled model of method `name` with its augmenter (fixed seeds)."""
    import keras_ssl
    from keras_ssl import augment
    from keras_ssl.backbones import ConvNet, ViT

    def convnet():
        return ConvNet(widths=(4, 8), input_channels=1)

    def crops(seed, sizes=(SIZE, SIZE)):
        return augment.MultiViewAugment(
            [
                [
                    augment.RandomResizedCrop(size, size, seed=seed + 10 * i),
                    augment.RandomHorizontalFlip(seed=seed + 10 * i + 1),
                ]
                for i, size in enumerate(sizes)
            ]
        )

    dino_kwargs = dict(
        output_dim=16,
        hidden_dim=16,
        bottleneck_dim=8,
        warmup_teacher_temperature_epochs=2,  # the temperature warm-up spans the crash
        freeze_last_layer_epochs=1,
    )
    if name == "simclr":
        model = keras_ssl.SimCLR(convnet(), crops(1), 8, hidden_dim=8)
        optimizer = keras_ssl.optimizers.LARS(0.3, momentum=0.9, weight_decay=1e-6)
    elif name == "mocov2":
        # A queue of 12 keys for batches of 8: the ring buffer wraps around mid-batch.
        model = keras_ssl.MoCoV2(
            convnet(),
            crops(2),
            projection_dim=8,
            hidden_dim=8,
            queue_size=12,
            momentum=0.9,
        )
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=1e-4)
    elif name == "byol":
        model = keras_ssl.BYOL(
            convnet(),
            crops(3),
            projection_dim=8,
            hidden_dim=16,
        )
        optimizer = keras.optimizers.Adam(1e-3)
    elif name == "dino":
        model = keras_ssl.DINO(
            convnet(),
            crops(4),
            **dino_kwargs,
        )
        optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.0, clipnorm=3.0)
    elif name == "dinov2":
        vit = ViT(
            patch_size=4,
            hidden_dim=16,
            depth=1,
            num_heads=2,
            input_channels=1,
            pretrain_image_size=SIZE,
        )
        model = keras_ssl.DINOv2(
            vit,
            crops(5),
            centering="centering",  # the running centres are state that must survive
            seed=6,
            **dino_kwargs,
        )
        optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.0, clipnorm=3.0)
    else:
        raise ValueError(name)
    model.compile(optimizer=optimizer)
    return model


def state(model):
    """Every number a resumed run must reproduce: weights, RNG states, optimizer variables."""
    from keras_ssl.trainer._saving import seed_states

    variables = {}
    for prefix, group in (
        ("weight", model.weights),
        ("rng", seed_states(model)),
        ("optimizer", model.optimizer.variables),
    ):
        for index, variable in enumerate(group):
            value = keras.ops.convert_to_numpy(variable)
            variables[f"{prefix}/{index}/{variable.name}"] = value
    return variables


def _save_state(model, path):
    np.savez(path, **{key.replace("/", "|"): value for key, value in state(model).items()})


def _load_state(path):
    with np.load(path, allow_pickle=False) as data:
        return {key.replace("|", "/"): data[key] for key in data.files}


class _SnapshotAfterEpoch(keras.callbacks.Callback):
    """Copies the checkpoints as they are after epoch `CRASH_AFTER_EPOCH`: a crash's leftovers."""

    def __init__(self, paths, snapshot_paths):
        super().__init__()
        self.paths, self.snapshot_paths = paths, snapshot_paths

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 != CRASH_AFTER_EPOCH:
            return
        for source, target in zip(self.paths, self.snapshot_paths, strict=True):
            if os.path.isdir(source):
                shutil.copytree(source, target)
            else:
                shutil.copy(source, target)
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        assert iterations == CRASH_AFTER_EPOCH * 2, iterations


def _paths(directory, name):
    """The `.keras` file, the backup directory and the weights file."""
    return tuple(
        os.path.join(directory, f"{name}{suffix}")
        for suffix in (".keras", "_backup", ".weights.h5")
    )


def _resume(directory, name):
    """The fresh-process half: continue from the `.keras` file, the weights and the backup."""
    keras_path, backup_dir, weights_path = _paths(directory, name)
    x = _images()

    def finish(model, how, **fit_kwargs):
        model.fit(x, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, **fit_kwargs)
        _save_state(model, os.path.join(directory, f"{name}_from_{how}.npz"))

    finish(keras.saving.load_model(keras_path), "keras", initial_epoch=CRASH_AFTER_EPOCH)
    model = build(name)  # compiled: its optimizer is built by load_weights, not by a step
    model.load_weights(weights_path)
    finish(model, "weights", initial_epoch=CRASH_AFTER_EPOCH)
    finish(build(name), "backup", callbacks=[keras.callbacks.BackupAndRestore(backup_dir)])


def _straight_run(directory, name):
    """Trains N steps straight, leaving the epoch-1 checkpoints in `directory`."""
    running = _paths(os.path.join(directory, "running"), name)
    callbacks = [
        keras.callbacks.BackupAndRestore(running[1], delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(running[0]),
        keras.callbacks.ModelCheckpoint(running[2], save_weights_only=True),
        _SnapshotAfterEpoch(running, _paths(directory, name)),
    ]
    model = build(name)
    model.fit(
        _images(), batch_size=BATCH, epochs=EPOCHS, shuffle=False, callbacks=callbacks, verbose=0
    )
    return state(model)


def _compare(expected, actual, label):
    assert sorted(expected) == sorted(actual), (label, set(expected) ^ set(actual))
    worst = {}
    for key, value in expected.items():
        if value.dtype.kind in "iub":
            np.testing.assert_array_equal(actual[key], value, err_msg=f"{label}: {key}")
            continue
        np.testing.assert_allclose(
            actual[key], value, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f"{label}: {key}"
        )
        worst[key] = float(np.max(np.abs(actual[key] - value), initial=0.0))
    return max(worst.values(), default=0.0)


@pytest.mark.slow
def test_every_method_resumes_exactly_in_a_fresh_process(tmp_path):
    directory = str(tmp_path)
    straight = {name: _straight_run(directory, name) for name in METHODS}
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    if keras.backend.backend() == "jax":
        # The three resume paths compile the same programs: JAX's persistent cache compiles
        # each method's once (48 -> 35 s). A cached executable is the same computation.
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    if keras.backend.backend() == "torch":  # the same thread count: the same summation order
        import torch

        env["RESUME_TEST_TORCH_THREADS"] = str(torch.get_num_threads())
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), directory, *METHODS],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = {}
    for name in METHODS:
        expected = straight[name]
        # The run length the schedules follow is the full run's, not the crashed part's.
        total = [v for k, v in expected.items() if k.endswith("total_steps")]
        assert total and int(total[0]) == EPOCHS * 2
        for how in ("keras", "weights", "backup"):
            actual = _load_state(os.path.join(directory, f"{name}_from_{how}.npz"))
            report[f"{name}/{how}"] = _compare(expected, actual, f"{name} resumed from {how}")
        assert any(k.startswith("rng/") for k in expected), name  # augmentation RNG compared
    print(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras_ssl  # noqa: F401  (registers the classes load_model needs)

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(int(os.environ.get("RESUME_TEST_TORCH_THREADS", "1")))
    for method in sys.argv[2:]:
        _resume(sys.argv[1], method)
