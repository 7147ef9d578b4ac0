"""Speed of keras_ssl against lightly + PyTorch on the same machine, the same work, one run.

For SimCLR, MoCo-v2, BYOL and DINO (ResNet and ViT) this times, on every Keras backend
(A) and in lightly 1.6 + torch (B):

- `step`: the train step on pre-made views (forward, loss, backward, optimizer, EMA
  teacher / queue / centre), the number issue #7 compares; DINO's in its steady state,
  after the first epoch's freeze of the head's last layer (no side skips its update);
- `augment`: augmentation throughput alone (keras_ssl's augmenter called eagerly on a
  batch; lightly's torchvision transform image by image, as its DataLoader does);
- `fit`: the whole training loop with augmentation from uint8 images (`model.fit` on
  keras_ssl; a DataLoader with lightly's transform and the step on lightly);
- the first step (tracing / XLA compilation) separately, peak resident memory and minor
  page faults per step of every worker process.

Each side runs in its own long-lived subprocess (KERAS_BACKEND is read at import; the
lightly side runs in its own virtual environment, `tools/.speed-venv`, which
`--setup-venv` creates). The sides of one method are timed in interleaved rounds (A, B,
C, ... then again in rotated order) so that the machine's drift hits all of them alike;
the table gives medians with the inter-quartile range, and the ratio keras_ssl /
lightly in images per second as the median of the per-round ratios. The lightly worker
stays up for a whole method while the Keras backends take turns beside it, one at a time
(a DINO worker holds several GiB), each interleaved with lightly's rounds of its turn.
FLOPs per image are counted once, with torch's `FlopCounterMode` on the lightly model's
forward + backward, and used for both sides (achieved GFLOP/s). Both sides get the same
cores (process affinity), the same thread counts and the same glibc allocator settings
(`MALLOC_MMAP_MAX_=0 ...`, see `_speed_common.MALLOC_ENV`; `--no-malloc-tuning` drops
them for both).

Outputs in `--output-dir`: `speed.md` (tables, machine, versions, settings),
`speed.json` (every number, every per-step time) and `workers/*.log` (each worker's
stderr).

    python tools/benchmark_speed.py --setup-venv          # once: lightly 1.6 + CPU torch
    python tools/benchmark_speed.py --output-dir bench_speed
    python tools/benchmark_speed.py --quick               # a smoke run, about a minute
    python tools/benchmark_speed.py --methods simclr --backends jax --rounds 9

Timings on a busy machine are noise: check the load average that the report records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

import _speed_common as common  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")
LIGHTLY = "lightly"
PHASES = ("step", "augment", "fit")
# Benchmark entries: method of the work, and which backbone option it uses.
METHODS = {
    "simclr": ("simclr", "backbone"),
    "mocov2": ("mocov2", "backbone"),
    "byol": ("byol", "backbone"),
    "dino": ("dino", "backbone"),
    "dino_vit": ("dino", "vit"),
}
METHOD_TITLES = {
    "simclr": "SimCLR",
    "mocov2": "MoCo-v2",
    "byol": "BYOL",
    "dino": "DINO",
    "dino_vit": "DINO (ViT)",
}
DEFAULT_VENV = TOOLS / ".speed-venv"
VENV_PACKAGES = ("lightly==1.6.0", "torch==2.13.0", "torchvision==0.28.0", "timm", "numpy")


# ---- the work ------------------------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"from {list(METHODS)}")
    p.add_argument("--backends", default=",".join(BACKENDS), help="Keras backends to time")
    p.add_argument("--no-lightly", action="store_true", help="time keras_ssl only")
    p.add_argument("--backbone", default=None, help=f"ResNet: {sorted(common.RESNETS)}")
    p.add_argument("--vit", default=None, help=f"ViT for dino_vit: {sorted(common.VITS)}")
    p.add_argument("--patch-size", type=int, default=None, help="ViT patch (default 4)")
    p.add_argument("--image-size", type=int, default=None, help="global view side (32)")
    p.add_argument("--local-size", type=int, default=None, help="DINO local crop side (16)")
    p.add_argument("--local-crops", type=int, default=None, help="DINO local crops (6)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (256)")
    p.add_argument(
        "--dino-batch-size", type=int, default=None, help="images per DINO step (64; 8 crops each)"
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (3)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (2)")
    p.add_argument("--augment-batches", type=int, default=None, help="per round (1)")
    p.add_argument("--fit-steps", type=int, default=None, help="fit steps per round (4)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"from {list(PHASES)}")
    p.add_argument("--threads", type=int, default=None, help="cores per side (all)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto")
    p.add_argument("--torch-channels-last", action="store_true", help="lightly side only")
    p.add_argument("--dino-output-dim", type=int, default=None, help="prototypes (65536)")
    p.add_argument("--no-flops", action="store_true", help="skip FlopCounterMode")
    p.add_argument("--no-malloc-tuning", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker reply")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="lightly's virtual environment")
    p.add_argument("--lightly-python", default=None, help="interpreter for lightly (not --venv)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="both sides")
    p.add_argument("--setup-venv", action="store_true", help="create the venv if missing")
    p.add_argument("--output-dir", default="bench_speed")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: ResNet-10 / micro ViT at 16 px, batch 8, 1 step x 2 rounds",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def _resolve(args):
    quick = dict(
        backbone="resnet10_cifar",
        vit="vit_micro",
        patch_size=4,
        image_size=16,
        local_size=8,
        local_crops=2,
        batch_size=8,
        dino_batch_size=8,
        steps=1,
        rounds=2,
        warmup=0,
        augment_batches=1,
        fit_steps=2,
        dino_output_dim=256,
    )
    full = dict(
        backbone="resnet18_cifar",
        vit="vit_tiny",
        patch_size=4,
        image_size=32,
        local_size=16,
        local_crops=6,
        batch_size=256,
        dino_batch_size=64,
        steps=3,
        rounds=5,
        warmup=2,
        augment_batches=1,
        fit_steps=4,
        dino_output_dim=65536,
    )
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    args.methods = _split(args.methods, METHODS, "method")
    args.backends = _split(args.backends, BACKENDS, "backend")
    args.phases = _split(args.phases, PHASES, "phase")
    if "step" not in args.phases:
        raise SystemExit("--phases must include 'step' (the other phases are compared to it).")
    if args.backbone not in common.RESNETS:
        raise SystemExit(
            f"Unknown --backbone {args.backbone!r}; use one of {sorted(common.RESNETS)}."
        )
    if args.vit not in common.VITS:
        raise SystemExit(f"Unknown --vit {args.vit!r}; use one of {sorted(common.VITS)}.")
    return args


def _split(text, known, what):
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in known]
    if unknown or not values:
        raise SystemExit(f"Unknown {what}s {unknown or text!r}; choose from {list(known)}.")
    return values


def head_sizes(method, backbone, quick, dino_output_dim):
    """Head widths of each method (the papers' unless --quick), the same on both sides."""
    features = common.feature_dim(backbone)
    if method in ("simclr", "mocov2"):
        return {"hidden_dim": features, "projection_dim": 128}
    if method == "byol":
        return {"hidden_dim": 64 if quick else 4096, "projection_dim": 32 if quick else 256}
    return {
        "hidden_dim": 64 if quick else 2048,
        "bottleneck_dim": 32 if quick else 256,
        "output_dim": dino_output_dim,
    }


def spec_for(entry, options=()):
    """`make_spec` for one entry, from this tool's command-line options (the step phase
    only), for the tools that time or profile a part of its work."""
    return make_spec(_resolve(_parser().parse_args(["--phases", "step", *options])), entry)


def make_spec(args, entry):
    """Everything a worker needs to build and time one benchmark entry."""
    method, backbone_option = METHODS[entry]
    backbone = args.vit if backbone_option == "vit" else args.backbone
    return {
        "entry": entry,
        "method": method,
        "backbone": backbone,
        "patch_size": args.patch_size,
        "image_size": args.image_size,
        "local_size": args.local_size,
        "local_crops": args.local_crops if method == "dino" else 0,
        "batch_size": args.dino_batch_size if method == "dino" else args.batch_size,
        "heads": head_sizes(method, backbone, args.quick, args.dino_output_dim),
        # Same optimizers on both sides: SGD + momentum for the two-view methods (no weight
        # decay), AdamW with per-parameter clipping at 3.0 and DINO's cosine decay for DINO.
        "learning_rate": 5e-4 if method == "dino" else 0.06,
        "queue_size": 4096 if not args.quick else 64,
        "warmup": args.warmup,
        "phases": args.phases,
        "threads": args.threads,
        "precision": args.precision,
        "jit_compile": args.jit_compile,
        "channels_last": args.torch_channels_last,
        "device": args.device,
        "flops": not args.no_flops,
        "seed": args.seed,
        "total_steps": 1000,  # length of the schedules (EMA momentum, DINO's decay)
    }


# ---- side A: the keras_ssl worker -------------------------------------------------------------
class KerasWorker:
    """Builds one keras_ssl method on the current backend and times it on command."""

    def __init__(self, spec):
        self.spec = spec
        self.cores = common.limit_threads(spec["threads"])
        import keras

        self.backend = keras.backend.backend()
        if self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
            tf.config.threading.set_inter_op_parallelism_threads(spec["threads"])
        elif self.backend == "torch":
            import torch

            torch.set_num_threads(spec["threads"])
        if spec["precision"] == "bfloat16":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        keras.utils.set_random_seed(spec["seed"])
        self.keras = keras
        self.model = self._build()
        views = common.make_views(spec)
        self.views = tuple(keras.ops.convert_to_tensor(v) for v in views)
        batch = spec["batch_size"]
        self.images = common.make_images(spec, batch * max(1, 64 // max(batch, 1) + 1))
        self.float_images = keras.ops.convert_to_tensor(
            self.images[:batch].astype("float32") / 255.0
        )

    def _backbone(self):
        import keras_ssl

        spec = self.spec
        name = spec["backbone"]
        if name in common.RESNETS:
            block, blocks, stem = common.RESNETS[name]
            return keras_ssl.backbones.ResNet(
                block_type=block, stackwise_num_blocks=blocks, stem=stem
            )
        hidden, depth, heads = common.VITS[name]
        return keras_ssl.backbones.ViT(
            patch_size=spec["patch_size"],
            hidden_dim=hidden,
            depth=depth,
            num_heads=heads,
            pretrain_image_size=spec["image_size"],
            use_mask_token=False,
        )

    def _augmenter(self):
        from keras_ssl import augment

        spec = self.spec
        size, seed = spec["image_size"], spec["seed"]
        method = spec["method"]
        if method == "simclr":
            return augment.SimCLRAugment.small_images(size, seed=seed)
        if method == "mocov2":
            return augment.MoCoV2Augment.small_images(size, seed=seed)
        if method == "byol":
            return augment.BYOLAugment.small_images(size, seed=seed)
        return augment.DINOMultiCrop.small_images(
            size, local_size=spec["local_size"], num_local_crops=spec["local_crops"], seed=seed
        )

    def _build(self):
        import keras_ssl

        keras = self.keras
        spec = self.spec
        heads = spec["heads"]
        backbone = self._backbone()
        augmenter = (
            self._augmenter() if "fit" in spec["phases"] or "augment" in spec["phases"] else None
        )
        method = spec["method"]
        lr = spec["learning_rate"]
        if method == "simclr":
            model = keras_ssl.SimCLR(backbone, augmenter, temperature=0.5, **heads)
        elif method == "mocov2":
            model = keras_ssl.MoCoV2(
                backbone,
                augmenter,
                queue_size=spec["queue_size"],
                temperature=0.2,
                momentum=0.999,
                **heads,
            )
        elif method == "byol":
            model = keras_ssl.BYOL(backbone, augmenter, momentum=0.996, **heads)
        else:
            # The steady state: the last layer trains (it is frozen in DINO's first epoch
            # only, where lightly's optimizer skips it and Keras's updates it with zeros).
            model = keras_ssl.DINO(backbone, augmenter, freeze_last_layer_epochs=0, **heads)
        if method == "dino":
            optimizer = keras.optimizers.AdamW(lr, weight_decay=0.0, clipnorm=3.0)
        else:
            optimizer = keras.optimizers.SGD(lr, momentum=0.9)
        jit = {"auto": "auto", "true": True, "false": False}[spec["jit_compile"]]
        model.compile(optimizer=optimizer, jit_compile=jit)
        self._set_run_length(model)
        return model

    def _set_run_length(self, model):
        # Schedules (EMA momentum, DINO's decay and temperatures) as in a run of this length.
        # Again after every `fit`, which ends its own run there: train_on_batch would refuse
        # the next round's steps.
        model.set_run_length(self.spec["total_steps"], self.spec["total_steps"])

    def parameters(self):
        model = self.model
        count = lambda variables: int(sum(int(_size(v.shape)) for v in variables))  # noqa: E731
        return {
            "backbone": count(model.backbone.trainable_weights),
            "trainable": count(model.trainable_variables),
        }

    def versions(self):
        import keras
        import numpy

        import keras_ssl

        module = __import__(self.backend)
        return {
            "keras_ssl": keras_ssl.__version__,
            "keras": keras.__version__,
            self.backend: module.__version__,
            "numpy": numpy.__version__,
        }

    def _step(self):
        self.model.train_on_batch(self.views)  # returns NumPy logs: waits for the step

    def first_step(self):
        return common.first_step(self._step, self.spec["warmup"])

    def flops(self):
        """FLOPs of one step counted by torch on the torch backend (a cross-check)."""
        if self.backend != "torch" or not self.spec["flops"]:
            return None
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self._step()
        return int(counter.get_total_flops())

    def step(self, n):
        times, faults = common.timed(self._step, n)
        return {"times": times, "minor_faults_per_step": faults}

    def augment(self, n):
        augmenter = self.model.augmenter
        ops = self.keras.ops

        def once():
            views = augmenter(self.float_images, training=True)
            ops.convert_to_numpy(views[-1])  # waits for the work

        if not getattr(self, "_augment_warm", False):  # builds the layers, traces the ops
            once()
            once()
            self._augment_warm = True
        times, _ = common.timed(once, n)
        return {"times": times, "images_per_call": self.spec["batch_size"]}

    def fit(self, n):
        """`fit` on uint8 images with the model's augmenter, `n` steps (one epoch).

        Steady-state seconds per step from the gaps between batch ends (the per-call set-up
        of `fit` excluded), and the whole call's seconds per step.
        """
        import numpy as np

        keras = self.keras
        batch = self.spec["batch_size"]
        repeats = -(-n * batch // len(self.images))
        data = np.concatenate([self.images] * repeats)[: n * batch]
        if not getattr(self, "_fit_warm", False):  # compiles the step with augmentation
            self.model.fit(data[:batch], batch_size=batch, epochs=1, verbose=0, shuffle=False)
            self._fit_warm = True
        marks = []

        class Marks(keras.callbacks.Callback):
            def on_train_batch_end(self, index, logs=None):
                marks.append(time.perf_counter())

        start = time.perf_counter()
        self.model.fit(
            data, batch_size=batch, epochs=1, verbose=0, shuffle=False, callbacks=[Marks()]
        )
        total = time.perf_counter() - start
        self._set_run_length(self.model)
        return _fit_result(marks, total, n)


def _fit_result(marks, total, n):
    steady = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else total / n
    return {"seconds_per_step": steady, "call_seconds_per_step": total / n}


def _size(shape):
    size = 1
    for dim in shape:
        size *= int(dim)
    return size


def keras_device(backend):
    """The accelerator the backend computes on, or "cpu"."""
    if backend == "jax":
        import jax

        platform = jax.devices()[0].platform
        return "cuda" if platform == "gpu" else platform  # JAX names CUDA devices "gpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "cuda" if tf.config.list_physical_devices("GPU") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def keras_device_peak_mb(backend):
    """Peak accelerator memory of this process in MiB (None on the CPU)."""
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform == "cpu":
                return None
            return device.memory_stats()["peak_bytes_in_use"] / 2**20
        if backend == "tensorflow":
            import tensorflow as tf

            if not tf.config.list_physical_devices("GPU"):
                return None
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # a backend without memory statistics
        return None


def run_keras_worker(spec):
    try:
        import keras

        # First, before anything starts JAX's backends: keras_ssl sets its XLA:CPU flags at
        # import, and XLA reads them once.
        import keras_ssl  # noqa: F401

        backend = keras.backend.backend()
        device = keras_device(backend)
        if device != spec.get("device", "cpu"):
            raise RuntimeError(
                f"The {backend} backend computes on {device!r}, not on the requested "
                f"{spec.get('device', 'cpu')!r}: install its CUDA build (see tools/gpu_check.sh)."
            )
        common.DEVICE_PEAK = lambda: keras_device_peak_mb(backend)
        worker = KerasWorker(spec)
        first = worker.first_step()
        flops = worker.flops()
        common.reply(
            {
                "ready": True,
                "side": worker.backend,
                "parameters": worker.parameters(),
                "first_step_s": first,
                "flops_per_step": flops,
                "versions": worker.versions(),
                "jit_compile": bool(getattr(worker.model, "jit_compile", False)),
                "device": device,
                "cores": worker.cores,
                **common.usage(),
            }
        )
    except Exception as error:
        common.fail(error)
    common.serve(worker)


# ---- the orchestrator ---------------------------------------------------------------------
class Worker:
    """One side's subprocess: start, wait for `ready`, send commands, read replies."""

    def __init__(self, side, command, env, log_path, timeout):
        self.side = side
        self.timeout = timeout
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
            bufsize=1,
        )
        self.error = None
        self.info = self._read()
        if not self.info.get("ready"):
            self.error = self.info.get("error", "did not start")

    def _read(self):
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(timeout=left):
                    return {"ok": False, "error": f"no reply in {self.timeout:.0f} s"}
                line = self.process.stdout.readline()
                if not line:
                    code = self.process.wait()
                    return {"ok": False, "error": f"worker exited ({code}): {self._tail()}"}
                if line.startswith(common.PREFIX):
                    return json.loads(line[len(common.PREFIX) :])
        finally:
            selector.close()

    def _tail(self):
        self.log.flush()
        lines = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])

    def ask(self, cmd, n=1):
        if self.error:
            return {"ok": False, "error": self.error}
        try:
            self.process.stdin.write(json.dumps({"cmd": cmd, "n": n}) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            self.error = f"worker gone: {error}; {self._tail()}"
            return {"ok": False, "error": self.error}
        answer = self._read()
        if not answer.get("ok") and "exited" in str(answer.get("error", "")):
            self.error = answer["error"]
        return answer

    def close(self):
        answer = {}
        if self.process.poll() is None and not self.error:
            answer = self.ask("exit")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        return answer


def venv_python(venv):
    return Path(venv) / "bin" / "python"


def lightly_python(args):
    return args.lightly_python or str(venv_python(args.venv))


def setup_venv(venv):
    """Creates lightly's virtual environment (CPU torch from the local wheels when there)."""
    venv = Path(venv)
    if venv_python(venv).exists():
        return
    print(f"Creating {venv} with {', '.join(VENV_PACKAGES)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / ".gitignore").write_text("*\n")
    env = dict(os.environ)
    if Path("/opt/wheels").is_dir():
        env.setdefault("PIP_FIND_LINKS", "/opt/wheels")
    # The CPU wheel index keeps pip from pulling a CUDA torch where /opt/wheels is absent.
    extra = ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    if env.get("PIP_FIND_LINKS"):
        extra = []
    subprocess.run(
        [str(venv_python(venv)), "-m", "pip", "install", "-q", *extra, *VENV_PACKAGES],
        check=True,
        env=env,
    )


def start_worker(side, spec, args, log_dir):
    env = common.worker_env(os.environ, args.threads, not args.no_malloc_tuning, args.device)
    spec_json = json.dumps(spec)
    if side == LIGHTLY:
        env.pop("KERAS_BACKEND", None)
        command = [lightly_python(args), str(TOOLS / "_lightly_reference.py"), spec_json]
    else:
        env["KERAS_BACKEND"] = side
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", spec_json]
    log_path = log_dir / f"{spec['entry']}-{side}.log"
    print(f"  starting {side} ...", flush=True)
    worker = Worker(side, command, env, log_path, args.timeout)
    if worker.error:
        print(f"  {side}: FAILED to start: {worker.error}", flush=True)
    else:
        info = worker.info
        print(
            f"  {side}: parameters {info['parameters']}, first step {info['first_step_s']:.1f} s",
            flush=True,
        )
    return worker


def run_entry(entry, args, sides, log_dir):
    """Times one benchmark entry on every side; returns its raw record.

    lightly's worker stays up for the whole entry; the Keras backends take turns beside it,
    one worker at a time, and each turn interleaves the two in rotated rounds. Every Keras
    side's answers are paired with lightly's of the same turn (`lightly_step`) for the
    per-round ratios.
    """
    spec = make_spec(args, entry)
    print(f"== {entry}: {spec['backbone']}, batch {spec['batch_size']}", flush=True)
    record = {"entry": entry, "spec": spec, "sides": {}}
    others = [s for s in sides if s != LIGHTLY]
    counts = {"step": args.steps, "augment": args.augment_batches, "fit": args.fit_steps}

    def start(side):
        # The lightly side first: its FLOP count is then known for the others' GFLOP/s.
        worker = start_worker(side, spec, args, log_dir)
        record["sides"][side] = {
            "info": worker.info,
            "error": worker.error,
            "rounds": {phase: [] for phase in args.phases},
            "lightly_step": [],
        }
        return worker

    reference = start(LIGHTLY) if LIGHTLY in sides else None
    try:
        for turn in [[side] for side in others] or [[]]:
            workers = {side: start(side) for side in turn}
            if reference is not None:
                workers[LIGHTLY] = reference
            live = [s for s in (LIGHTLY, *turn) if s in workers and not workers[s].error]
            try:
                for r in range(args.rounds):
                    rotated = live[r % len(live) :] + live[: r % len(live)] if live else []
                    for phase in args.phases:
                        for side in rotated:
                            answer = workers[side].ask(phase, counts[phase])
                            record["sides"][side]["rounds"][phase].append(answer)
                            if side == LIGHTLY and phase == "step":
                                for other in turn:
                                    record["sides"][other]["lightly_step"].append(answer)
                            if not answer.get("ok"):
                                print(f"  {side} {phase}: {answer.get('error')}", flush=True)
                    names = "+".join(live)
                    print(f"  {names}: round {r + 1}/{args.rounds} done", flush=True)
            finally:
                for side in turn:
                    record["sides"][side]["exit"] = workers[side].close()
    finally:
        if reference is not None:
            record["sides"][LIGHTLY]["exit"] = reference.close()
    return record


# ---- statistics and the report ------------------------------------------------------------
def _quantiles(values):
    values = sorted(values)
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def _phase_times(rounds, key):
    """Per-round lists of the phase's seconds per unit (step or call)."""
    out = []
    for answer in rounds:
        if not answer.get("ok"):
            out.append(None)
        elif key == "fit":
            out.append([answer["seconds_per_step"]])
        else:
            out.append(list(answer["times"]))
    return out


def summarise(record, batch):
    """Medians, IQRs, ratios against lightly, GFLOP/s for one entry."""
    sides = record["sides"]
    lightly = sides.get(LIGHTLY)
    flops = None
    if lightly and not lightly["error"]:
        flops = lightly["info"].get("flops_per_step")
    summary = {}
    reference = lightly is not None and not lightly["error"]
    for side, data in sides.items():
        row = {"error": data["error"]}
        summary[side] = row
        if data["error"]:
            continue
        info = data["info"]
        row.update(
            parameters=info["parameters"],
            first_step_s=info["first_step_s"],
            jit_compile=info.get("jit_compile"),
            flops_per_step_counted=info.get("flops_per_step"),
        )
        exit_info = data.get("exit") or {}
        row["peak_rss_mb"] = exit_info.get("peak_rss_mb", info.get("peak_rss_mb"))
        row["peak_device_mb"] = exit_info.get("peak_device_mb", info.get("peak_device_mb"))
        row["device"] = info.get("device", "cpu")
        errors = {
            phase: [a.get("error", "?") for a in answers if not a.get("ok")]
            for phase, answers in data["rounds"].items()
        }
        row["failed_rounds"] = {phase: e for phase, e in errors.items() if e}
        step_rounds = _phase_times(data["rounds"]["step"], "step")
        steps = [t for times in step_rounds if times for t in times]
        if not steps:
            row["error"] = "no timed step"
            continue
        q1, median, q3 = _quantiles(steps)
        row["step"] = {
            "median_s": median,
            "iqr_s": q3 - q1,
            "images_per_s": batch / median,
            "images_per_s_iqr": (batch / q1 - batch / q3) if q1 > 0 else None,
            "n": len(steps),
        }
        faults = [a.get("minor_faults_per_step") for a in data["rounds"]["step"] if a.get("ok")]
        row["minor_faults_per_step"] = statistics.median(faults) if faults else None
        if flops:
            row["step"]["gflop_per_s"] = flops / median / 1e9
        if reference and side != LIGHTLY:
            reference_rounds = _phase_times(data.get("lightly_step", []), "step")
            ratios = [
                statistics.median(ref) / statistics.median(own)
                for own, ref in zip(step_rounds, reference_rounds, strict=False)
                if own and ref
            ]
            if ratios:
                r1, rm, r3 = _quantiles(ratios)
                row["ratio_vs_lightly"] = {"median": rm, "iqr": r3 - r1, "rounds": ratios}
        for phase in ("augment", "fit"):
            if phase not in data["rounds"]:
                continue
            per_round = _phase_times(data["rounds"][phase], phase)
            values = [t for times in per_round if times for t in times]
            if not values:
                continue
            q1, median, q3 = _quantiles(values)
            row[phase] = {
                "median_s": median,
                "iqr_s": q3 - q1,
                "images_per_s": batch / median,
            }
        if "augment" in row:
            row["augment"]["vs_step"] = row["augment"]["images_per_s"] / row["step"]["images_per_s"]
        if "fit" in row:
            row["fit"]["vs_step"] = row["fit"]["images_per_s"] / row["step"]["images_per_s"]
    return {
        "flops_per_step": flops,
        "flops_per_image": flops / batch if flops else None,
        "sides": summary,
    }


def machine_info():
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "avx512": " avx512f" in flags,
        "avx512_bf16": " avx512_bf16" in flags,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["memory_gb"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    except (ValueError, OSError, AttributeError):
        pass
    return info


def _fmt(value, digits=1):
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def markdown(report):
    s = report["settings"]
    lines = [
        "# keras_ssl vs lightly: train-step speed",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores_available']} cores "
        f"available; load average {report['load_average_start']} at start, "
        f"{report['load_average_end']} at end (timings on a loaded machine are noise). "
        f"{s['threads']} thread(s) per side, precision {s['precision']}, batch "
        f"{s['batch_size']} (DINO {s['dino_batch_size']}, 2 global + {s['local_crops']} local "
        f"crops each), {s['image_size']} px, {s['rounds']} interleaved rounds of "
        f"{s['steps']} step(s) per Keras backend (each beside lightly in turn); glibc malloc "
        f"tuning {'on' if s['malloc_tuning'] else 'off'}.",
        "",
        "Versions: "
        + "; ".join(
            f"{side}: " + ", ".join(f"{k} {v}" for k, v in versions.items())
            for side, versions in report["versions"].items()
        ),
        "",
        "img/s: median images per second of the train step on pre-made views [IQR]; x lightly:"
        " keras_ssl img/s / lightly img/s, median of the per-round ratios [IQR]; GFLOP/s from"
        " torch's FlopCounterMode on the lightly model (forward + backward); first: first step"
        " (tracing, compilation) in s; aug: augmentation alone, img/s and x the step; fit:"
        " `fit` with augmentation, img/s and x the step; RSS: peak resident MiB of the worker"
        " / device peak; faults: minor page faults per step.",
        "",
        "| method | side | trainable params | img/s [IQR] | x lightly [IQR] | GFLOP/s | first s "
        "| aug img/s (x step) | fit img/s (x step) | RSS MiB | faults/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["results"]:
        spec = entry["spec"]
        title = f"{METHOD_TITLES[entry['entry']]}, {spec['backbone']}, batch {spec['batch_size']}"
        for side, row in entry["summary"]["sides"].items():
            if row.get("error"):
                lines.append(f"| {title} | {side} | failed: {row['error'][:80]} |" + " |" * 8)
                continue
            step = row["step"]
            ratio = row.get("ratio_vs_lightly")
            aug, fit = row.get("augment"), row.get("fit")
            lines.append(
                "| "
                + " | ".join(
                    [
                        title,
                        side + (" (XLA)" if row.get("jit_compile") and side != LIGHTLY else ""),
                        f"{row['parameters']['trainable']:,}",
                        f"{step['images_per_s']:.1f} [{_fmt(step.get('images_per_s_iqr'))}]",
                        f"{ratio['median']:.2f} [{ratio['iqr']:.2f}]" if ratio else "-",
                        _fmt(step.get("gflop_per_s"), 0),
                        _fmt(row["first_step_s"]),
                        f"{aug['images_per_s']:.0f} ({aug['vs_step']:.1f}x)" if aug else "-",
                        f"{fit['images_per_s']:.1f} ({fit['vs_step']:.2f}x)" if fit else "-",
                        _fmt(row.get("peak_rss_mb"), 0)
                        + (f" / {row['peak_device_mb']:.0f}" if row.get("peak_device_mb") else ""),
                        _fmt(row.get("minor_faults_per_step"), 0),
                    ]
                )
                + " |"
            )
    lines += ["", "FLOPs per image (one train step, forward + backward, torch FlopCounterMode):"]
    for entry in report["results"]:
        per_image = entry["summary"]["flops_per_image"]
        lines.append(
            f"- {METHOD_TITLES[entry['entry']]}: "
            + (f"{per_image / 1e9:.2f} GFLOP" if per_image else "not counted (no lightly side)")
        )
    failures = [
        f"- {e['entry']}, {side}, {phase}: {len(errors)} of "
        f"{len(e['sides'][side]['rounds'][phase])} rounds failed ({errors[0][:200]})"
        for e in report["results"]
        for side, row in e["summary"]["sides"].items()
        for phase, errors in (row.get("failed_rounds") or {}).items()
    ]
    if failures:
        lines += ["", "FAILED ROUNDS (their figures come from the other rounds only):", *failures]
    mismatches = []
    for e in report["results"]:
        sides = e["summary"]["sides"]
        if LIGHTLY not in sides or sides[LIGHTLY].get("error"):
            continue
        reference = sides[LIGHTLY]["parameters"]
        for side, row in sides.items():
            if side != LIGHTLY and not row.get("error") and row["parameters"] != reference:
                mismatches.append(f"{e['entry']}: {side} {row['parameters']} vs {reference}")
    lines += [
        "",
        "Parameter counts: "
        + ("MISMATCH " + "; ".join(mismatches) if mismatches else "equal on every side that ran."),
    ]
    return "\n".join(lines) + "\n"


def report_settings(args):
    """The run's settings as the report keeps them (resolved arguments, allocator tuning)."""
    settings = {
        k: v for k, v in vars(args).items() if k not in ("worker", "setup_venv", "output_dir")
    }
    settings["malloc_tuning"] = not args.no_malloc_tuning
    settings["malloc_env"] = common.MALLOC_ENV if settings["malloc_tuning"] else {}
    return settings


def write_report(args, output, results, load_start, started):
    versions = {}
    for record in results:
        for side, data in record["sides"].items():
            if not data["error"] and data["info"].get("versions"):
                versions.setdefault(side, data["info"]["versions"])
    report = {
        "machine": machine_info(),
        "load_average_start": load_start,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "wall_s": time.time() - started,
        "versions": versions,
        "settings": report_settings(args),
        "results": results,
    }
    (output / "speed.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (output / "speed.md").write_text(table)
    return table


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.worker is not None:
        run_keras_worker(json.loads(args.worker))
        return 0
    args = _resolve(args)
    output = Path(args.output_dir)
    log_dir = output / "workers"
    log_dir.mkdir(parents=True, exist_ok=True)
    sides = list(args.backends)
    if not args.no_lightly:
        if args.setup_venv and not args.lightly_python:
            setup_venv(args.venv)
        if not Path(lightly_python(args)).exists():
            raise SystemExit(
                f"lightly's virtual environment {args.venv} does not exist. Create it with "
                "--setup-venv (or point --venv at one), or pass --no-lightly."
            )
        sides.append(LIGHTLY)
    load_start = [round(v, 2) for v in os.getloadavg()]
    started = time.time()
    results = []
    for entry in args.methods:
        record = run_entry(entry, args, sides, log_dir)
        record["summary"] = summarise(record, record["spec"]["batch_size"])
        results.append(record)
        table = write_report(args, output, results, load_start, started)  # after every entry
    print(table)
    failed = [
        f"{r['entry']}/{side}"
        for r in results
        for side, row in r["summary"]["sides"].items()
        if row.get("error") or row.get("failed_rounds")
    ]
    if failed:
        print(f"Failed sides or rounds: {', '.join(failed)} (see {log_dir})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
