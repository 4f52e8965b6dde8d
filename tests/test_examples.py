"""The examples run from a fresh clone as a user would run them."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_prune_your_model_runs_end_to_end(tmp_path):
    out = tmp_path / "example"
    # Two parent epochs (one sparse, one fine-tuning): the test checks the pipeline, not accuracy.
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "prune_your_model.py"), "--out", str(out), "--epochs", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("pruned: 3") and "of the MACs" in line for line in lines), done.stdout
    reloaded = next(line for line in lines if line.startswith("reloaded:"))
    assert float(reloaded.split()[-1]) <= 1e-5
    assert (out / "l1rr.onnx").is_file() and (out / "l1rr-model" / "model.safetensors").is_file()
