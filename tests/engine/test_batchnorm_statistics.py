"""``--precise-bn-batches``: BatchNorm statistics recomputed over plain train batches before val
(engine/batchnorm_statistics.py), a detector's default, refused where a fit has no such batches."""

import pytest
import torch
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.config import DETECTION_PRECISE_BN_BATCHES, FitConfig, OptimConfig
from rscompress.engine.batchnorm_statistics import recompute_batchnorm_statistics
from rscompress.engine.detection import Detection
from rscompress.engine.tasks import Classification
from rscompress.engine.trainer import fit
from rscompress.errors import UserError


class _Epochs(list):
    def set_epoch(self, epoch):
        pass


def _batches(n_batches, seed, shift=0.0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches, 8, 4, generator=generator) * 3 + shift
    return [(x[i], (x[i].sum(1) > 0).long()) for i in range(n_batches)]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.0), nn.Linear(6, 2))


def _to_device(x, y):
    return x, y


def test_the_statistics_are_the_batches_average_and_nothing_else_of_the_model_changes():
    model = _model().eval()
    bn = model[1]
    bn.momentum = 0.3
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = _batches(5, 0, shift=2.0)
    recompute_batchnorm_statistics(model, batches, 3, lambda m, x, y: m(x), _to_device)
    with torch.no_grad():
        features = [model[0](x) for x, _ in batches[:3]]  # what the BatchNorm saw: the first 3 batches only
    torch.testing.assert_close(bn.running_mean, torch.stack([f.mean(0) for f in features]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([f.var(0) for f in features]).mean(0))
    assert bn.momentum == 0.3 and not model.training
    after = {k: v for k, v in model.state_dict().items() if k in weights}
    assert all(torch.equal(after[k], weights[k]) for k in weights)


def test_no_batch_is_an_error():
    with pytest.raises(ValueError, match="yielded none"):
        recompute_batchnorm_statistics(_model(), [], 4, lambda m, x, y: m(x), _to_device)


class _WithPlainBatches(Classification):
    """A classifier given plain batches (the fit loop's contract is the task's, not the kind's)."""

    def __init__(self, num_classes, batches):
        super().__init__(num_classes)
        self.statistics_batches = batches


def _fitted(run, precise_bn_batches, statistics):
    model = _model()
    cfg = FitConfig(epochs=1, batch_size=8, precise_bn_batches=precise_bn_batches, optim=OptimConfig(lr=0.1))
    fit(model, _Epochs(_batches(4, 0)), _batches(2, 1), cfg, RunDir(run), _WithPlainBatches(2, statistics), quiet=True)
    return model


def test_before_val_the_fit_recomputes_the_statistics_over_the_plain_batches_it_was_given(tmp_path):
    plain = _batches(3, 2, shift=5.0)  # unlike the training batches: their statistics differ
    model = _fitted(tmp_path / "precise", 2, plain)
    again = _fitted(tmp_path / "again", 2, plain)
    recompute_batchnorm_statistics(again, plain, 2, lambda m, x, y: m(x), _to_device)
    # The kept model's statistics are those of its weights over the first two plain batches ...
    torch.testing.assert_close(model[1].running_mean, again[1].running_mean)
    torch.testing.assert_close(model[1].running_var, again[1].running_var)
    # ... and not the training batches' running averages, while the weights are the same.
    running = _fitted(tmp_path / "running", 0, plain)
    assert torch.equal(running[0].weight, model[0].weight)
    assert not torch.allclose(running[1].running_mean, model[1].running_mean)


def test_a_detector_recomputes_by_default_and_a_fit_without_plain_batches_refuses_it(tmp_path):
    assert Detection(("well",)).default_precise_bn_batches == DETECTION_PRECISE_BN_BATCHES > 0
    assert Classification(2).default_precise_bn_batches == 0
    with pytest.raises(UserError, match="--precise-bn-batches"):
        _fitted(tmp_path / "refused", 2, None)
    assert not (tmp_path / "refused").exists()  # refused before anything is written
    # Left unset, a fit without plain batches keeps the running statistics: the same model as with 0.
    unset, off = _fitted(tmp_path / "unset", None, None), _fitted(tmp_path / "off", 0, None)
    assert all(torch.equal(a, b) for a, b in zip(unset.state_dict().values(), off.state_dict().values(), strict=True))


def test_a_classifier_run_refuses_it_in_one_line_before_writing_anything(tmp_path, capsys):
    from rscompress.cli import main
    from tests.fakes import make_fake_dataset

    data = make_fake_dataset(tmp_path)
    args = ["train", "--data", str(data), "--model", "resnet18", "--img-size", "32", "--epochs", "1"]
    assert main([*args, "--precise-bn-batches", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precise-bn-batches" in err[0] and "classifier" in err[0]
    assert not (tmp_path / "run").exists()
