"""`tools/benchmark_accuracy.py` end to end with tiny settings."""

import importlib.util
import json
import pathlib

import keras
import pytest

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "benchmark_accuracy.py"


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_accuracy", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_run_writes_table_chart_and_record(tmp_path):
    tool = _tool()
    results = tool.main(
        [
            "--methods", "simclr,mocov2", "--limit", "128", "--epochs", "1", "--eval-every", "1",
            "--probe-epochs", "1", "--batch-size", "64", "--output-dir", str(tmp_path),
            "--verbose", "0",
        ]
    )  # fmt: skip
    chart = json.loads((tmp_path / "chart.json").read_text())
    assert chart["title"]["text"] == "Linear Probe Accuracy vs Pretraining Epochs"
    assert chart["xAxis"]["data"] == [0, 1]
    assert [s["name"] for s in chart["series"]] == ["SimCLR", "MoCo-v2"]
    assert all(s["type"] == "line" and len(s["data"]) == 2 for s in chart["series"])
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["backend"] == keras.backend.backend()
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"]
    assert record["config"]["seed"] == 0 and record["wall_seconds"] > 0
    assert set(record["baselines"]) == {"random init (ConvNet)", "raw pixels"}
    simclr = results["methods"]["simclr"]
    assert sorted(simclr["checkpoints"]) == [0, 1] and simclr["backbone"] == "ConvNet"
    # the chart's points are the linear-probe top-1 (%) of the checkpoints
    assert chart["series"][0]["data"] == [
        round(100 * simclr["checkpoints"][e]["linear_top1"], 2) for e in (0, 1)
    ]
    table = (tmp_path / "results.md").read_text()
    assert "| SimCLR, 1 epochs | ConvNet |" in table and "raw pixels" in table
    # pretraining and the checkpoints' kNN / probe evaluations are timed apart
    assert 0 < simclr["eval_seconds"] < simclr["wall_seconds"]
    row = next(line for line in table.splitlines() if line.startswith("| SimCLR"))
    pretrain = simclr["wall_seconds"] - simclr["eval_seconds"]
    assert row.endswith(f"| {pretrain:.0f} | {simclr['eval_seconds']:.0f} |")
    assert (tmp_path / "chart.png").stat().st_size > 1000
