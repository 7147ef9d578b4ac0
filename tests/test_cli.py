"""`keras-ssl pretrain` end to end on a slice of the embedded data, every method."""

import json

import keras
import pytest

from keras_ssl import cli


@pytest.mark.parametrize("method", cli.METHODS)
def test_pretrain_runs_and_writes_its_report(method, tmp_path, capsys):
    out = tmp_path / method
    cli.main(
        [
            "pretrain", "--method", method, "--epochs", "1", "--batch-size", "64",
            "--limit", "256", "--output-dir", str(out), "--verbose", "0", "--knn-every", "1",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "kNN top-1" in printed and "random init" in printed and "raw pixels" in printed
    report = json.loads((out / "results.json").read_text())
    assert report["backend"] == keras.backend.backend()
    assert report["method"] == method
    assert len(report["history"]["loss"]) == 1
    for row in report["results"].values():
        assert 0.0 <= row["knn_top1"] <= 1.0 and 0.0 <= row["linear_top1"] <= 1.0
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "augmentations.png").stat().st_size > 1000
    # attention maps only for ViT backbones (the DINOv2 demo)
    assert (out / "attention.png").exists() == (method == "dinov2")
    assert set(report["pictures"]) >= {"curves", "augmentations"}
    # the monitors' figures are in the history: kNN on the labelled split, collapse measures
    assert 0.0 <= report["history"]["knn_top1"][0] <= 1.0
    assert report["history"]["effective_rank"][0] >= 1.0
    assert report["history_epochs"]["knn_top1"] == [1]
    backbone = keras.saving.load_model(out / "backbone.keras")
    assert backbone.output_dim == (128 if method == "dinov2" else 256)  # the demo recipes


def test_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--method", "nope"])
    assert "invalid choice" in capsys.readouterr().err
