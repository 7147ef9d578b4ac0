"""
Title: Data-parallel pretraining on every backend's own engine
Author: keras_ssl developers
Date created: 2026/11/28
Last modified: 2026/11/28
Description: SimCLR on several devices: JAX DataParallel, tf.distribute, torchrun.
Accelerator: GPU
"""

"""
## Introduction

When one device is not enough, keras_ssl trains data-parallel on the engine of the backend
you already use:

- JAX: `keras.distribution.DataParallel` on a device mesh, one program over the global
  batch; one process per host.
- TensorFlow: `tf.distribute.MirroredStrategy` on one host, `MultiWorkerMirroredStrategy`
  across hosts (`TF_CONFIG`); one process per host.
- PyTorch: `torch.distributed` (gloo on CPU, NCCL on GPU) started by `torchrun`; one process
  per device.

`keras_ssl.distributed.data_parallel()` starts the right one. What it guarantees: **one
step on `W` replicas with `B / W` images each equals one step on one device with the
`B` images** (the test suite checks loss, gradients, teacher, queue and centre to 1e-5
for SimCLR, MoCo-v2, BYOL and DINO on all three backends). That takes care in
self-supervised learning:

- SimCLR's negatives are the views of the *global* batch: each replica gathers every
  replica's embeddings (`keras_ssl.ops.distributed.all_gather`) and the gradients flow
  back to the replica that computed them. Each replica's loss is the mean over its own
  anchors; the gather's backward pass sums what every replica's loss sends to the local
  shard, and the train step averages the replicas' gradients: the result is the
  single-device gradient for any number of replicas (no 1/W factor lost or doubled).
- MoCo's queue receives the keys of the whole global batch, in the same order as on one
  device, so every replica holds the same queue.
- DINO's centre is the mean over the global batch; DINOv2's Sinkhorn-Knopp normalises
  over the global batch, KoLeo finds nearest neighbours in it, and the iBOT masks are
  the ones one device would draw (with DINOv2's `seed=` set, every replica draws the
  global batch's masks and keeps its rows).
- Batch norm normalises each replica's shard unless you convert it:
  `keras_ssl.distributed.convert_sync_batchnorm(model)` makes every `BatchNormalization`
  a `SyncBatchNormalization` that uses the global batch's statistics (SimCLR's "global
  BN"), on TensorFlow and PyTorch; on JAX the program already normalises over the global
  batch, so batch norm is synchronised by construction.
- Gradient clipping (`clipnorm`) sees the global gradient.

On one device none of this adds an op: every collective returns its input unchanged.

Two things stay per replica. Augmentations drawn inside the model use each replica's
random state (on TensorFlow every replica has the same state, so the i-th image of each
replica gets the same crop; on PyTorch seed each process differently, as below). And the
last, smaller batch of an epoch, if its share differs between replicas, is averaged per
replica; feed batches that divide evenly.

## Set-up

Each engine must be set up before the backend starts, so the first lines depend on the
backend. In its small mode (`KERAS_SSL_GUIDE_SMALL=1`, how the test suite runs it) this
guide simulates two devices on the CPU: two virtual host devices for JAX, the CPU split
into two logical devices for TensorFlow, two gloo processes for PyTorch.
"""

import os
import subprocess
import sys

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
SMALL = os.environ.get("KERAS_SSL_GUIDE_SMALL") == "1"
OUTPUT = os.environ.get("KERAS_SSL_GUIDE_OUTPUT", "guide_outputs")
NUM_DEVICES = 2 if SMALL else None  # None: every device there is

if BACKEND == "jax" and SMALL:
    # Before JAX is imported (`import keras` imports it): 2 virtual devices on the CPU.
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()

if BACKEND == "torch" and "RANK" not in os.environ:
    # PyTorch runs one process per device. Started without torchrun, the guide starts
    # itself under torchrun: `torchrun --standalone --nproc_per_node=N this_script.py`.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={NUM_DEVICES or 'gpu'}", __file__]
    sys.exit(subprocess.run(command).returncode)

