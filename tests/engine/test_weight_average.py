"""``--ema-decay``: the fit loop scores, keeps and returns a moving average of the weights."""

import json

import pytest
import torch
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.cli import main
from rscompress.config import FitConfig, OptimConfig
from rscompress.engine.trainer import fit
from rscompress.engine.weight_average import WeightAverage
from tests.fakes import Killed, kill_at_epoch, make_fake_dataset


def test_the_average_follows_the_weights_with_a_warmed_up_decay():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model)  # first update: decay min(0.9, 1/10) = 0.1
    assert average.module.weight.flatten().tolist() == pytest.approx([0.9, 0.9])
    for _ in range(200):
        average.update(model)
    assert average.module.weight.flatten().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert int(average.updates) == 201 and not average.module.weight.requires_grad


def _batches(n_batches, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches, 8, 4, generator=generator)
    return [(x[i], (x[i].sum(1) > 0).long()) for i in range(n_batches)]


class _Epochs(list):
    def set_epoch(self, epoch):
        pass


def _fit(run, epochs, ema_decay, resume=False, hooks=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    cfg = FitConfig(epochs=epochs, batch_size=8, ema_decay=ema_decay, optim=OptimConfig(lr=0.5))
    result = fit(
        model, _Epochs(_batches(6, 0)), _batches(2, 1), cfg, RunDir(run), 2, resume=resume, quiet=True, hooks=hooks
    )
    return model, result


def test_the_average_is_what_is_scored_kept_and_resumed(tmp_path):
    plain, _ = _fit(tmp_path / "plain", 3, None)
    averaged, result = _fit(tmp_path / "ema", 3, 0.9)
    # Not the last step's weights: the model ends with the average of the best epoch.
    pairs = zip(plain.state_dict().values(), averaged.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    best = json.loads((tmp_path / "ema" / "history.jsonl").read_text().splitlines()[result.best_epoch])
    assert result.val.top1 == pytest.approx(best["val_top1"])

    with pytest.raises(Killed):  # killed once epoch 1 is checkpointed, average and all
        _fit(tmp_path / "cut", 3, 0.9, hooks=kill_at_epoch(2))
    resumed, _ = _fit(tmp_path / "cut", 3, 0.9, resume=True)
    for (name, a), b in zip(averaged.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_cli_records_the_decay_and_refuses_one_out_of_range(tmp_path, capsys):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=4, size=16)
    args = ["train", "--data", str(data), "--model", "resnet18", "--img-size", "16", "--epochs", "1", "-q"]
    assert main([*args, "--batch-size", "8", "--ema-decay", "0.99", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["ema_decay"] == 0.99
    assert main([*args, "--ema-decay", "1.5", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ema-decay" in err[0] and not (tmp_path / "bad").exists()
