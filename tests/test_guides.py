"""Every guide runs top to bottom in its small mode, on the current backend."""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

GUIDES = sorted((pathlib.Path(__file__).parent.parent / "guides").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.stem)
def test_guide_runs_in_small_mode(guide, tmp_path):
    if guide.stem == "switching_backends" and keras.backend.backend() != "tensorflow":
        pytest.skip(
            "switching_backends runs all three backends itself, in subprocesses; the "
            "tensorflow suite runs it"
        )
    env = dict(
        os.environ,
        KERAS_BACKEND=keras.backend.backend(),
        KERAS_SSL_GUIDE_SMALL="1",
        KERAS_SSL_GUIDE_OUTPUT=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, str(guide)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert any(tmp_path.iterdir()), "the guide wrote no pictures or files"


def test_there_are_guides():
    assert GUIDES
