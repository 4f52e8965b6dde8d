"""The student's training loss with a frozen teacher (distill and prune --loss kd|dkd)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rscompress.config import KDSettings
from rscompress.distillation.losses import dkd_loss, kd_loss, warmup_factor
from rscompress.distillation.objective import freeze, teacher_loss_fn


def _models():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Linear(16, 5))
    return student, teacher, torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 4, 0])


def test_ce_is_plain_cross_entropy_and_needs_no_teacher():
    student, _, x, y = _models()
    loss, logits = teacher_loss_fn(None, "ce", KDSettings(), label_smoothing=0.1)(student, x, y, 0)
    assert torch.equal(logits, student(x))
    assert loss.item() == pytest.approx(F.cross_entropy(student(x), y, label_smoothing=0.1).item())


@pytest.mark.parametrize("loss_name", ["kd", "dkd"])
@pytest.mark.parametrize("epoch", [0, 5])
def test_teacher_terms_are_added_with_their_warmup(loss_name, epoch):
    student, teacher, x, y = _models()
    kd = KDSettings(temperature=2.0, alpha=0.5, beta=3.0, kd_weight=0.7, kd_warmup_epochs=2)
    teacher = freeze(teacher, KDSettings())
    loss, logits = teacher_loss_fn(teacher, loss_name, kd, 0.0)(student, x, y, epoch)
    t = teacher(x)
    term = 0.7 * kd_loss(logits, t, 2.0) if loss_name == "kd" else dkd_loss(logits, t, y, 0.5, 3.0, 2.0).total
    expected = F.cross_entropy(logits, y) + warmup_factor(epoch, 2) * term
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert warmup_factor(0, 2) < 1 == warmup_factor(5, 2)  # both branches of the ramp are exercised


def test_teacher_stays_frozen_even_if_switched_to_train_mode():
    student, teacher, x, y = _models()
    teacher = freeze(teacher, KDSettings())
    stats = teacher[2].running_mean.clone()
    loss_fn = teacher_loss_fn(teacher, "dkd", KDSettings(kd_warmup_epochs=0), 0.0)
    teacher.train()  # what a trainer calling model.train() on a parent module would do
    loss, _ = loss_fn(student, x, y, 0)
    loss.backward()
    assert torch.equal(teacher[2].running_mean, stats)
    assert all(p.grad is None for p in teacher.parameters())
    assert student[1].weight.grad is not None


def test_teacher_losses_need_a_teacher():
    with pytest.raises(ValueError, match="needs a teacher"):
        teacher_loss_fn(None, "dkd", KDSettings(), 0.0)
