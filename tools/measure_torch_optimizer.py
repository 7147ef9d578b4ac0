"""Time of one optimizer update on PyTorch for a model's trainable variables: Keras's
`AdamW(weight_decay=0.0).apply` as Keras runs it, without its `1 - 0 * lr` decay pass, and
through keras_ssl's PyTorch step (`trainer/_torch.py::_apply_gradients`: no decay pass and
`_adam_update`). The variables are those of the model `benchmark_speed.py` builds.

    python tools/measure_torch_optimizer.py dino_vit
    python tools/measure_torch_optimizer.py dino --repeats 20 -- --backbone resnet18_cifar

Options after `--` go to `benchmark_speed.py`. Prints the median over `--repeats` updates
(after two untimed ones) of each form, on the CPU with the benchmark's thread count.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def main(argv):
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entry", help="a benchmark_speed.py method, e.g. dino_vit")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv[:split])

    os.environ["KERAS_BACKEND"] = "torch"
    sys.path.insert(0, str(TOOLS))
    import benchmark_speed
    import keras
    import torch

    from keras_ssl.trainer._torch import _apply_gradients

    spec = benchmark_speed.spec_for(args.entry, argv[split + 1 :])
    torch.set_num_threads(spec["threads"])
    worker = benchmark_speed.KerasWorker(spec)
    variables = worker.model.trainable_variables
    generator = torch.Generator().manual_seed(0)
    gradients = [1e-2 * torch.randn(v.shape, generator=generator) for v in variables]
    count = sum(v.value.numel() for v in variables)
    print(f"{args.entry}: {len(variables)} variables, {count / 1e6:.1f} M parameters")

    def keras_apply(optimizer):
        optimizer.apply(gradients, variables)

    def without_decay(optimizer):
        optimizer.weight_decay = None
        optimizer.apply(gradients, variables)
        optimizer.weight_decay = 0.0

    def keras_ssl_step(optimizer):
        _apply_gradients(optimizer, gradients, variables)

    forms = {
        "Keras AdamW(weight_decay=0.0)": keras_apply,
        "Keras, decay pass dropped": without_decay,
        "keras_ssl's PyTorch step": keras_ssl_step,
    }
    for name, update in forms.items():
        optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.0)
        optimizer.build(variables)
        times = []
        with torch.no_grad():
            for i in range(args.repeats + 2):
                start = time.perf_counter()
                update(optimizer)
                if i >= 2:
                    times.append(time.perf_counter() - start)
        print(f"{name}: {1e3 * statistics.median(times):.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
