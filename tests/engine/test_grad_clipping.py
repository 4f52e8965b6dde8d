"""``--clip-grad-norm``: a step's gradients past the norm are rescaled to it, and counted; left
unset, the task's default applies (a detector's), and 0 turns it off."""

import json

import torch
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.cli import main
from rscompress.config import DETECTION_CLIP_GRAD_NORM, FitConfig, OptimConfig
from rscompress.engine.detection import Detection
from rscompress.engine.tasks import Classification
from rscompress.engine.trainer import fit
from tests.fakes import make_fake_dataset


class _Epochs(list):
    def set_epoch(self, epoch):
        pass


def _batches(n_batches, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches, 8, 4, generator=generator)
    return [(x[i], (x[i].sum(1) > 0).long()) for i in range(n_batches)]


class _ClippedByDefault(Classification):
    default_clip_grad_norm = 1e-9


def _moved(run, clip_grad_norm, task=2):
    """How far training moved the weights, and the run's history rows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    start = [p.detach().clone() for p in model.parameters()]
    optim = OptimConfig(lr=0.5, weight_decay=0.0)  # no decay: only the gradient moves a weight
    cfg = FitConfig(epochs=2, batch_size=8, clip_grad_norm=clip_grad_norm, optim=optim)
    fit(model, _Epochs(_batches(4, 0)), _batches(2, 1), cfg, RunDir(run), task, quiet=True)
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(model.parameters(), start, strict=True))
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return moved, rows


def test_gradients_past_the_norm_are_rescaled_to_it_and_the_history_counts_those_steps(tmp_path):
    free, rows = _moved(tmp_path / "free", None)
    assert free > 1e-2 and all("clipped_steps" not in r for r in rows)
    held, rows = _moved(tmp_path / "held", 1e-9)  # every step rescaled to a norm of 1e-9
    assert held < 1e-6 and [r["clipped_steps"] for r in rows] == [4, 4]
    loose, rows = _moved(tmp_path / "loose", 1e9)  # never reached: the same steps as unclipped
    assert loose == free and [r["clipped_steps"] for r in rows] == [0, 0]


def test_unset_the_tasks_default_clips_and_zero_never_does(tmp_path):
    free, _ = _moved(tmp_path / "free", None)
    held, rows = _moved(tmp_path / "default", None, _ClippedByDefault(2))
    assert held < 1e-6 and [r["clipped_steps"] for r in rows] == [4, 4]
    off, rows = _moved(tmp_path / "off", 0, _ClippedByDefault(2))
    assert off == free and all("clipped_steps" not in r for r in rows)
    assert Detection(("well",)).default_clip_grad_norm == DETECTION_CLIP_GRAD_NORM


def test_cli_records_the_norm_and_refuses_one_that_is_not_positive(tmp_path, capsys):
    data = make_fake_dataset(tmp_path, per_class=4, size=16)
    args = ["train", "--data", str(data), "--model", "resnet18", "--img-size", "16", "--epochs", "1"]
    assert main([*args, "--clip-grad-norm", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert (
        "--clip-grad-norm: Input should be greater than or equal to 0" in capsys.readouterr().err
        and not (tmp_path / "bad").exists()
    )
    assert main([*args, "--batch-size", "8", "--clip-grad-norm", "5", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["clip_grad_norm"] == 5
    assert "clipped_steps" in json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[0])
