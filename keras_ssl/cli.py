"""The `keras-ssl` command: `keras-ssl pretrain` runs SSL pretraining and evaluates the features.

With no arguments it pretrains SimCLR on the embedded Fashion-MNIST subset with the demo
ConvNet and prints kNN and linear-probe top-1 of the learned features against the same
backbone at random initialisation and against raw pixels. During training a `KNNMonitor`
reports kNN top-1 on the labelled held-out split (`--knn-every`) and a `CollapseMonitor`
the spread and effective rank of the features on a fixed probe batch; the output directory
gets `curves.png`, `augmentations.png` (the recipe's views), `attention.png` (ViT backbones:
the last block's CLS attention per head), `backbone.keras` and `results.json`.
"""

import argparse
import json
import os
import platform
import sys
import time

from keras_ssl.augment.recipes import DINOV2_CROP_SCALES

# The demo recipe of each method for small images (28-96 px) on a CPU: the paper's method
# and augmentation family, widths and schedules scaled down. `lr` is AdamW's peak rate.
DEMO_RECIPES = {
    "simclr": dict(
        method="SimCLR",
        augment="SimCLRAugment",
        augment_options=dict(crop_scale=(0.2, 1.0)),
        options=dict(temperature=0.5),
        lr=5e-3,
    ),
    "mocov2": dict(
        method="MoCoV2",
        augment="MoCoV2Augment",
        augment_options={},
        options=dict(queue_size=4096, temperature=0.2, momentum=0.99),
        lr=2e-3,
    ),
    "byol": dict(
        method="BYOL",
        augment="BYOLAugment",
        augment_options=dict(crop_scale=(0.2, 1.0)),
        options=dict(hidden_dim=1024, projection_dim=128, momentum=0.99),
        lr=2e-3,
    ),
    "dino": dict(
        method="DINO",
        augment="DINOMultiCrop",
        augment_options=dict(num_local_crops=4),
        options=dict(
            output_dim=4096,
            hidden_dim=512,
            bottleneck_dim=128,
            use_bn_in_head=True,
            warmup_teacher_temperature_epochs=5,
            momentum=0.99,
        ),
        lr=1e-3,
    ),
    "dinov2": dict(
        method="DINOv2",
        augment="DINOMultiCrop",
        augment_options=dict(num_local_crops=4, **DINOV2_CROP_SCALES),
        # DINOv2 needs patch tokens: a ViT with 4 px patches (7 x 7 of them at 28 px).
        # LayerScale starts at 1, not DINOv2's 1e-5: at 1e-5 every image's CLS token is the
        # same at init, Sinkhorn-Knopp of identical rows is exactly uniform, and the CLS loss
        # teaches nothing for most of a few-hundred-step run. The teacher's EMA starts at
        # 0.99 (as the DINO demo) so it follows the student within that budget.
        backbone=dict(
            name="vit_tiny",
            patch_size=4,
            hidden_dim=128,
            depth=4,
            num_heads=4,
            num_register_tokens=1,
            layer_scale_init=1.0,
        ),  # fmt: skip
        options=dict(
            output_dim=4096,
            hidden_dim=512,
            bottleneck_dim=128,
            warmup_teacher_temperature_epochs=5,
            momentum=0.99,
        ),
        lr=1e-3,
    ),
}
METHODS = tuple(DEMO_RECIPES)
# The Fashion-MNIST test split of `--limit N` is its first N // 4 images, and the collapse
# monitor measures at least 2 of them.
MIN_LIMIT = 8


def _int_at_least(minimum):
    """An argparse type: an integer >= `minimum`."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _directory(text):
    """An argparse type: the path of an existing directory."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such directory: {text!r}")
    return text


def _backbone_name(text):
    """An argparse type: a name `keras_ssl.backbones.get` knows."""
    from keras_ssl import backbones

    if backbones._registry_key(text) is None:
        raise argparse.ArgumentTypeError(
            f"unknown backbone {text!r}; choose from {', '.join(backbones.names())}"
        )
    return text


