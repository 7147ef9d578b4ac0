"""Augmentation in data-loading worker processes: each worker, and each epoch of a loader
whose workers start anew, draws its own crops and colours (every worker holds a copy of
the layers' seed states); a torch worker's seed makes them reproducible."""

import os
import time

import keras
import numpy as np
import torch

from keras_ssl.augment import SimCLRAugment
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


def _loader_batches(start_method):
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        [IMAGE] * 8,
        batch_size=2,
        num_workers=2,
        collate_fn=AugmentingCollate(_augmenter()),
        multiprocessing_context=start_method,
    )
    return [view for _ in range(2) for view in (batch[0] for batch in loader)]  # two epochs


def test_real_workers_draw_different_and_reproducible_views():
    # JAX and TensorFlow run threads that a forked worker cannot use: their workers spawn.
    start_method = "fork" if keras.backend.backend() == "torch" else "spawn"
    started = time.perf_counter()
    batches = _loader_batches(start_method)
    assert len(batches) == 8  # 4 batches (workers alternate) x 2 epochs, identical images
    for i in range(len(batches)):
        for j in range(i):
            assert not np.allclose(batches[i], batches[j]), (i, j)
    for a, b in zip(batches, _loader_batches(start_method), strict=True):
        np.testing.assert_array_equal(a, b)
    print(f"{time.perf_counter() - started:.1f} s")
