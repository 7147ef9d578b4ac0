"""The seed's chart in miniature: linear-probe top-1 against pretraining epochs.

Pretrains SimCLR, MoCo-v2, BYOL, DINO and DINOv2 on the embedded Fashion-MNIST subset
(10,000 unlabelled train images, 28 px) with the same budget (epochs, batch size,
schedule shape) and each method's `keras-ssl pretrain` demo recipe (its paper's
augmentation family scaled to 28 px, hyper-parameters scaled to small images and
batches; `keras_ssl.cli.DEMO_RECIPES`). SimCLR, MoCo-v2, BYOL and DINO train the demo
ConvNet; DINOv2 needs patch tokens and trains the demo's tiny ViT. Every `--eval-every`
epochs (and before training) `keras_ssl.callbacks.KNNMonitor` measures kNN (k=20,
T=0.07) and linear-probe top-1 of the backbone's features on the 2,000 held-out images
(kNN bank and probe training set: the 10,000 train images with their labels). The same
probes run on the random-init backbones and on raw pixels.

Outputs in `--output-dir`: `results.md` (tables), `chart.json` (ECharts option, title
"Linear Probe Accuracy vs Pretraining Epochs"), `chart.png`, `results.json` (every
figure, backend, machine, versions, seeds, wall times).

    KERAS_BACKEND=jax python tools/benchmark_accuracy.py --output-dir bench_accuracy
    KERAS_BACKEND=jax python tools/benchmark_accuracy.py --small   # about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

TITLE = "Linear Probe Accuracy vs Pretraining Epochs"
METHOD_NAMES = {
    "simclr": "SimCLR",
    "mocov2": "MoCo-v2",
    "byol": "BYOL",
    "dino": "DINO",
    "dinov2": "DINOv2",
}


def _parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHOD_NAMES), help="comma-separated")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default 10)")
    p.add_argument("--eval-every", type=int, default=None, help="checkpoint period (default 2)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--probe-epochs", type=int, default=None, help="linear probe (default 30)")
    p.add_argument("--limit", type=int, default=None, help="first N train images (test N/5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="bench_accuracy")
    p.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity")
    p.add_argument(
        "--small",
        action="store_true",
        help="smoke mode: 1,024 images, 2 epochs, checkpoints every epoch, 5-epoch probes",
    )
    return p


def _resolve(args):
    small = dict(epochs=2, eval_every=1, probe_epochs=5, limit=1024)
    full = dict(epochs=10, eval_every=2, probe_epochs=30, limit=None)
    defaults = small if args.small else full
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHOD_NAMES]
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; choose from {list(METHOD_NAMES)}.")
    return args


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _versions(backend):
    import keras
    import numpy

    import keras_ssl

    versions = {"keras_ssl": keras_ssl.__version__, "keras": keras.__version__}
    versions["numpy"] = numpy.__version__
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    versions[module] = __import__(module).__version__
    return versions


def _data(args):
    from keras_ssl.datasets import fashion_mnist

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(source="embedded")
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
        x_test, y_test = x_test[: max(64, args.limit // 5)], y_test[: max(64, args.limit // 5)]
    return x_train[..., None], y_train, x_test[..., None], y_test


def _probe_settings(args):
    return dict(epochs=args.probe_epochs, batch_size=256, learning_rate=1e-3, seed=args.seed)


def _evaluate_backbone(backbone, data, args):
    """kNN and linear top-1 of a frozen backbone (the baselines)."""
    from keras_ssl.eval import extract_features

    x_train, y_train, x_test, y_test = data
    f_train, f_test = extract_features(backbone, x_train), extract_features(backbone, x_test)
    return _evaluate_features(f_train, y_train, f_test, y_test, args)


def _evaluate_features(f_train, y_train, f_test, y_test, args):
    from keras_ssl.eval import knn_accuracy, linear_probe

    knn = knn_accuracy(f_train, y_train, f_test, y_test, k=20, temperature=0.07)
    probe = linear_probe(f_train, y_train, f_test, y_test, **_probe_settings(args))
    return {"knn_top1": knn, "linear_top1": probe.top1}


def _baselines(data, args):
    import keras

    from keras_ssl.cli import build_backbone

    x_train, y_train, x_test, y_test = data
    rows = {}
    backbones = sorted({_backbone_family(m) for m in args.methods})
    for family in backbones:
        keras.utils.set_random_seed(args.seed)
        method = "dinov2" if family == "ViT" else "simclr"
        backbone = build_backbone(method, None, x_train.shape[-1], x_train.shape[1])
        rows[f"random init ({family})"] = _evaluate_backbone(backbone, data, args)
    flat = lambda x: x.reshape(len(x), -1).astype("float32") / 255.0  # noqa: E731
    rows["raw pixels"] = _evaluate_features(flat(x_train), y_train, flat(x_test), y_test, args)
    return rows


def _backbone_family(method):
    from keras_ssl.cli import DEMO_RECIPES

    return "ViT" if "backbone" in DEMO_RECIPES[method] else "ConvNet"


def _pretrain(method, data, args):
    import keras

    from keras_ssl.callbacks import KNNMonitor
    from keras_ssl.cli import build_backbone, build_model

    x_train, y_train, x_test, y_test = data
    keras.backend.clear_session()
    keras.utils.set_random_seed(args.seed)
    backbone = build_backbone(method, None, x_train.shape[-1], x_train.shape[1])
    model = build_model(
        method,
        backbone,
        x_train.shape[1],
        epochs=args.epochs,
        steps_per_epoch=len(x_train) // args.batch_size,
        seed=args.seed,
    )
    monitor = KNNMonitor(
        (x_train, y_train),
        (x_test, y_test),
        every_n_epochs=args.eval_every,
        linear_probe=_probe_settings(args),
        evaluate_at_start=True,
    )
    started = time.time()
    print(f"\n== {METHOD_NAMES[method]} ({_backbone_family(method)}) ==", flush=True)
    history = model.fit(
        x_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=args.verbose,
        callbacks=[monitor],
    )
    seconds = time.time() - started
    checkpoints = {
        int(epoch): {k: round(float(v), 4) for k, v in values.items()}
        for epoch, values in sorted(monitor.results.items())
    }
    return {
        "name": METHOD_NAMES[method],
        "backbone": _backbone_family(method),
        "wall_seconds": round(seconds, 1),
        "eval_seconds": round(monitor.seconds, 1),
        "checkpoints": checkpoints,
        "final": checkpoints[max(checkpoints)],
        "loss": [round(float(v), 4) for v in history.history["loss"]],
    }


def _echarts(results, epochs):
    series = []
    for run in results["methods"].values():
        by_epoch = run["checkpoints"]
        series.append(
            {
                "name": run["name"],
                "type": "line",
                "data": [
                    None if e not in by_epoch else round(100 * by_epoch[e]["linear_top1"], 2)
                    for e in epochs
                ],
            }
        )
    base = ", ".join(
        f"{name} {100 * row['linear_top1']:.1f}" for name, row in results["baselines"].items()
    )
    return {
        "title": {
            "text": TITLE,
            "subtext": f"Fashion-MNIST 28 px (embedded subset), {results['backend']}; "
            f"baselines: {base}",
        },
        "tooltip": {"trigger": "axis"},
        "legend": {"data": [s["name"] for s in series], "top": "bottom"},
        "xAxis": {"type": "category", "name": "Pretraining epochs", "data": epochs},
        "yAxis": {"type": "value", "name": "Linear probe top-1 (%)", "scale": True},
        "series": series,
    }


def _chart_png(results, epochs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.6))
    for run in results["methods"].values():
        points = sorted(run["checkpoints"].items())
        axis.plot(
            [e for e, _ in points],
            [100 * v["linear_top1"] for _, v in points],
            marker="o",
            label=f"{run['name']} ({run['backbone']})",
        )
    styles = iter([":", "--", "-."])
    for name, row in results["baselines"].items():
        axis.axhline(100 * row["linear_top1"], color="gray", linestyle=next(styles, ":"),
                     label=name)  # fmt: skip
    axis.set_xlabel("Pretraining epochs")
    axis.set_ylabel("Linear probe top-1 (%)")
    axis.set_title(TITLE)
    axis.set_xticks(epochs)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _markdown(results, epochs, command):
    lines = [
        f"# {TITLE}",
        "",
        f"Backend {results['backend']}, {results['machine']['cpu']} ({results['machine']['cores']}"
        f" cores); {results['config']['train_images']} train / {results['config']['test_images']}"
        f" test images, {results['config']['epochs']} epochs, batch "
        f"{results['config']['batch_size']}, seed {results['config']['seed']}; wall time "
        f"{results['wall_seconds'] / 60:.1f} min"
        + (
            ""
            if len(results["methods"]) == len(results["config"]["methods"])
            else f" (partial: {len(results['methods'])} of {len(results['config']['methods'])}"
            " methods done)"
        )
        + ".",
        "",
        f"`{command}`",
        "",
        "| features | backbone | kNN top-1 | linear top-1 | linear margin over random init "
        "| pretrain s | checkpoint evaluations s |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["methods"].values():
        final = run["final"]
        random_row = results["baselines"][f"random init ({run['backbone']})"]
        margin = final["linear_top1"] - random_row["linear_top1"]
        lines.append(
            f"| {run['name']}, {results['config']['epochs']} epochs | {run['backbone']} | "
            f"{final['knn_top1']:.4f} | {final['linear_top1']:.4f} | {margin:+.4f} | "
            f"{run['wall_seconds'] - run['eval_seconds']:.0f} | {run['eval_seconds']:.0f} |"
        )
    for name, row in results["baselines"].items():
        family = name[name.find("(") + 1 : -1] if "(" in name else "-"
        lines.append(
            f"| {name} | {family} | {row['knn_top1']:.4f} | {row['linear_top1']:.4f} | | | |"
        )
    lines += [
        "",
        "Linear-probe top-1 (kNN top-1) at each checkpoint:",
        "",
        "| method | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
        "|---|" + "---|" * len(epochs),
    ]
    for run in results["methods"].values():
        cells = []
        for e in epochs:
            v = run["checkpoints"].get(e)
            cells.append("" if v is None else f"{v['linear_top1']:.4f} ({v['knn_top1']:.4f})")
        lines.append(f"| {run['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _resolve(_parser().parse_args(argv))
    import keras

    started = time.time()
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    os.makedirs(args.output_dir, exist_ok=True)
    data = _data(args)
    command = "KERAS_BACKEND={} python tools/benchmark_accuracy.py {}".format(
        backend, " ".join(argv)
    ).strip()
    results = {
        "title": TITLE,
        "command": command,
        "backend": backend,
        "machine": _machine(),
        "versions": _versions(backend),
        "config": {
            "methods": args.methods,
            "epochs": args.epochs,
            "eval_every": args.eval_every,
            "batch_size": args.batch_size,
            "probe": _probe_settings(args),
            "knn": {"k": 20, "temperature": 0.07},
            "train_images": int(len(data[0])),
            "test_images": int(len(data[2])),
            "seed": args.seed,
            "seeds": {
                "keras.utils.set_random_seed": args.seed,
                "augmentation": args.seed,
                "linear_probe": args.seed,
            },
        },
        "methods": {},
    }
    results["baselines"] = _baselines(data, args)
    print("baselines:", json.dumps(results["baselines"]), flush=True)

    def write():
        results["wall_seconds"] = round(time.time() - started, 1)
        epochs = sorted({e for run in results["methods"].values() for e in run["checkpoints"]})
        with open(os.path.join(args.output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(args.output_dir, "chart.json"), "w") as f:
            json.dump(_echarts(results, epochs), f, indent=2)
        _chart_png(results, epochs, os.path.join(args.output_dir, "chart.png"))
        with open(os.path.join(args.output_dir, "results.md"), "w") as f:
            f.write(_markdown(results, epochs, command))

    for method in args.methods:
        results["methods"][method] = _pretrain(method, data, args)
        run = results["methods"][method]
        random_row = results["baselines"][f"random init ({run['backbone']})"]
        run["beats_random_init"] = {
            k: run["final"][k] > random_row[k] for k in ("knn_top1", "linear_top1")
        }
        print(f"{run['name']}: {json.dumps(run['final'])} in {run['wall_seconds']} s", flush=True)
        write()  # partial results survive an interrupted run
    write()
    print(open(os.path.join(args.output_dir, "results.md")).read())
    losers = [
        r["name"] for r in results["methods"].values() if not all(r["beats_random_init"].values())
    ]
    if losers:
        print(f"WARNING: not above the random-init baseline: {', '.join(losers)}")
    return results


if __name__ == "__main__":
    main()