def _parser():
    parser = argparse.ArgumentParser(prog="keras-ssl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser(
        "pretrain",
        help="pretrain a backbone self-supervised, then evaluate it (kNN, linear probe)",
        description=(
            "Pretrain a backbone with a self-supervised method and evaluate its features. "
            "Defaults: SimCLR, demo ConvNet, the embedded Fashion-MNIST subset."
        ),
    )
    p.add_argument("--method", default="simclr", choices=METHODS)
    p.add_argument(
        "--backbone",
        type=_backbone_name,
        default=None,
        help="convnet (default), resnet18_cifar, resnet18, ...; dinov2 defaults to a small ViT",
    )
    p.add_argument(
        "--epochs", type=_int_at_least(1), default=None, help="default: 15 (embedded data)"
    )
    p.add_argument("--batch-size", type=_int_at_least(1), default=256)
    p.add_argument("--learning-rate", type=float, default=None, help="default: method's")
    p.add_argument(
        "--data",
        default="embedded",
        choices=("embedded", "full"),
        help="Fashion-MNIST source when no --image-folder is given",
    )
    p.add_argument(
        "--image-folder",
        type=_directory,
        default=None,
        help="pretrain on this folder of images instead (sub-folders, if any, are classes "
        "and are used for evaluation only)",
    )
    p.add_argument(
        "--image-size", type=_int_at_least(1), default=None, help="default: 28, or 64 for folders"
    )
    p.add_argument("--backend", default=None, choices=("tensorflow", "jax", "torch"))
    p.add_argument("--output-dir", default=None, help="default: keras_ssl_runs/<method>_<backend>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation table")
    p.add_argument("--verbose", type=int, default=1, help="Keras progress bar: 0, 1 or 2")
    p.add_argument(
        "--limit",
        type=_int_at_least(MIN_LIMIT),
        default=None,
        help=f"use only the first N Fashion-MNIST images (at least {MIN_LIMIT})",
    )
    p.add_argument(
        "--knn-every",
        type=_int_at_least(0),
        default=5,
        help="kNN top-1 on the labelled held-out split every N epochs during training, in the "
        "progress bar and the history (0: off; needs labels)",
    )
    p.add_argument(
        "--stop-on-collapse",
        action="store_true",
        help="stop training when the collapse monitor fires (default: warn)",
    )
    return parser


def _switch_backend(backend, argv):
    """Re-runs this command under `backend`: Keras fixes its backend at import time."""
    import keras

    if backend is None or keras.backend.backend() == backend:
        return
    os.environ["KERAS_BACKEND"] = backend
    os.execv(sys.executable, [sys.executable, "-m", "keras_ssl.cli", *argv])


