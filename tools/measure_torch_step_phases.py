"""Where a PyTorch train step's time goes, keras_ssl against lightly, side by side.

Each side is built as `benchmark_speed.py` builds it, one process per side (both in one
for `paired`), and lightly must be importable
(`PYTHONPATH=tools/.speed-venv/lib/python3.11/site-packages`).

- `phases ENTRY`: the step's forward pass without and with autograd, forward + backward,
  and the whole step (medians of 5, two repeats);
- `parts`: the DINO ViT step's forward parts alone (the student backbone on the global
  and the local crops, the head, the teacher's backbone and head, the loss);
- `gemm`: the ViT-Tiny step's linear-layer GEMM shapes with Keras's `(in, out)` kernel and
  with torch's transposed `(out, in)` weight, a 64 MiB buffer written between calls;
- `compile`: the ViT-Tiny backbone's student passes of a DINO step (the global and the local
  crops, forward + backward) eagerly and under `torch.compile` (its compile time too);
- `paired ENTRY [STEPS]`: both sides in one process, whole steps alternated (A B, B A, ...),
  each step split into its forward pass and loss, the optimizer's update (keras_ssl's
  `_apply_gradients`, with its gradient clipping; lightly's `optimizer.step`, its clipping
  left in the rest), the after-step (EMA teachers, DINO's decay and center) and the rest
  (the backward pass and the calls around it), by timing the step's own functions, not
  copies of them; prints minima and medians per phase and the per-pair ratio of the
  steps. On a machine whose speed drifts, neighbouring steps in one process compare
  better than the benchmark's separate processes.

    PYTHONPATH=tools/.speed-venv/lib/python3.11/site-packages \\
        python tools/measure_torch_step_phases.py phases dino_vit
    python tools/measure_torch_step_phases.py gemm
    PYTHONPATH=... python tools/measure_torch_step_phases.py paired dino_vit 12

The README's figures, two runs (2-core CPU, 2 threads, the speed benchmark's glibc malloc
settings): `phases dino_vit` forward 1.49 and 1.39 s against lightly's 1.36-1.41 and 1.32-1.33 s,
forward + backward 3.12-3.21 and 3.02-3.06 s against 3.15-3.17 and 3.03-3.07 s; `parts` the
ViT's forward passes 0-9% and 4-11% slower than timm's, the loss faster (52-59 ms against 63-68);
`gemm` the same speed both ways (within 0.5 ms, either side ahead); `compile` 45 and 24 s to
compile, 2.50 and 2.34 s compiled against 2.27-2.37 and 2.10-2.16 s eager; `paired dino_vit
14` (2026-12-03, another 2-core host): 0.99x [IQR 0.09] over 14 pairs.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
os.environ["KERAS_BACKEND"] = "torch"


def _median_ms(fn, rounds=5, warmup=2):
    sys.path.insert(0, str(TOOLS))
    import _speed_common

    for _ in range(warmup):
        fn()
    times, _ = _speed_common.timed(fn, rounds)
    return round(1e3 * sorted(times)[rounds // 2], 1)


def _spec(entry):
    sys.path.insert(0, str(TOOLS))
    import benchmark_speed

    return benchmark_speed.spec_for(entry, ["--device", "cpu"])


def _worker(side, spec):
    sys.path.insert(0, str(TOOLS))
    import _lightly_reference
    import benchmark_speed

    _lightly_reference.import_torchvision()
    if side == "lightly":
        return _lightly_reference.LightlyWorker(spec)
    return benchmark_speed.KerasWorker(spec)


def phases(side, entry):
    import torch

    worker = _worker(side, _spec(entry))
    if side == "lightly":
        method = worker.method

        def forward():
            method.optimizer.zero_grad(set_to_none=True)
            return method.loss(worker.views)
    else:
        model = worker.model

        def forward():
            model.zero_grad()
            return model._forward_and_loss(worker.views, training=True)[0]

    def without_autograd():
        with torch.no_grad():
            forward()

    def forward_backward():
        forward().backward()

    for _ in range(3):
        worker._step()
    for _ in range(2):
        figures = {
            "forward, no autograd": _median_ms(without_autograd),
            "forward": _median_ms(forward),
            "forward + backward": _median_ms(forward_backward),
            "step": _median_ms(worker._step),
        }
        print(side, entry, figures, "ms", flush=True)


def parts(side):
    import torch

    worker = _worker(side, _spec("dino_vit"))
    for _ in range(2):
        worker._step()
    torch.set_grad_enabled(False)
    if side == "lightly":
        method = worker.method
        views = worker.views
        (_, teacher_backbone), (_, teacher_head) = method.teachers
        global_crops, local_crops = torch.cat(views[:2]), torch.cat(views[2:])
        student, head = method.backbone, method.head
        global_features = student(global_crops)
        features = torch.cat([global_features, student(local_crops)])
        student_logits = list(head(features).chunk(len(views)))
        teacher_logits = list(teacher_head(global_features).chunk(2))
        calls = {
            "backbone, global crops": lambda: student(global_crops),
            "backbone, local crops": lambda: student(local_crops),
            "head": lambda: head(features),
            "teacher backbone": lambda: teacher_backbone(global_crops),
            "teacher head": lambda: teacher_head(global_features),
            "loss": lambda: method.criterion(teacher_logits, student_logits, epoch=0),
        }
    else:
        from keras import ops

        from keras_ssl.ops import dino_loss

        model = worker.model
        views = [ops.convert_to_tensor(v) for v in worker.views]
        global_crops = ops.concatenate(views[:2], axis=0)
        local_crops = ops.concatenate(views[2:], axis=0)
        student = model.backbone
        global_features = student(global_crops, training=True)
        features = ops.concatenate([global_features, student(local_crops, training=True)], 0)
        student_logits = list(ops.split(model.head(features), len(views), axis=0))
        teacher_logits = list(ops.split(model.teacher_head(global_features), 2, axis=0))
        temperature = model.current_teacher_temperature()
        calls = {
            "backbone, global crops": lambda: student(global_crops, training=True),
            "backbone, local crops": lambda: student(local_crops, training=True),
            "head": lambda: model.head(features, training=True),
            "teacher backbone": lambda: model.teacher_backbone(global_crops, training=True),
            "teacher head": lambda: model.teacher_head(global_features),
            "loss": lambda: dino_loss(
                student_logits, teacher_logits, model.center, 0.1, temperature
            ),
        }
    for _ in range(2):
        figures = {name: _median_ms(call, rounds=7) for name, call in calls.items()}
        print(side, figures, "ms", flush=True)


def gemm():
    import torch

    torch.set_num_threads(2)
    flush = torch.empty(16 * 2**20)
    rows, dim, hidden = 8320, 192, 768  # 128 global crops x 65 tokens, ViT-Tiny

    def timed(fn):
        times = []
        for i in range(33):
            flush.add_(1.0)
            start = time.perf_counter()
            fn()
            if i >= 3:
                times.append(time.perf_counter() - start)
        return 1e3 * sorted(times)[len(times) // 2]

    for n_in, n_out in ((hidden, dim), (dim, hidden), (dim, 3 * dim)):
        x, bias = torch.randn(rows, n_in), torch.randn(n_out)
        kernel, weight = torch.randn(n_in, n_out), torch.randn(n_out, n_in)
        for _ in range(2):
            keras_ms = timed(lambda: torch.addmm(bias, x, kernel))  # noqa: B023
            torch_ms = timed(lambda: torch.addmm(bias, x, weight.t()))  # noqa: B023
            print(
                f"addmm ({rows}, {n_in}) x ({n_in}, {n_out}): (in, out) kernel "
                f"{keras_ms:.2f} ms, (out, in) weight transposed {torch_ms:.2f} ms"
            )


def compiled():
    import torch

    worker = _worker("keras", _spec("dino_vit"))
    backbone = worker.model.backbone
    spec = worker.spec
    global_crops = torch.randn(2 * spec["batch_size"], spec["image_size"], spec["image_size"], 3)
    local_size = spec["local_size"]
    local_crops = torch.randn(spec["local_crops"] * spec["batch_size"], local_size, local_size, 3)

    def passes(fn):
        def run():
            (fn(global_crops).sum() + fn(local_crops).sum()).backward()

        return run

    def eager(x):
        return backbone(x, training=True)

    print("eager", _median_ms(passes(eager)), "ms")
    start = time.perf_counter()
    run = passes(torch.compile(eager, dynamic=False))
    run()
    print("torch.compile: first call", round(time.perf_counter() - start, 1), "s")
    print("compiled", _median_ms(run), "ms")
    print("eager", _median_ms(passes(eager)), "ms")


PHASES = ("forward + loss", "optimizer update", "after-step", "backward + rest")


class _Timer:
    """Accumulates the wall time of wrapped calls under one name per phase."""

    def __init__(self):
        self.spent = {}

    def wrap(self, phase, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[phase] = self.spent.get(phase, 0.0) + time.perf_counter() - start

        return timed

    def run(self, step):
        self.spent = {}
        start = time.perf_counter()
        step()
        total = time.perf_counter() - start
        split = {name: self.spent.get(name, 0.0) for name in PHASES[:-1]}
        split[PHASES[-1]] = total - sum(split.values())
        return total, split


def paired(entry, steps):
    import types

    import numpy as np

    from keras_ssl.trainer import _torch as torch_step

    spec = _spec(entry)
    lightly, keras_side = _worker("lightly", spec), _worker("keras_ssl", spec)
    timers = {"lightly": _Timer(), "keras_ssl": _Timer()}
    method, timer = lightly.method, timers["lightly"]
    method.loss = timer.wrap(PHASES[0], method.loss)
    method.optimizer.step = timer.wrap(PHASES[1], method.optimizer.step)
    update_momentum = timer.wrap(PHASES[2], method.utils.update_momentum)
    method.utils = types.SimpleNamespace(update_momentum=update_momentum)
    model, timer = keras_side.model, timers["keras_ssl"]
    model._forward_and_loss = timer.wrap(PHASES[0], model._forward_and_loss)
    torch_step._apply_gradients = timer.wrap(PHASES[1], torch_step._apply_gradients)
    model._after_update = timer.wrap(PHASES[2], model._after_update)
    sides = {"lightly": lightly, "keras_ssl": keras_side}
    for _ in range(2):
        for side in sides.values():
            side._step()
    totals = {name: [] for name in sides}
    splits = {name: [] for name in sides}
    for i in range(steps):
        for name in sorted(sides, reverse=bool(i % 2)):
            total, split = timers[name].run(sides[name]._step)
            totals[name].append(total)
            splits[name].append(split)
    for phase in PHASES:
        row = []
        for name in sides:
            ms = 1e3 * np.array([split[phase] for split in splits[name]])
            row.append(f"{name} min {ms.min():7.1f} median {np.median(ms):7.1f}")
        print(f"{phase:17s}", " | ".join(row), "ms")
    row = []
    for name in sides:
        seconds = np.array(totals[name])
        row.append(f"{name} min {seconds.min():.3f} median {np.median(seconds):.3f}")
    print(f"{'step':17s}", " | ".join(row), "s")
    ratios = np.array(totals["lightly"]) / np.array(totals["keras_ssl"])
    quartiles = np.percentile(ratios, [25, 75])
    print(
        f"x lightly (lightly's step time / keras_ssl's, per pair): median {np.median(ratios):.3f} "
        f"[IQR {quartiles[1] - quartiles[0]:.3f}], pairs {np.round(ratios, 3).tolist()}"
    )


SIDES = ("lightly", "keras_ssl")


def main(argv):
    command = argv[0] if argv else ""
    if command in ("phases", "parts"):
        entry = argv[1:2] if command == "phases" else []
        if command == "phases" and (not entry or entry[0] in SIDES):
            raise SystemExit("phases needs a benchmark entry, e.g. dino_vit")
        side = argv[1 + len(entry) :]
        if not side:  # one process per side, lightly first, as the benchmark runs them
            for name in SIDES:
                subprocess.run([sys.executable, __file__, command, *entry, name], check=True)
        elif side[0] not in SIDES:
            raise SystemExit(f"the side is one of {SIDES}, not {side[0]!r}")
        elif command == "phases":
            phases(side[0], entry[0])
        else:
            parts(side[0])
    elif command == "gemm":
        gemm()
    elif command == "compile":
        compiled()
    elif command == "paired" and len(argv) > 1:
        paired(argv[1], int(argv[2]) if len(argv) > 2 else 12)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
