"""Distillation losses as pure functions of logits (and targets); no state, no modules.

Conventions (METHODS.md §4):

* ``p = softmax(z / T)``; every KL is ``KL(teacher ‖ student)``.
* The teacher logits are detached inside every function: gradients reach the student only,
  whatever the caller passes.
* Computed in float32 from ``log_softmax``/``logsumexp`` (safe under autocast, no ``log(0)``).
* ``*_per_sample`` functions return one value per sample, before the ``T²`` factor and the
  batch mean; the batch losses are their mean times ``T²`` (KL "batchmean").

Classic KD (Hinton et al. 2015): ``kd_loss = T² · mean_i KL(p_T,i ‖ p_S,i)``.

DKD (Zhao et al., CVPR 2022), with ``t`` the target class:
``b = [p_t, 1 − p_t]``, ``TCKD = KL(b_T ‖ b_S)``;
``p̂`` = softmax over the non-target classes (``p̂_k = p_k / (1 − p_t)``),
``NCKD = KL(p̂_T ‖ p̂_S)``; ``total = α·T²·TCKD + β·T²·NCKD``. Per sample,
``KL(p_T ‖ p_S) = TCKD + (1 − p_t^T)·NCKD`` exactly (tests/distill/test_losses.py checks
it). NCKD here excludes the target class exactly (``logsumexp`` over the other classes, the
target term set to 0) rather than with mdistiller's ``logits − 1000·mask``; the two agree to
float precision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DKDTerms",
    "ce_loss",
    "dkd_loss",
    "dkd_per_sample",
    "kd_loss",
    "kd_per_sample",
    "warmup_factor",
]


class DKDTerms(NamedTuple):
    """DKD loss parts. ``tckd``/``nckd``: batch means of the KLs, without ``T²`` or weights;
    ``total = α·T²·tckd + β·T²·nckd`` (the term to add to the CE loss)."""

    tckd: Tensor
    nckd: Tensor
    total: Tensor


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> None:
    if student_logits.dim() != 2:
        shape = tuple(student_logits.shape)
        raise ValueError(f"logits must be (batch, classes), got shape {shape}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_target(logits: Tensor, target: Tensor) -> None:
    if target.shape != logits.shape[:1] or target.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"target must be integer class indices of shape ({logits.shape[0]},), got "
            f"{target.dtype} {tuple(target.shape)}"
        )


def _scaled(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """``(z_S / T, z_T / T)`` in float32, teacher detached."""
    return student_logits.float() / temperature, teacher_logits.detach().float() / temperature


def ce_loss(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with integer targets, mean over the batch."""
    _check_target(logits, target)
    return F.cross_entropy(logits.float(), target.long(), label_smoothing=label_smoothing)


def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``KL(p_T ‖ p_S)`` per sample at temperature ``T`` (no ``T²``), shape ``(batch,)``."""
    _check_pair(student_logits, teacher_logits, temperature)
    s, t = _scaled(student_logits, teacher_logits, temperature)
    log_ps = F.log_softmax(s, dim=1)
    log_pt = F.log_softmax(t, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``T² · mean_i KL(p_T,i ‖ p_S,i)``."""
    return kd_per_sample(student_logits, teacher_logits, temperature).mean() * temperature**2


def _binary_and_nontarget_logprobs(z: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """From scaled logits ``z`` and the one-hot bool mask ``gt``:
    ``log b`` (batch, 2) = ``[log p_t, log(1 − p_t)]`` and ``log p̂`` (batch, K) over the
    non-target classes, with 0 (a placeholder, never used) at the target position."""
    lse_all = torch.logsumexp(z, dim=1)
    lse_other = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1)
    z_target = (z * gt).sum(dim=1)
    log_b = torch.stack((z_target - lse_all, lse_other - lse_all), dim=1)
    log_hat = torch.where(gt, torch.zeros_like(z), z - lse_other.unsqueeze(1))
    return log_b, log_hat


def dkd_per_sample(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """``(TCKD, NCKD)`` per sample at temperature ``T`` (no ``T²``), each of shape ``(batch,)``.

    ``KL(p_T ‖ p_S) == TCKD + (1 − p_t^T) · NCKD`` holds for every sample.
    """
    _check_pair(student_logits, teacher_logits, temperature)
    _check_target(student_logits, target)
    if student_logits.shape[1] < 2:
        raise ValueError("DKD needs at least 2 classes")
    s, t = _scaled(student_logits, teacher_logits, temperature)
    gt = F.one_hot(target.long(), num_classes=s.shape[1]).bool()
    log_b_s, log_hat_s = _binary_and_nontarget_logprobs(s, gt)
    log_b_t, log_hat_t = _binary_and_nontarget_logprobs(t, gt)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(dim=1)
    hat_t = torch.where(gt, torch.zeros_like(t), log_hat_t.exp())
    nckd = (hat_t * (log_hat_t - log_hat_s)).sum(dim=1)
    return tckd, nckd


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> DKDTerms:
    """Decoupled KD: ``total = α·T²·mean(TCKD) + β·T²·mean(NCKD)`` (add CE separately)."""
    tckd, nckd = dkd_per_sample(student_logits, teacher_logits, target, temperature)
    tckd, nckd = tckd.mean(), nckd.mean()
    t2 = temperature**2
    return DKDTerms(tckd=tckd, nckd=nckd, total=alpha * t2 * tckd + beta * t2 * nckd)


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up of the KD terms: ``min(1, (epoch + 1) / warmup_epochs)``; ``epoch`` is
    0-based, so epoch 0 already gets ``1 / warmup_epochs``. ``warmup_epochs <= 0``: 1."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + 1) / warmup_epochs)