def _load_images(args):
    """(train images, train labels, test images, test labels); labels are None if unknown."""
    import numpy as np

    if args.image_folder:
        from keras_ssl.data import image_folder

        # Class folders as image_folder reads them: hidden ones (.ipynb_checkpoints) are not.
        labelled = any(
            entry.is_dir() and not entry.name.startswith(".")
            for entry in os.scandir(args.image_folder)
        )
        data = image_folder(
            args.image_folder, args.image_size, batch_size=256, labels=labelled, shuffle=False
        )
        batches = [data[i] for i in range(len(data))]
        if not labelled:
            return np.concatenate(batches), None, None, None
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        order = np.random.default_rng(args.seed).permutation(len(images))
        n_test = max(1, len(images) // 5)
        test, train = order[:n_test], order[n_test:]
        return images[train], labels[train], images[test], labels[test]

    from keras_ssl.datasets import fashion_mnist

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(source=args.data)
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
        x_test, y_test = x_test[: args.limit // 4], y_test[: args.limit // 4]
    return x_train[..., None], y_train, x_test[..., None], y_test


def build_backbone(method, backbone=None, channels=1, image_size=28):
    """The backbone of `method`'s demo recipe (or the named `backbone`), untrained."""
    import keras_ssl

    recipe = DEMO_RECIPES[method]
    if backbone is None and "backbone" in recipe:
        options = dict(recipe["backbone"])
        return keras_ssl.backbones.get(
            options.pop("name"), input_channels=channels, pretrain_image_size=image_size, **options
        )
    return keras_ssl.backbones.get(backbone or "convnet", input_channels=channels)


def build_augmenter(method, image_size=28, seed=0, **overrides):
    """The augmentation recipe of `method`'s demo, for `image_size` px images (`overrides`
    replace the recipe's options, e.g. `num_local_crops=2`)."""
    import keras_ssl

    recipe = DEMO_RECIPES[method]
    augment_class = getattr(keras_ssl.augment, recipe["augment"])
    options = {**recipe["augment_options"], **overrides}
    return augment_class.small_images(image_size, seed=seed, **options)


def build_model(
    method,
    backbone,
    image_size,
    epochs,
    steps_per_epoch,
    learning_rate=None,
    seed=0,
    options=None,
    augment_options=None,
):
    """`method`'s demo model around `backbone`, compiled with the demo optimizer.

    `options` and `augment_options` replace entries of the recipe's method and
    augmentation options (e.g. a shorter MoCo queue for a small run).

    AdamW with a 10% linear warm-up from a tenth of the peak rate, then cosine decay, and
    gradient clipping at norm 3; DINO and DINOv2 schedule their own weight decay, the
    others get AdamW's 1e-4.
    """
    import keras

    import keras_ssl

    recipe = DEMO_RECIPES[method]
    method_class = getattr(keras_ssl, recipe["method"])
    model = method_class(
        backbone,
        augmenter=build_augmenter(method, image_size, seed, **(augment_options or {})),
        **{**recipe["options"], **(options or {})},
    )
    steps = max(1, epochs * steps_per_epoch)
    learning_rate = learning_rate or recipe["lr"]
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate * 0.1,
        decay_steps=steps,
        warmup_target=learning_rate,
        warmup_steps=max(1, steps // 10),
    )
    weight_decay = 0.0 if isinstance(model, keras_ssl.DINO) else 1e-4
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay, clipnorm=3.0)
    )
    return model


def _pixels(images):
    import numpy as np

    from keras_ssl.augment._base import to_unit_float

    return np.asarray(to_unit_float(images), "float32").reshape(len(images), -1)


def _evaluate(train_features, y_train, test_features, y_test, seed):
    """kNN and linear-probe top-1 of the features; NaN for a diverged (non-finite) backbone."""
    import numpy as np

    from keras_ssl.eval import knn_accuracy, linear_probe

    if not (np.isfinite(train_features).all() and np.isfinite(test_features).all()):
        return {"knn_top1": float("nan"), "linear_top1": float("nan")}
    knn = knn_accuracy(train_features, y_train, test_features, y_test, k=20, temperature=0.07)
    probe = linear_probe(
        train_features,
        y_train,
        test_features,
        y_test,
        epochs=30,
        batch_size=256,
        learning_rate=1e-3,
        seed=seed,
    )
    return {"knn_top1": knn, "linear_top1": probe.top1}


def _monitors(args, model, x_train, y_train, x_test, y_test):
    """The callbacks of a run: kNN on the labelled split, collapse alarms on a probe batch."""
    from keras_ssl.callbacks import CollapseMonitor, KNNMonitor

    monitors = {}
    probe = x_test if x_test is not None else x_train
    monitors["collapse"] = CollapseMonitor(
        probe[:512], stop_on_collapse=args.stop_on_collapse, patience=2
    )
    if y_train is not None and args.knn_every > 0 and not args.no_eval:
        monitors["knn"] = KNNMonitor(
            (x_train, y_train), (x_test, y_test), every_n_epochs=args.knn_every
        )
    return monitors


def _metric_epochs(monitors):
    """Epochs (from 1) at which the monitors' metrics were logged, for the curves."""
    epochs = {}
    for monitor in monitors.values():
        for epoch, values in monitor.results.items():
            if epoch == 0:
                continue
            for key in values:
                epochs.setdefault(key, []).append(int(epoch))
    return epochs


