"""tools/benchmark_speed.py: its --quick run on the current backend, and its arithmetic.

The keras_ssl side always runs (on `KERAS_BACKEND`); the lightly side only where its
virtual environment (`tools/.speed-venv`, made by `--setup-venv`) already exists, since
creating it downloads packages.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from tests._support.xla import without_fast_compile

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "benchmark_speed.py"
VENV_PYTHON = ROOT / "tools" / ".speed-venv" / "bin" / "python"


def _load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_speed", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_writes_table_and_json(tmp_path):
    backend = keras.backend.backend()
    with_lightly = VENV_PYTHON.exists()
    command = [
        sys.executable,
        str(TOOL),
        "--quick",
        "--methods",
        # BYOL: its schedules need the run's length, which each round's `fit` ends.
        "simclr,byol",
        "--backends",
        backend,
        "--output-dir",
        str(tmp_path),
    ]
    if not with_lightly:
        command.append("--no-lightly")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # The tool times with XLA's defaults: the suite's fast-compile flags run its steps about
    # 17x slower, which costs this test more than they save (49 -> 40 s on JAX).
    env["XLA_FLAGS"] = without_fast_compile(env.get("XLA_FLAGS", ""))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads((tmp_path / "speed.json").read_text())
    assert {"machine", "versions", "settings", "results", "load_average_start"} <= set(report)
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"]
    assert report["versions"][backend]["keras"] == keras.__version__
    assert report["settings"]["batch_size"] == 8 and report["settings"]["quick"]
    assert report["settings"]["malloc_env"]["MALLOC_MMAP_MAX_"] == "0"
    entry, byol = report["results"]
    assert (entry["entry"], byol["entry"]) == ("simclr", "byol")
    for record in (entry, byol):
        for side in record["summary"]["sides"].values():
            assert side["error"] is None and side["failed_rounds"] == {}, side
    # Both rounds' steps: the second comes after the first round's `fit`.
    assert byol["summary"]["sides"][backend]["step"]["n"] == 2
    sides = entry["summary"]["sides"]
    assert set(sides) == ({backend, "lightly"} if with_lightly else {backend})
    row = sides[backend]
    assert row["error"] is None
    # ResNet-10 (CIFAR stem) 4,898,112 + head 512*512 (no bias, BN follows) + BN 1,024
    # + 512*128 + 128: the count torchvision's ResNet(BasicBlock, [1, 1, 1, 1]) gives.
    assert row["parameters"] == {"backbone": 4_898_112, "trainable": 5_226_944}
    step = row["step"]
    assert step["n"] == 2 and step["median_s"] > 0
    assert step["images_per_s"] == pytest.approx(8 / step["median_s"])
    assert row["first_step_s"] > 0 and row["peak_rss_mb"] > 50
    assert row["augment"]["images_per_s"] > 0 and row["fit"]["images_per_s"] > 0
    if with_lightly:
        assert sides["lightly"]["parameters"] == row["parameters"]
        assert entry["summary"]["flops_per_image"] > 0
        assert row["ratio_vs_lightly"]["median"] > 0

    table = (tmp_path / "speed.md").read_text()
    assert "| method | side | trainable params |" in table
    assert f"| SimCLR, resnet10_cifar, batch 8 | {backend}" in table
    assert "5,226,944" in table


def test_summary_ratios_medians_and_flops():
    tool = _load_tool()

    def step_answers(times_per_round):
        return [{"ok": True, "times": t, "minor_faults_per_step": 3} for t in times_per_round]

    def side(times_per_round, parameters, lightly_rounds=()):
        return {
            "error": None,
            "info": {
                "parameters": parameters,
                "first_step_s": 1.0,
                "flops_per_step": 4e9,
            },
            "exit": {"peak_rss_mb": 100.0},
            "rounds": {
                "step": step_answers(times_per_round),
                "fit": [{"ok": True, "seconds_per_step": 0.5}],
            },
            "lightly_step": step_answers(lightly_rounds),
        }

    params = {"backbone": 10, "trainable": 12}
    # lightly ran two turns: two rounds beside jax, then two beside torch (slower by then).
    jax_turn, torch_turn = [[0.1, 0.1], [0.2, 0.2]], [[0.4, 0.4], [0.4, 0.4]]
    record = {
        "sides": {
            "lightly": side(jax_turn + torch_turn, params),
            "jax": side([[0.2, 0.2], [0.2, 0.6]], params, jax_turn),
            "torch": side([[0.4, 0.4], [0.2, 0.2]], params, torch_turn),
        }
    }
    summary = tool.summarise(record, batch=10)
    assert summary["flops_per_image"] == pytest.approx(4e8)
    jax = summary["sides"]["jax"]
    assert jax["step"]["median_s"] == pytest.approx(0.2)
    assert jax["step"]["images_per_s"] == pytest.approx(50.0)
    assert jax["step"]["gflop_per_s"] == pytest.approx(20.0)
    # Per-round ratios of the medians, against lightly's rounds of the same turn only:
    # 0.1 / 0.2 and 0.2 / 0.4 for jax; 0.4 / 0.4 and 0.4 / 0.2 for torch.
    assert jax["ratio_vs_lightly"]["rounds"] == pytest.approx([0.5, 0.5])
    assert summary["sides"]["torch"]["ratio_vs_lightly"]["rounds"] == pytest.approx([1.0, 2.0])
    assert jax["fit"]["images_per_s"] == pytest.approx(20.0)
    assert jax["fit"]["vs_step"] == pytest.approx(0.4)
    assert "ratio_vs_lightly" not in summary["sides"]["lightly"]


def test_a_failed_round_is_reported_not_dropped():
    tool = _load_tool()
    error = "ValueError: call model.set_run_length first"
    answers = [{"ok": True, "times": [0.2, 0.2]}, {"ok": False, "error": error}]
    record = {
        "sides": {
            "jax": {
                "error": None,
                "info": {"parameters": {"trainable": 3}, "first_step_s": 1.0},
                "rounds": {"step": answers, "augment": [{"ok": True, "times": [0.1]}] * 2},
            }
        }
    }
    summary = tool.summarise(record, batch=10)
    row = summary["sides"]["jax"]
    assert row["failed_rounds"] == {"step": [error]}
    assert row["step"]["n"] == 2  # the round that ran still counts
    report = {
        "settings": tool.report_settings(tool._resolve(tool._parser().parse_args(["--quick"]))),
        "machine": {"cpu": "test", "cores_available": 2},
        "load_average_start": [0],
        "load_average_end": [0],
        "versions": {},
        "results": [
            {
                "entry": "byol",
                "spec": {"backbone": "r", "batch_size": 10},
                "sides": record["sides"],
                "summary": summary,
            }
        ],
    }
    table = tool.markdown(report)
    assert "FAILED ROUNDS" in table
    assert f"- byol, jax, step: 1 of 2 rounds failed ({error})" in table


def test_views_are_the_same_on_both_sides():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import _speed_common as common
    finally:
        sys.path.remove(str(ROOT / "tools"))
    spec = {
        "method": "dino",
        "image_size": 8,
        "local_size": 4,
        "local_crops": 3,
        "batch_size": 2,
        "seed": 5,
    }
    first, second = common.make_views(spec), common.make_views(spec)
    assert [v.shape for v in first] == [(2, 8, 8, 3)] * 2 + [(2, 4, 4, 3)] * 3
    assert all((a == b).all() for a, b in zip(first, second, strict=True))
    assert common.feature_dim("resnet50") == 2048 and common.feature_dim("vit_small") == 384


def test_device_names_match_the_device_option(monkeypatch):
    # `--device cuda` is compared with what each backend says it computes on; JAX names its
    # CUDA devices "gpu" (on an H200 this check failed every JAX worker).
    tool = _load_tool()
    jax = pytest.importorskip("jax")
    assert tool.keras_device("jax") == "cpu"

    class Device:
        platform = "gpu"

    monkeypatch.setattr(jax, "devices", lambda *args: [Device()])
    assert tool.keras_device("jax") == "cuda"
