"""Augmentation on the host: each data-loading worker, and each epoch of a loader whose
workers start anew, draws its own crops and colours (every worker holds a copy of the
layers' seed states; a torch worker's seed makes them reproducible); concurrent calls from
threads, and a `tf.data` map's parallel calls, draw distinct ones; `augment_with_rng` draws
from the caller's generator alone."""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
import torch

from keras_ssl.augment import SimCLRAugment, augment_with_rng
from tests._support.augment_workers import AugmentingCollate

SIZE = 16
IMAGE = np.random.default_rng(0).uniform(size=(SIZE, SIZE, 3)).astype("float32")


def _augmenter():
    return SimCLRAugment.small_images(SIZE, seed=1)


def _views(augmenter, n=4):
    return [keras.ops.convert_to_numpy(v) for v in augmenter(np.stack([IMAGE] * n))]


def _states(augmenter):
    return [
        keras.ops.convert_to_numpy(layer.generator.state.value)
        for layer in augmenter._flatten_layers(include_self=True, recursive=True)
        if hasattr(layer, "generator")
    ]


class _WorkerInfo:
    def __init__(self, seed):
        self.seed = seed


def _in_worker(monkeypatch, seed):
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: _WorkerInfo(seed))


def test_the_process_that_made_the_layers_keeps_their_seeds():
    for a, b in zip(_views(_augmenter()), _views(_augmenter()), strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_torch_worker_draws_its_own_stream(monkeypatch):
    main = _views(_augmenter())
    per_worker = {}
    for seed in (2**40 + 17, 2**40 + 18, 2**40 + 17):  # two workers; the first again
        augmenter = _augmenter()  # made in the main process; a worker holds a copy
        _in_worker(monkeypatch, seed)
        views = _views(augmenter)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: None)
        assert all(not np.allclose(v, m) for v, m in zip(views, main, strict=True))
        if seed in per_worker:  # the same worker seed (torch.manual_seed): the same stream
            for a, b in zip(views, per_worker[seed], strict=True):
                np.testing.assert_array_equal(a, b)
        per_worker.setdefault(seed, views)
    first, second = per_worker.values()
    assert all(not np.allclose(a, b) for a, b in zip(first, second, strict=True))


def test_sublayers_get_distinct_seeds(monkeypatch):
    augmenter = _augmenter()
    before = _states(augmenter)
    _in_worker(monkeypatch, 12345)
    _views(augmenter)
    after = _states(augmenter)
    seeds = [int(state[0]) for state in after]
    assert len(set(seeds)) == len(seeds)  # no two layers share a stream
    assert all(int(a[0]) != int(b[0]) for a, b in zip(after, before, strict=True))
    # Later calls in the same worker continue the stream instead of reseeding again.
    again = _states(augmenter)
    _views(augmenter)
    assert [int(s[0]) for s in _states(augmenter)] == [int(s[0]) for s in again]


def test_a_forked_process_reseeds(monkeypatch):
    main = _views(_augmenter())
    augmenter = _augmenter()
    monkeypatch.setattr(os, "getpid", lambda: 4_000_000)  # another process, not a torch worker
    views = _views(augmenter)
    assert all(not np.allclose(v, m) for v, m in zip(views, main, strict=True))


def _loader_batches(start_method, epochs):
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        [IMAGE] * 8,
        batch_size=2,
        num_workers=2,
        collate_fn=AugmentingCollate(_augmenter()),
        multiprocessing_context=start_method,
    )
    return [view for _ in range(epochs) for view in (batch[0] for batch in loader)]


def test_real_workers_draw_different_and_reproducible_views():
    # JAX and TensorFlow run threads that a forked worker cannot use: their workers spawn.
    start_method = "fork" if keras.backend.backend() == "torch" else "spawn"
    batches = _loader_batches(start_method, epochs=2)
    assert len(batches) == 8  # 4 batches (workers alternate) x 2 epochs, identical images
    for i in range(len(batches)):
        for j in range(i):
            assert not np.allclose(batches[i], batches[j]), (i, j)
    # The same torch seed, the same views (one epoch: each one spawns two workers).
    for a, b in zip(batches[:4], _loader_batches(start_method, epochs=1), strict=True):
        np.testing.assert_array_equal(a, b)


def test_concurrent_calls_draw_distinct_views():
    # grain's and a threaded PyDataset's pools call one recipe from several threads: two
    # calls must not read the same seed state (on JAX they did, every call the same crops).
    augmenter = _augmenter()
    with ThreadPoolExecutor(4) as pool:
        views = list(pool.map(lambda _: _views(augmenter)[0], range(12)))
    for i in range(len(views)):
        for j in range(i):
            assert not np.allclose(views[i], views[j]), (i, j)


