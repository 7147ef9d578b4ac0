"""Where a PyTorch train step's time goes: keras_ssl on the torch backend against lightly,
both built as `benchmark_speed.py` builds them, in one process, with torch's profiler.

Per entry and side it prints the wall time per step (median of 5, synchronised), the GPU
kernel time, kernels and ATen ops per step, and the profiler's table of host-side ops
(`cudaStreamSynchronize` there counts the host's waits for the device). lightly must be
importable by this Python (on a GPU machine: `pip install --no-deps lightly==1.6.0`).

    python tools/profile_torch_step.py cuda mocov2 -- --backbone resnet50 --image-size 224 \\
        --batch-size 128 --no-flops
    python tools/profile_torch_step.py cpu dino_vit -- --dino-batch-size 8

Arguments: the device (`cpu` or `cuda`), benchmark entries, then after `--` any options of
`benchmark_speed.py` that size the work.
"""

import os
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def profile_side(name, step, device, torch):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    steps = 3
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
        sync()
    events = profile.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / steps
    aten = [e for e in events if e.name.startswith("aten::")]
    times.sort()
    print(
        f"  {name}: wall {1e3 * times[2]:.1f} ms/step (min {1e3 * times[0]:.1f}), "
        f"GPU kernels {kernel_ms:.1f} ms/step, {len(kernels) / steps:.0f} kernels/step, "
        f"{len(aten) / steps:.0f} aten ops/step",
        flush=True,
    )
    table = profile.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50
    )
    print(table, flush=True)


def main(argv):
    os.environ["KERAS_BACKEND"] = "torch"
    sys.path.insert(0, str(TOOLS))
    import _lightly_reference as lightly_side
    import benchmark_speed
    import torch

    device, rest = argv[0], argv[1:]
    entries = rest[: rest.index("--")] if "--" in rest else rest
    options = rest[rest.index("--") + 1 :] if "--" in rest else []
    for entry in entries:
        spec = benchmark_speed.spec_for(entry, ["--device", device, *options])
        lightly_side.import_torchvision()
        sides = {
            "lightly": lightly_side.LightlyWorker(spec),
            "keras_ssl (torch)": benchmark_speed.KerasWorker(spec),
        }
        print(f"== {entry}: {spec['backbone']}, batch {spec['batch_size']}", flush=True)
        for name, worker in sides.items():
            profile_side(name, worker._step, device, torch)
        del sides
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1:])
