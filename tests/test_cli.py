"""`keras-ssl pretrain` end to end on a slice of the embedded data.

The whole command runs for SimCLR (the default, a ConvNet, with the evaluation table) and
DINOv2 (the ViT path, with attention maps; `--no-eval`); the other methods' demo models are
checked as the command builds them, and the methods-tour guide (tests/test_guides.py)
trains all five through the same builders with a kNN monitor and linear probes.
"""

import json

import keras
import numpy as np
import pytest
from keras import ops

from keras_ssl import cli
from keras_ssl.datasets import fashion_mnist
from keras_ssl.ops import sinkhorn_knopp


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "dinov2"])
def test_pretrain_runs_and_writes_its_report(method, tmp_path, capsys):
    out = tmp_path / method
    evaluate = method == "simclr"  # the table and kNN monitor: 10 of the 49 s on TF
    cli.main(
        [
            "pretrain", "--method", method, "--epochs", "1", "--batch-size", "64",
            "--limit", "256", "--output-dir", str(out), "--verbose", "0", "--knn-every", "1",
            *([] if evaluate else ["--no-eval"]),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert ("random init" in printed and "raw pixels" in printed) == evaluate
    report = json.loads((out / "results.json").read_text())
    assert report["backend"] == keras.backend.backend()
    assert report["method"] == method
    assert len(report["history"]["loss"]) == 1
    assert ("results" in report) == evaluate
    for row in report.get("results", {}).values():
        assert 0.0 <= row["knn_top1"] <= 1.0 and 0.0 <= row["linear_top1"] <= 1.0
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "augmentations.png").stat().st_size > 1000
    # attention maps only for ViT backbones (the DINOv2 demo)
    assert (out / "attention.png").exists() == (method == "dinov2")
    assert set(report["pictures"]) >= {"curves", "augmentations"}
    # the monitors' figures are in the history: collapse measures, and kNN on the labelled
    # split unless --no-eval
    assert report["history"]["effective_rank"][0] >= 1.0
    if evaluate:
        assert 0.0 <= report["history"]["knn_top1"][0] <= 1.0
        assert report["history_epochs"]["knn_top1"] == [1]
    else:
        assert "knn_top1" not in report["history"]
    backbone = keras.saving.load_model(out / "backbone.keras")
    assert backbone.output_dim == (128 if method == "dinov2" else 256)  # the demo recipes


@pytest.mark.parametrize("method", cli.METHODS)
def test_every_demo_model_is_its_recipe(method):
    import keras_ssl

    recipe = cli.DEMO_RECIPES[method]
    model = cli.build_model(method, cli.build_backbone(method), 28, epochs=2, steps_per_epoch=3)
    assert type(model) is getattr(keras_ssl, recipe["method"])
    assert type(model.augmenter) is getattr(keras_ssl.augment, recipe["augment"])
    config = model.get_config()
    for key, value in recipe["options"].items():
        assert config[key] == value, key
    assert model.optimizer is not None and model.backbone.output_dim == (
        128 if method == "dinov2" else 256
    )


def test_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--method", "nope"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dino", "dinov2"])
def test_multi_crop_demos_take_their_papers_crop_areas(method):
    from keras_ssl.augment import DINOMultiCrop

    paper = DINOMultiCrop() if method == "dino" else DINOMultiCrop.dinov2()
    demo = cli.build_augmenter(method, image_size=28)
    for key in ("global_crop_scale", "local_crop_scale"):
        assert demo.recipe[key] == paper.recipe[key], key


def test_dinov2_demo_teacher_targets_differ_between_images_at_init():
    # With DINOv2's LayerScale 1e-5 every image's CLS token is the same at init, and
    # Sinkhorn-Knopp of identical rows is exactly uniform (ln K nats): the CLS loss would
    # teach nothing until the residual branches grow. The demo recipe must not start there.
    (x, _), _ = fashion_mnist.load_data(source="embedded")
    model = cli.build_model("dinov2", cli.build_backbone("dinov2"), 28, epochs=1, steps_per_epoch=1)
    images = ops.convert_to_tensor(x[:64, ..., None].astype("float32") / 255.0)
    cls = ops.convert_to_numpy(model.teacher_backbone.forward_features(images)["cls"])
    unit = cls / np.linalg.norm(cls, axis=-1, keepdims=True)
    assert (unit @ unit.T)[np.triu_indices(64, 1)].mean() < 0.99  # 1.0000 at LayerScale 1e-5
    logits = model.teacher_head(ops.convert_to_tensor(cls))
    targets = ops.convert_to_numpy(sinkhorn_knopp(logits, 0.04, num_iterations=3))
    entropy = -(targets * np.log(targets)).sum(axis=-1).mean()
    assert np.log(targets.shape[-1]) - entropy > 0.02  # 0.07-0.12 nats here; 0 at 1e-5


def test_image_folder_classes_are_its_visible_sub_folders(tmp_path):
    from argparse import Namespace

    from PIL import Image

    def write(folder, count):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(folder / f"{i}.png")

    flat = tmp_path / "flat"
    write(flat, 4)
    write(flat / ".ipynb_checkpoints", 1)  # hidden: no class, no image
    args = Namespace(image_folder=str(flat), image_size=(8, 8), seed=0)
    x_train, y_train, x_test, y_test = cli._load_images(args)
    assert x_train.shape == (4, 8, 8, 3) and y_train is None and x_test is None
    labelled = tmp_path / "labelled"
    for name in ("cat", "dog"):
        write(labelled / name, 5)
    x_train, y_train, x_test, y_test = cli._load_images(
        Namespace(image_folder=str(labelled), image_size=(8, 8), seed=0)
    )
    assert len(x_train) + len(x_test) == 10 and sorted(set(y_train) | set(y_test)) == [0, 1]


def test_bad_arguments_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    def load_images(args):
        raise AssertionError("the arguments should have been refused before loading data")

    monkeypatch.setattr(cli, "_load_images", load_images)
    refused = {
        ("--image-folder", "/nonexistent"): "--image-folder: no such directory: '/nonexistent'",
        ("--batch-size", "0"): "--batch-size: must be at least 1, got 0",
        ("--epochs", "-1"): "--epochs: must be at least 1, got -1",
        ("--limit", "3"): "--limit: must be at least 8, got 3",
        ("--knn-every", "two"): "--knn-every: expected an integer, got 'two'",
        ("--backbone", "resnet_999"): "--backbone: unknown backbone 'resnet_999'; choose from",
    }
    for arguments, message in refused.items():
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["pretrain", "--output-dir", str(tmp_path / "run"), *arguments])
        assert exit_info.value.code == 2, arguments
        assert f"keras-ssl pretrain: error: argument {message}" in capsys.readouterr().err
        assert not (tmp_path / "run").exists(), arguments
    # The names backbones.get accepts, and the smallest limit, pass.
    args = cli._parser().parse_args(["pretrain", "--backbone", "ViT-Tiny", "--limit", "8"])
    assert (args.backbone, args.limit) == ("ViT-Tiny", 8)


def test_a_diverged_backbone_scores_nan_not_a_fake_accuracy():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(50, 8)), rng.normal(size=(20, 8))
    train[7] = np.nan
    row = cli._evaluate(train, np.arange(50) % 5, test, np.arange(20) % 5, seed=0)
    assert np.isnan(row["knn_top1"]) and np.isnan(row["linear_top1"])