def pretrain(args):
    import keras

    import keras_ssl
    from keras_ssl.eval import extract_features

    started = time.time()
    backend = keras.backend.backend()
    keras.utils.set_random_seed(args.seed)
    if args.image_size is None:
        args.image_size = 64 if args.image_folder else 28
    if args.epochs is None:
        args.epochs = 15
    output_dir = args.output_dir or os.path.join("keras_ssl_runs", f"{args.method}_{backend}")
    os.makedirs(output_dir, exist_ok=True)

    x_train, y_train, x_test, y_test = _load_images(args)
    channels = x_train.shape[-1]

    recipe = DEMO_RECIPES[args.method]
    backbone_name = args.backbone or recipe.get("backbone", {}).get("name", "convnet")
    print(
        f"keras_ssl {keras_ssl.__version__} | backend {backend} | {args.method} | "
        f"{backbone_name} | {len(x_train)} images {x_train.shape[1:]} | "
        f"{args.epochs} epochs, batch {args.batch_size}"
    )

    def make_backbone():
        return build_backbone(args.method, args.backbone, channels, args.image_size)

    model = build_model(
        args.method,
        make_backbone(),
        args.image_size,
        epochs=args.epochs,
        steps_per_epoch=len(x_train) // args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    random_backbone = make_backbone()  # same architecture, never trained: the baseline
    random_backbone.set_weights(model.backbone.get_weights())

    monitors = _monitors(args, model, x_train, y_train, x_test, y_test)
    pictures = {"augmentations": os.path.join(output_dir, "augmentations.png")}
    keras_ssl.visualize.augmentation_grid(
        model.augmenter, x_train[:6], pictures["augmentations"], title=f"{args.method} views"
    )
    history = model.fit(
        x_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=args.verbose,
        callbacks=list(monitors.values()),
    )
    train_seconds = time.time() - started

    model.backbone.save(os.path.join(output_dir, "backbone.keras"))
    curves = keras_ssl.visualize.plot_history(
        history,
        os.path.join(output_dir, "curves.png"),
        title=f"{args.method} on {backend}",
        epochs=_metric_epochs(monitors),
    )
    pictures["curves"] = curves
    if callable(getattr(model.backbone, "get_last_self_attention", None)):
        probe = x_test if x_test is not None else x_train
        pictures["attention"] = os.path.join(output_dir, "attention.png")
        keras_ssl.visualize.attention_maps(model.backbone, probe[:6], path=pictures["attention"])
    report = {
        "method": args.method,
        "backbone": backbone_name,
        "backend": backend,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "images": int(len(x_train)),
        "image_shape": list(x_train.shape[1:]),
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "history_epochs": _metric_epochs(monitors),
        "collapse": monitors["collapse"].message if "collapse" in monitors else None,
        "pictures": pictures,
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
    }

    if y_train is not None and not args.no_eval:
        rows = {}
        candidates = {
            f"{args.method} (self-supervised)": model.backbone,
            "random init (same backbone)": random_backbone,
        }
        for name, backbone in candidates.items():
            features = (extract_features(backbone, x_train), extract_features(backbone, x_test))
            rows[name] = _evaluate(features[0], y_train, features[1], y_test, args.seed)
        rows["raw pixels"] = _evaluate(
            _pixels(x_train), y_train, _pixels(x_test), y_test, args.seed
        )
        report["results"] = rows
        ssl_row = rows[f"{args.method} (self-supervised)"]
        random_row = rows["random init (same backbone)"]
        report["margin_over_random"] = {k: round(ssl_row[k] - random_row[k], 4) for k in ssl_row}
        print()
        print(f"{'features':32s} {'kNN top-1':>10s} {'linear top-1':>13s}")
        for name, row in rows.items():
            print(f"{name:32s} {row['knn_top1']:10.4f} {row['linear_top1']:13.4f}")
        print(
            "margin over random init: "
            f"kNN {report['margin_over_random']['knn_top1']:+.4f}, "
            f"linear {report['margin_over_random']['linear_top1']:+.4f}"
        )
    report["total_seconds"] = round(time.time() - started, 1)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    for name, path in pictures.items():
        print(f"{name}: {path}")
    print(f"results: {os.path.join(output_dir, 'results.json')}")
    print(f"total time {report['total_seconds']:.0f} s")
    return report


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    _switch_backend(args.backend, argv)
    if args.command == "pretrain":
        pretrain(args)


if __name__ == "__main__":
    main()
