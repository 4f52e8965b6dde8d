"""Mixup / CutMix: images and labels blended by the same share, drawn reproducibly per epoch,
for classifiers only, and never with a loss that needs one label per image."""

import json
import random
import re

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.cli import main
from rscompress.config import CLASSIFIER_TRAIN_CUTMIX_ALPHA, DistillConfig, FitConfig, OptimConfig, PruneConfig
from rscompress.engine.mixing import mix_batch
from rscompress.engine.trainer import TrainingHooks, fit
from rscompress.errors import UserError
from tests.fakes import make_fake_dataset

N, CLASSES = 6, 6


def _identified_batch():
    """Image i is filled with the value i and labelled class i: every pixel says whose it is."""
    x = torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1).expand(N, 3, 8, 8).contiguous()
    return x, torch.arange(N)


def test_mixup_blends_each_image_with_its_reversed_partner_by_the_labels_share():
    x, y = _identified_batch()
    mixed, soft = mix_batch(x, y, CLASSES, mixup_alpha=0.4, cutmix_alpha=0.0, rng=random.Random(1))
    lam = float(soft[0, 0])
    assert 0 < lam < 1 and torch.allclose(soft.sum(1), torch.ones(N))
    for i in range(N):
        partner = N - 1 - i
        assert torch.allclose(mixed[i], torch.full_like(mixed[i], lam * i + (1 - lam) * partner))
        assert soft[i, i] == pytest.approx(lam) and soft[i, partner] == pytest.approx(1 - lam)


def test_cutmix_labels_are_the_share_of_pixels_each_image_keeps():
    x, y = _identified_batch()
    for seed in range(20):  # boxes cut off at the borders included
        mixed, soft = mix_batch(x, y, CLASSES, mixup_alpha=0.0, cutmix_alpha=1.0, rng=random.Random(seed))
        for i in range(N):
            partner = N - 1 - i
            kept = float((mixed[i] == i).float().mean())
            assert bool(((mixed[i] == i) | (mixed[i] == partner)).all())
            assert soft[i, i] == pytest.approx(kept) and soft[i, partner] == pytest.approx(1 - kept)


def test_with_both_on_each_batch_is_one_or_the_other():
    x, y = _identified_batch()
    rng = random.Random(0)
    kinds = set()
    for _ in range(40):
        mixed, _ = mix_batch(x, y, CLASSES, mixup_alpha=0.4, cutmix_alpha=1.0, rng=rng)
        whole = bool(torch.isin(mixed, x).all())  # cutmix moves pixels; mixup makes new values
        kinds.add("cutmix" if whole else "mixup")
    assert kinds == {"cutmix", "mixup"}


class _Epochs(list):
    def set_epoch(self, epoch):
        pass


def _batches(n_batches, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches, 8, 3, 4, 4, generator=generator)
    return [(x[i], (x[i].mean((1, 2, 3)) > 0).long()) for i in range(n_batches)]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))


class _KilledInEpoch(TrainingHooks):
    def __init__(self, epoch):
        self.epoch = epoch

    def after_step(self, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_a_mixed_run_killed_and_resumed_trains_as_the_uninterrupted_one(tmp_path):
    cfg = FitConfig(epochs=3, batch_size=8, mixup_alpha=0.4, cutmix_alpha=1.0, optim=OptimConfig(lr=0.05))
    plain = FitConfig(epochs=3, batch_size=8, optim=OptimConfig(lr=0.05))
    train, val = _Epochs(_batches(4, 0)), _batches(2, 1)

    def fitted(run, cfg, **kwargs):
        model = _model()
        fit(model, train, val, cfg, RunDir(run), 2, quiet=True, **kwargs)
        return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])

    whole = fitted(tmp_path / "whole", cfg)
    with pytest.raises(KeyboardInterrupt):
        fitted(tmp_path / "killed", cfg, hooks=_KilledInEpoch(1))
    assert torch.equal(fitted(tmp_path / "killed", cfg, resume=True), whole)
    assert not torch.equal(fitted(tmp_path / "unmixed", plain), whole)  # the mixing did take part


def test_mixing_is_refused_for_detectors_and_for_losses_that_need_one_label(tmp_path):
    mixed = FitConfig(epochs=1, cutmix_alpha=1.0)

    class _NotClassification:
        statistics_batches = None

        def objective(self, label_smoothing):
            raise AssertionError("not reached")

    with pytest.raises(UserError, match="for classifiers only"):
        fit(_model(), _Epochs(_batches(1, 0)), [], mixed, RunDir(tmp_path / "det"), _NotClassification())
    assert not (tmp_path / "det").exists()
    for loss in ("aml+ce", "dkd"):
        with pytest.raises(ValidationError, match=f"the {re.escape(loss)} loss needs one"):
            PruneConfig(method="l1", target_macs=0.5, loss=loss, finetune=mixed)
    with pytest.raises(ValidationError, match="the dkd loss needs one"):
        DistillConfig(loss="dkd", fit=mixed)
    assert DistillConfig(loss="kd", fit=mixed).fit.mixes
    with pytest.raises(ValidationError, match="--cache-teacher-logits has nothing to reuse"):
        DistillConfig(loss="kd", cache_teacher_logits=True, fit=mixed)


def test_cli_trains_with_cutmix_and_records_it(tmp_path, capsys):
    data = make_fake_dataset(tmp_path, per_class=4, size=16)
    args = ["train", "--data", str(data), "--model", "resnet18", "--img-size", "16", "--epochs", "1"]
    assert main([*args, "--cutmix-alpha", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "--cutmix-alpha" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*args, "--batch-size", "8", "--cutmix-alpha", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["cutmix_alpha"] == 2


@pytest.mark.parametrize(
    ("flags", "mixing"),
    [
        ([], (0.0, CLASSIFIER_TRAIN_CUTMIX_ALPHA)),
        (["--mixup-alpha", "0.2"], (0.2, 0.0)),
        (["--cutmix-alpha", "0"], (0.0, 0.0)),
    ],
)
def test_a_classifier_trains_with_cutmix_unless_given_a_mixing_of_its_own(tmp_path, flags, mixing):
    data = make_fake_dataset(tmp_path, per_class=4, size=16)
    args = [
        "train",
        "--data",
        str(data),
        "--model",
        "resnet18",
        "--img-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ]
    assert main([*args, *flags, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    train = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (train["mixup_alpha"], train["cutmix_alpha"]) == mixing
