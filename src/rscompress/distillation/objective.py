"""The training loss of a student guided by a frozen teacher: CE, CE + KD or CE + DKD."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rscompress.config import KDSettings
from rscompress.distillation.losses import dkd_loss, kd_loss, warmup_factor
from rscompress.distillation.teacher_cache import CachedTeacher

LossFn = Callable[[nn.Module, Tensor, Tensor, int], tuple[Tensor, Tensor]]


def freeze(teacher: nn.Module, kd: KDSettings) -> nn.Module:
    """Eval mode and no gradients: the teacher's weights and BN statistics never change.
    Wrapped in a logit cache when ``kd.cache_teacher_logits``."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    return (CachedTeacher(teacher) if kd.cache_teacher_logits else teacher).eval()


def teacher_loss_fn(teacher: nn.Module | None, loss: str, kd: KDSettings, label_smoothing: float) -> LossFn:
    """``loss_fn(student, x, y, epoch) -> (loss, student logits)`` for the trainer.

    ``loss``: "ce" (the teacher is not run), "kd" or "dkd". ``teacher`` must be frozen.
    """
    if loss not in ("ce", "kd", "dkd"):
        raise ValueError(f"unknown distillation loss {loss!r}")
    if loss != "ce" and teacher is None:
        raise ValueError(f"--loss {loss} needs a teacher")

    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        logits = model(x)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if loss == "ce":
            return ce, logits
        assert teacher is not None  # checked above: every loss but "ce" has one
        teacher.eval()  # the trainer may have switched every module to train mode
        with torch.no_grad():
            t_logits = teacher(x).float()
        ramp = warmup_factor(epoch, kd.kd_warmup_epochs)
        if loss == "kd":
            return ce + ramp * kd.kd_weight * kd_loss(logits.float(), t_logits, kd.temperature), logits
        return ce + ramp * dkd_loss(logits.float(), t_logits, y, kd.alpha, kd.beta, kd.temperature).total, logits

    return loss_fn