"""
## Start the engine

`data_parallel()` returns an engine object: build and compile the model in
`engine.scope()` (the strategy scope on TensorFlow), give `fit` this process's share of
the data (`engine.shard`) and this process's batch size (`engine.batch_size`).
`engine.shard` takes arrays, or a `keras_ssl.data.image_folder` data set built with the
same `seed` in every process (each process then reads its own images of each epoch's
shuffled order).
"""

import json

import keras
import numpy as np

import keras_ssl
from keras_ssl.datasets import fashion_mnist

engine = keras_ssl.distributed.data_parallel(num_devices=NUM_DEVICES, split_cpu=SMALL)
print(engine)
# Different augmentations in every process; fit copies process 0's weights to the others.
keras.utils.set_random_seed(engine.process_index)
os.makedirs(OUTPUT, exist_ok=True)

"""
## The data

The embedded Fashion-MNIST subset. Every process loads it; on PyTorch `engine.shard`
keeps a contiguous, equal share per process so that all processes run the same number
of steps. With TensorFlow and JAX on one host the engine splits each global batch.
"""

(x_train, _), _ = fashion_mnist.load_data(source="embedded")
x_train = x_train[: 512 if SMALL else 10000, ..., None]
GLOBAL_BATCH = 64 if SMALL else 512

"""
## The model, with synchronised batch norm

The same SimCLR as on one device. `convert_sync_batchnorm` turns the backbone's and the
projection head's batch norm into the global-batch version (a no-op on JAX and with one
replica). NT-Xent gathers the negatives of the global batch by itself.
"""

with engine.scope():
    model = keras_ssl.SimCLR(
        keras_ssl.backbones.ConvNet(
            widths=(16, 32) if SMALL else (32, 64, 128, 256), input_channels=1
        ),
        augmenter=keras_ssl.augment.SimCLRAugment.small_images(28),
        temperature=0.5,
    )
    keras_ssl.distributed.convert_sync_batchnorm(model)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3 * GLOBAL_BATCH / 256, weight_decay=1e-4))

"""
## Train

`batch_size` is what this process feeds: the global batch on TensorFlow and on one JAX
host, the global batch divided by the number of processes on PyTorch. The logged loss
is the global batch's on every process.
"""

history = model.fit(
    engine.shard(x_train),
    batch_size=engine.batch_size(GLOBAL_BATCH),
    epochs=1 if SMALL else 20,
    steps_per_epoch=3 if SMALL else None,
    verbose=2 if engine.is_chief else 0,
)
assert np.isfinite(history.history["loss"]).all()

"""
## Save from one process

Every replica holds the same weights: let process 0 write them.
"""

if engine.is_chief:
    with open(os.path.join(OUTPUT, f"distributed_history_{BACKEND}.json"), "w") as f:
        json.dump({"engine": repr(engine), **history.history}, f)
    model.backbone.save_weights(os.path.join(OUTPUT, "distributed_backbone.weights.h5"))
    print("loss", history.history["loss"])

"""
## Run it on real hardware

- **JAX**, one host: `KERAS_BACKEND=jax python train.py` uses every accelerator.
  Several hosts: call `keras.distribution.initialize()` (it wraps
  `jax.distributed.initialize`) on each, then `data_parallel()`; each host feeds its
  share (`engine.shard`, `engine.batch_size`).
- **TensorFlow**, one host: `KERAS_BACKEND=tensorflow python train.py` mirrors over every
  GPU. Several hosts: set `TF_CONFIG` on each worker; `data_parallel()` then starts a
  `MultiWorkerMirroredStrategy`.
- **PyTorch**: `KERAS_BACKEND=torch torchrun --nproc_per_node=8 train.py` (add `--nnodes`,
  `--rdzv-endpoint` for several hosts); NCCL on GPUs, gloo on CPUs.

Per-replica batches must be equal for the single-device equivalence (the last partial
batch of an epoch is the exception; drop it with `steps_per_epoch` or a `tf.data`
`drop_remainder=True`).
"""
