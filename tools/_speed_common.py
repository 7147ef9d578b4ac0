"""What both sides of `tools/benchmark_speed.py` share: the work, the data, the protocol.

Imported by the keras_ssl worker (inside `tools/benchmark_speed.py`) and by the lightly
worker (`tools/_lightly_reference.py`, run by the speed venv's Python, which has no
keras_ssl): standard library and NumPy only.

A worker is a long-lived subprocess. It builds its model from a *spec* (a JSON dict on its
command line), answers `ready` with its parameter counts and first-step time, then obeys
one JSON command per stdin line and answers each with one stdout line that starts with
`PREFIX` (other stdout lines, a library's chatter, are ignored by the orchestrator).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

PREFIX = "@@SPEED "

# glibc settings that stop large buffers being returned to the OS and re-faulted every step
# (measured here: 2-2.7 million minor page faults per SimCLR step in a default torch process).
# One arena: XLA:CPU allocates from its worker threads, whose per-thread arenas give freed
# memory back even with the settings above (1.25 million faults per JAX DINO ViT step, 5.6 s;
# with MALLOC_ARENA_MAX=1: none, 5.2 s).
MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
    "MALLOC_ARENA_MAX": "1",
}

# Backbones both sides can build with the same parameters. ResNets: torchvision layout
# (keras_ssl.backbones.ResNet mirrors it); "cifar" = 3x3 stride-1 stem without max-pool.
RESNETS = {
    "resnet10_cifar": ("basic", (1, 1, 1, 1), "cifar"),
    "resnet18_cifar": ("basic", (2, 2, 2, 2), "cifar"),
    "resnet18": ("basic", (2, 2, 2, 2), "imagenet"),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "imagenet"),
}
# ViTs: (hidden_dim, depth, num_heads); patch size from the spec. timm's layout on the torch
# side (keras_ssl.backbones.ViT uses timm's weight layout).
VITS = {
    "vit_micro": (64, 2, 2),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
}


def feature_dim(backbone):
    if backbone in RESNETS:
        block, blocks, _ = RESNETS[backbone]
        return 512 * (4 if block == "bottleneck" else 1) * 2 ** (len(blocks) - 4)
    return VITS[backbone][0]


def view_sizes(spec):
    """Side of every view of one batch: 2 global views, then DINO's local crops."""
    sizes = [spec["image_size"]] * 2
    if spec["method"] == "dino":
        sizes += [spec["local_size"]] * spec["local_crops"]
    return sizes


def make_views(spec):
    """The pre-made views (float32 NHWC in [0, 1]), identical on both sides (seeded NumPy)."""
    import numpy as np

    rng = np.random.default_rng(spec["seed"])
    batch = spec["batch_size"]
    return [rng.random((batch, s, s, 3), dtype=np.float32) for s in view_sizes(spec)]


def make_images(spec, count):
    """`count` uint8 NHWC images for the augmentation and `fit` phases (seeded NumPy)."""
    import numpy as np

    rng = np.random.default_rng(spec["seed"] + 1)
    size = spec["image_size"]
    return rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def limit_threads(threads):
    """Pins this process to `threads` cores: one rule for every framework's thread pools."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    return cores


def worker_env(base, threads, malloc_tuning, device="cpu"):
    """Environment for a worker subprocess: thread counts, allocator settings, device."""
    env = dict(base)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # every side on the CPU, even on a GPU machine
    # Several workers share one GPU: no framework may take most of its memory up front.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONUNBUFFERED"] = "1"
    if malloc_tuning:
        env.update(MALLOC_ENV)
    else:
        for key in MALLOC_ENV:
            env.pop(key, None)
    return env


# Set by a worker to a function giving its accelerator's peak memory in MiB (None: CPU).
DEVICE_PEAK = None


def usage():
    """Peak resident memory (MiB), peak accelerator memory (MiB or None) and minor page
    faults so far, of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "peak_rss_mb": r.ru_maxrss / 1024.0,
        "peak_device_mb": DEVICE_PEAK() if DEVICE_PEAK else None,
        "minor_faults": r.ru_minflt,
    }


def reply(payload):
    sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def timed(fn, count):
    """Seconds of each of `count` calls of `fn` (which must block until the work is done),
    and the minor page faults per call over them."""
    times = []
    faults = usage()["minor_faults"]
    for _ in range(count):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    faults = (usage()["minor_faults"] - faults) / max(count, 1)
    return times, faults


def first_step(step, warmup):
    """Seconds of the first call of `step` (compilation included), then `warmup` more calls."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup):
        step()
    return first


def serve(worker):
    """The command loop. `worker` has `steps(n)`, `augment(n)`, `fit(n)` returning dicts."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        command = json.loads(line)
        name = command["cmd"]
        if name == "exit":
            reply({"ok": True, **usage()})
            return
        try:
            result = getattr(worker, name)(int(command.get("n", 1)))
            reply({"ok": True, **result})
        except Exception as error:  # reported to the orchestrator, which keeps going
            import traceback

            traceback.print_exc()
            reply({"ok": False, "error": f"{type(error).__name__}: {error}"})


def fail(error):
    """Reports a set-up failure (before `ready`) and exits."""
    import traceback

    traceback.print_exc()
    reply({"ready": False, "error": f"{type(error).__name__}: {error}"})
    sys.exit(1)
