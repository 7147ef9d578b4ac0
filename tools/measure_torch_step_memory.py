"""Resident memory, page faults and step time of keras_ssl's PyTorch train step, with
keras_ssl's patch of Keras's tree utilities (`keras_ssl/_torch_tree.py`) and without it.

The model is built as `benchmark_speed.py` builds it. Two measurements:

- `--steps N`: RSS and minor page faults every `--every` steps, one setting for the whole
  run (`--keras-tree` restores Keras's own functions: their reference cycles keep every
  layer call's tensors alive until Python's cyclic collector runs);
- `--alternate R`: R rounds of 3 steps with each setting in turn, the median step time each.

    python tools/measure_torch_step_memory.py dino_vit --steps 200 -- --dino-batch-size 8
    python tools/measure_torch_step_memory.py dino_vit --keras-tree --steps 200 \
        -- --dino-batch-size 8
    python tools/measure_torch_step_memory.py dino_vit --alternate 5

Options after `--` go to `benchmark_speed.py` (they size the work). Run it alone on the
machine; the README's figures used the benchmark's allocator settings (`MALLOC_*`).
"""

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv):
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entry", help="a benchmark_speed.py method, e.g. dino_vit")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--keras-tree", action="store_true", help="Keras's own tree functions")
    parser.add_argument("--alternate", type=int, default=0, help="rounds of A/B step timing")
    args = parser.parse_args(argv[:split])

    os.environ["KERAS_BACKEND"] = "torch"
    sys.path.insert(0, str(TOOLS))
    import benchmark_speed
    from keras.src.tree import torchtree_impl

    from keras_ssl import _torch_tree  # `import keras_ssl` has installed the patch

    settings = {
        "keras_ssl patch": (torchtree_impl._dict_to_ordered_dict, torchtree_impl.traverse),
        "Keras's own": (
            (module := _torch_tree.keras_own_module())._dict_to_ordered_dict,
            module.traverse,
        ),
    }
    if settings["keras_ssl patch"][1] is not _torch_tree.traverse:
        print("note: keras_ssl's patch is not installed (this Keras does not need it)")

    def use(name):
        torchtree_impl._dict_to_ordered_dict, torchtree_impl.traverse = settings[name]

    worker = benchmark_speed.KerasWorker(benchmark_speed.spec_for(args.entry, argv[split + 1 :]))
    if args.steps:
        use("Keras's own" if args.keras_tree else "keras_ssl patch")
        for step in range(args.steps):
            start = time.perf_counter()
            worker._step()
            if step % args.every == 0:
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                print(
                    f"step {step}: {time.perf_counter() - start:.3f} s, RSS "
                    f"{resident_mib():.0f} MiB, minor faults so far {faults}",
                    flush=True,
                )
    if args.alternate:
        times = {name: [] for name in settings}
        for _ in range(2):
            worker._step()
        for round_ in range(args.alternate):
            order = list(settings) if round_ % 2 == 0 else list(settings)[::-1]
            for name in order:
                use(name)
                worker._step()
                start = time.perf_counter()
                for _ in range(3):
                    worker._step()
                times[name].append((time.perf_counter() - start) / 3)
        for name, values in times.items():
            rounds = " ".join(f"{v:.3f}" for v in values)
            print(f"{name}: {rounds} s/step, median {statistics.median(values):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
