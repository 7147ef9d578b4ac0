"""Augmentation layers' random streams on the host: in data-loading worker processes and
threads, and from a caller's random generator.

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

An eager call reads its generators' states, draws, and writes them back advanced: calls from
several threads (grain's and a threaded `PyDataset`'s pools) take turns (`eager_calls()`), or
two would read the same state and draw the same crops. In a TensorFlow graph that XLA does not
compile, a `tf.data` map above all, whose calls `num_parallel_calls` runs at once, each draw
reads and advances its generator's state as one step under a TensorFlow mutex of that
generator (`next_seed_atomically`). Either way the draws are distinct, but which call gets
which depends on thread timing: sequential calls alone are reproducible from the seeds.
Compiled train steps run one call at a time and take no lock.
"""

import os
import secrets
import sys
import threading
import weakref

import keras
import numpy as np

_eager_calls = threading.RLock()


def eager_calls():
    """The lock an eager call holds while it draws and advances its generators' states."""
    return _eager_calls


def _unlocked_in_a_forked_child():
    # A fork copies the lock as it is: held, if another thread was drawing at that moment,
    # and then never released in the child.
    global _eager_calls
    _eager_calls = threading.RLock()


os.register_at_fork(after_in_child=_unlocked_in_a_forked_child)


# One TensorFlow mutex (`tf.CriticalSection`) per seed generator drawn from in a TF graph.
_graph_locks = weakref.WeakKeyDictionary()


def next_seed_atomically(generator):
    """Keras's `SeedGenerator.next()` in a TensorFlow graph, as one step: the seed state
    before the call (the seed of this draw), the state advanced by one. Concurrent calls
    of the graph (a `tf.data` map with `num_parallel_calls`) take turns, where Keras's read
    then assign lets two of them read the same state and draw the same parameters."""
    import tensorflow as tf

    lock = _graph_locks.get(generator)
    if lock is None:  # TensorFlow makes its mutex outside the graph being traced
        lock = _graph_locks[generator] = tf.CriticalSection(name="seed_generator_lock")
    state = generator.state.value  # the tf.Variable

    def read_and_advance():
        seed = tf.identity(state.read_value())
        with tf.control_dependencies([seed]):
            advanced = state.assign_add(tf.constant([0, 1], state.dtype), read_value=False)
        # Returned after the assignment, so that the mutex is held until it is done.
        with tf.control_dependencies([advanced]):
            return tf.identity(seed)

    return lock.execute(read_and_advance)


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
    for generator in _generators(layers):
        state = np.asarray(keras.ops.convert_to_numpy(generator.state.value)).astype("int64")
        _set_seed(generator, _mix(worker_seed, *state.tolist()))
    for layer in layers:
        layer._random_stream = stream


def reseed(layers, seed):
    """Restarts the generators of `layers` from `seed` alone: the `i`-th generator's state
    becomes `(mix(seed, i), 0)`, whatever it was. Marks the layers as drawing in this
    process's stream."""
    stream = current_stream()
    for index, generator in enumerate(_generators(layers)):
        _set_seed(generator, _mix(seed, index))
    for layer in layers:
        layer._random_stream = stream


def _generators(layers):
    return [
        generator
        for layer in layers
        for generator in (layer.generator, *getattr(layer, "_backend_generators", {}).values())
    ]


def _set_seed(generator, seed):
    dtype = keras.backend.standardize_dtype(generator.state.dtype)
    generator.state.assign(np.array([seed, 0], dtype=dtype))


def _mix(*values):
    """A seed in [1, 2**31 - 1) from integers of any size (a 64-bit worker seed included)."""
    mixed = 0
    for value in values:
        mixed = (mixed * 1000003 + int(value) % (2**61 - 1) + 7919) % (2**31 - 1)
    return mixed or 1
