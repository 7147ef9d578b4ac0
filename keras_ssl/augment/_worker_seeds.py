"""Augmentation layers' random streams in data-loading worker processes.

A torch `DataLoader` (or a Keras `PyDataset` with `use_multiprocessing=True`, or grain)
runs the augmentation in worker processes, each holding a copy of the layers, seed
generator states included: without a reseed every worker would draw the same crops and
colours, and a loader whose workers start anew each epoch would repeat its first epoch's.
So the first call in a new stream reseeds every generator of the called layer and of its
sublayers:

- in a torch `DataLoader` worker (any start method), from the worker's seed, which torch
  draws per worker and per epoch from the main process's torch generator: reproducible
  under `torch.manual_seed`, as torch's own random ops in workers are;
- in any other process forked after the layer was made, from fresh entropy.

Each generator's new seed also depends on its own state, so layers keep distinct streams.
In the process that made the layers nothing changes. Not covered: a worker process that is
spawned (not forked) outside a torch `DataLoader` (a `PyDataset` under the spawn start
method) rebuilds the layers from their config, and a recipe with a fixed `seed` then draws
the same in every such worker; one built without a seed draws from fresh entropy there.
"""

import os
import secrets
import sys

import keras
import numpy as np


def current_stream():
    """The stream this process draws from, `(process id, torch DataLoader worker seed or
    None)`; compared against the stream a layer last drew in."""
    torch = sys.modules.get("torch")  # a torch worker means torch is imported already
    info = torch.utils.data.get_worker_info() if torch is not None else None
    return (os.getpid(), None if info is None else int(info.seed))


def reseed_for_stream(layers, stream):
    """Gives each layer in `layers` (augmentation layers with `generator`s) a new seed for
    `stream`, and marks it as drawing in it."""
    worker_seed = stream[1] if stream[1] is not None else secrets.randbits(63)
    for layer in layers:
        generators = [layer.generator, *getattr(layer, "_backend_generators", {}).values()]
        for generator in generators:
            state = np.asarray(keras.ops.convert_to_numpy(generator.state.value)).astype("int64")
            generator.state.assign(
                np.array(
                    [_mix(worker_seed, *state.tolist()), 0],
                    dtype=keras.backend.standardize_dtype(generator.state.dtype),
                )
            )
        layer._random_stream = stream


def _mix(*values):
    """A seed in [1, 2**31 - 1) from integers of any size (a 64-bit worker seed included)."""
    mixed = 0
    for value in values:
        mixed = (mixed * 1000003 + int(value) % (2**61 - 1) + 7919) % (2**31 - 1)
    return mixed or 1
