"""``prune --target-speedup`` / ``--target-latency-ms``: the candidates timed here against the
parent (deploy/latency_probe.py). Only what does not depend on this machine's speed is asserted."""

import json

import pytest
import torch

from rscompress import api
from rscompress.config import FitConfig, PruneConfig
from rscompress.deploy.latency_probe import LatencyProbe
from tests.deploy.helpers import make_model


def test_a_model_timed_against_itself_runs_at_its_own_speed():
    model = make_model("resnet18", 32)
    probe = LatencyProbe(model, 32)
    measured = probe(make_model("resnet18", 32))
    assert measured.ratio == pytest.approx(1.0, abs=0.25)  # interleaved: load hits both alike
    assert measured.repeats >= 100 and measured.spread >= 0 and probe.precision == "fp32"


def test_int8_candidates_are_quantized_before_they_are_timed():
    model = make_model("resnet18", 32)
    probe = LatencyProbe(model, 32, int8_calibration=torch.randn(16, 3, 32, 32).numpy())
    assert probe.precision == "int8"
    assert probe(make_model("resnet18", 32)).candidate_ms > 0


def test_prune_to_a_speedup_measured_here_records_the_search(trained_run, tmp_path):
    run, _ = trained_run
    out = tmp_path / "fast"
    cfg = PruneConfig(method="l1", target_speedup=1.3, finetune=FitConfig(epochs=1, batch_size=8))
    metrics = api.prune(run, cfg, out, quiet=True)
    latency = metrics["latency_budget"]
    assert (metrics["target_speedup"], latency["threads"], latency["precision"]) == (1.3, 1, "fp32")
    assert latency["target_ratio"] == pytest.approx(1 / 1.3)
    assert latency["macs_share"] in [trial["macs_share"] for trial in latency["trials"]]
    assert metrics["macs_kept"] < 1
    # the budget is one of the run's settings, so a resume with another one is refused
    stored = json.loads((out / "config.json").read_text())["method_params"]
    assert (stored["target_speedup"], stored["latency_int8"]) == (1.3, False)


def test_round_to_auto_on_the_cli_times_each_multiple_and_records_its_choice(trained_run, tmp_path, capsys):
    from rscompress.cli import main

    run, _ = trained_run
    args = ["prune", str(run), "--method", "l1", "--target-macs", "0.5", "--finetune-epochs", "1", "--batch-size", "8"]
    assert main([*args, "--round-to", "auto", "--out", str(tmp_path / "auto"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    auto = metrics["round_to_auto"]
    assert auto["chosen"] in (1, 8, 16, 32) and metrics["macs_kept"] == pytest.approx(0.5, rel=0.01)
    timed = [row for row in auto["candidates"] if "ratio" in row]
    assert timed and min(row["ratio"] for row in timed) == next(
        r["ratio"] for r in timed if r["round_to"] == auto["chosen"]
    )
    assert main([*args, "--round-to", "x", "--out", str(tmp_path / "bad")]) == 2
    assert (
        "--round-to takes a positive channel multiple or auto, got 'x'" in capsys.readouterr().err
        and not (tmp_path / "bad").exists()
    )
