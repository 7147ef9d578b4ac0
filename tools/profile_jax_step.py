"""Where a JAX train step's time goes on the CPU: keras_ssl's step built as
`benchmark_speed.py` builds it, timed, then traced with `jax.profiler` and the trace's
XLA operations summed by name.

It prints the wall time per step (median of `--steps`) and, for the traced steps, the
thread time per step of each kind of XLA operation (a fusion's name without its number:
`transpose_copy_fusion`, `convolution`, ...), largest first. Thread time adds up the
work of every thread: on 2 cores it can reach twice the wall time.

`--barrier` and `--no-strided-matmul` change which paths `keras_ssl.layers.small_map_conv
.Conv2D` takes on XLA:CPU, to time its choices against the alternatives: `--barrier none
--no-strided-matmul` is XLA's own convolution everywhere (the step before those paths),
`--barrier all` puts every convolution's input behind an optimization barrier.

    python tools/profile_jax_step.py simclr
    python tools/profile_jax_step.py simclr --barrier none --no-strided-matmul
    python tools/profile_jax_step.py dino --steps 3 -- --dino-batch-size 32

Arguments: one benchmark entry, this tool's options, then after `--` any options of
`benchmark_speed.py` that size the work.
"""

import argparse
import collections
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def _parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("entry", help="a benchmark_speed.py entry: simclr, mocov2, byol, dino, ...")
    p.add_argument("--steps", type=int, default=4, help="timed steps (4), then 2 traced")
    p.add_argument("--top", type=int, default=25, help="operation kinds listed (25)")
    p.add_argument(
        "--barrier",
        choices=("strided", "none", "all"),
        default="strided",
        help="which convolutions read their input behind an optimization barrier "
        "(strided: as shipped)",
    )
    p.add_argument(
        "--no-strided-matmul",
        action="store_true",
        help="strided 1x1 convolutions as XLA convolutions, not as a slice and a matmul",
    )
    return p


def set_conv_paths(barrier, strided_matmul):
    """Patches `Conv2D`'s path choices on XLA:CPU for this process."""
    from keras_ssl._xla_cpu import on_xla_cpu
    from keras_ssl.layers import small_map_conv

    conv = small_map_conv.Conv2D
    shipped_matmul = conv._as_matmul

    def strided_1x1(layer):
        return tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) != (1, 1)

    def as_matmul(layer, inputs):
        if strided_matmul or not strided_1x1(layer):
            return shipped_matmul(layer, inputs)
        # The small-map rule alone: outputs of at most _MAX_MATMUL_PIXELS pixels.
        pixels = 1
        for size, stride in zip(inputs.shape[1:3], layer.strides, strict=True):
            pixels *= (size - 1) // stride + 1
        return (
            layer.data_format == "channels_last"
            and layer._valid_plain()
            and pixels <= small_map_conv._MAX_MATMUL_PIXELS
            and on_xla_cpu()
        )

    conv._as_matmul = as_matmul
    if barrier == "none":
        conv._stored_input = lambda layer, inputs: False
    elif barrier == "all":
        conv._stored_input = lambda layer, inputs: on_xla_cpu()


def _trace_events(log_dir):
    (path,) = Path(log_dir).rglob("*.trace.json.gz")
    with gzip.open(path, "rt") as handle:
        trace = json.load(handle)
    threads = {}
    for event in trace["traceEvents"]:
        if event.get("ph") == "M" and event.get("name") == "thread_name":
            threads[(event["pid"], event["tid"])] = event["args"]["name"]
    return [e for e in trace["traceEvents"] if e.get("ph") == "X"], threads


def summarise(events, threads, steps, top):
    """Thread time per step of each XLA operation kind, from the trace's complete events
    on the threads that run XLA's compiled code (not the Python thread's own spans)."""
    by_kind = collections.Counter()
    counts = collections.Counter()
    python_threads = {key for key, name in threads.items() if "python" in name.lower()}
    for event in events:
        name = event["name"]
        if (
            (event["pid"], event["tid"]) in python_threads
            or "::" in name
            or name.startswith("end:")
        ):
            continue  # the runtime's own spans (thunk executor, thread pool), which hold ops
        kind = re.sub(r"[.:]\d+$", "", name)
        by_kind[kind] += event.get("dur", 0) / 1e6 / steps
        counts[kind] += 1
    total = sum(by_kind.values())
    print(f"thread time per step, all operations: {total:.2f} s")
    for kind, seconds in by_kind.most_common(top):
        share = 100 * seconds / total
        print(f"  {seconds:8.3f} s  {share:5.1f}%  {counts[kind] // steps:5d}x  {kind}")


def main(argv):
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, str(TOOLS))
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = _parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    import benchmark_speed
    import jax

    set_conv_paths(args.barrier, not args.no_strided_matmul)
    spec = benchmark_speed.spec_for(args.entry, rest)
    worker = benchmark_speed.KerasWorker(spec)
    start = time.perf_counter()
    worker._step()
    print(
        f"== {args.entry}: {spec['backbone']}, batch {spec['batch_size']}, barrier "
        f"{args.barrier}, strided 1x1 as matmul: {not args.no_strided_matmul}; first step "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        worker._step()
        times.append(time.perf_counter() - start)
    print(
        f"wall per step: median {statistics.median(times):.2f} s "
        f"({', '.join(f'{t:.2f}' for t in times)})",
        flush=True,
    )
    traced = 2
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            for _ in range(traced):
                worker._step()
        events, threads = _trace_events(log_dir)
    summarise(events, threads, traced, args.top)


if __name__ == "__main__":
    main(sys.argv[1:])