def _brightness_factors(jitter, batches, parallel_calls):
    """Each batch's per-image brightness factors from a `tf.data` map of `jitter`: one row
    a batch, in the data set's order."""
    import tensorflow as tf

    images = np.full((4 * batches, 1, 1, 1), 0.5, "float32")
    mapped = tf.data.Dataset.from_tensor_slices(images).batch(4)
    mapped = mapped.map(jitter, num_parallel_calls=parallel_calls)
    return np.stack([batch.numpy().reshape(-1) for batch in mapped]) / 0.5


def test_parallel_tf_data_map_calls_draw_distinct_parameters():
    # Keras reads a seed state, then writes it back advanced: two map calls at once read the
    # same state, and their batches got the same brightness factors (4 to 15 in 1000).
    from keras_ssl.augment import ColorJitter

    rows = _brightness_factors(ColorJitter(brightness=0.4, seed=1), 4000, parallel_calls=16)
    distinct = len(np.unique(rows, axis=0))
    assert distinct == 4000


def test_sequential_tf_data_map_draws_what_keras_draws(monkeypatch):
    # The draws of a map run one call at a time are Keras's own, reproducible from the seed.
    from keras_ssl.augment import ColorJitter, _base

    sequential = _brightness_factors(ColorJitter(brightness=0.4, seed=1), 8, None)
    np.testing.assert_array_equal(
        sequential, _brightness_factors(ColorJitter(brightness=0.4, seed=1), 8, None)
    )
    assert len(np.unique(sequential, axis=0)) == 8
    monkeypatch.setattr(_base, "_in_tf_graph_outside_xla", lambda: False)  # Keras's draws
    keras_draws = _brightness_factors(ColorJitter(brightness=0.4, seed=1), 8, None)
    np.testing.assert_array_equal(sequential, keras_draws)


def test_augment_with_rng_depends_on_the_generator_alone():
    images = np.stack([IMAGE] * 4)
    first = augment_with_rng(_augmenter(), images, np.random.default_rng(7))
    used = _augmenter()
    _views(used)  # a recipe that has drawn before, and one made with another seed
    other_seed = SimCLRAugment.small_images(SIZE, seed=99)
    for augmenter in (used, other_seed):
        again = augment_with_rng(augmenter, images, np.random.default_rng(7))
        assert isinstance(again, tuple) and len(again) == 2
        for a, b in zip(first, again, strict=True):
            assert isinstance(b, np.ndarray)
            np.testing.assert_array_equal(a, b)
    different = augment_with_rng(used, images, np.random.default_rng(8))
    assert all(not np.allclose(a, b) for a, b in zip(first, different, strict=True))
    # Every sublayer draws its own stream: the two views of one call differ.
    assert not np.allclose(first[0], first[1])


def test_augment_with_rng_names_bad_arguments():
    images = np.stack([IMAGE] * 2)
    with pytest.raises(TypeError, match="numpy.random.Generator.*default_rng"):
        augment_with_rng(_augmenter(), images, 7)
    with pytest.raises(TypeError, match="keras_ssl augmentation layer"):
        augment_with_rng(keras.layers.RandomFlip(), images, np.random.default_rng(0))


def _grain_views(dataset):
    return [view for batch in dataset for view in batch]


def test_grain_random_map_gives_the_same_views_with_threads_and_workers():
    import grain  # a dev dependency
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    views = (
        grain.MapDataset.source(np.stack([IMAGE] * 16))
        .batch(4)
        .random_map(functools.partial(augment_with_rng, _augmenter()), seed=0)
    )
    sequential = _grain_views(views)
    assert len(sequential) == 8
    for i in range(len(sequential)):
        for j in range(i):
            assert not np.allclose(sequential[i], sequential[j]), (i, j)
    threaded = _grain_views(views.to_iter_dataset())  # grain's reader threads
    workers = _grain_views(
        views.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    )
    for a, b, c in zip(sequential, threaded, workers, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_a_forked_child_gets_the_lock_unheld():
    # A worker forked while another thread holds the lock (a Keras PyDataset's pool starts
    # its processes from a thread) would otherwise wait forever at its first call.
    import threading

    from keras_ssl.augment._random_streams import eager_calls

    held, release = threading.Event(), threading.Event()

    def draw():
        with eager_calls():
            held.set()
            release.wait()

    thread = threading.Thread(target=draw)
    thread.start()
    held.wait()
    pid = os.fork()
    if pid == 0:  # the child: only Python-level work, then out
        os._exit(0 if eager_calls().acquire(timeout=2) else 1)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
