"""Task losses (pure functions of logits and integer targets).

Adaptive Mining Loss (AML), RemoteTrimmer's fine-tuning loss (METHODS.md §1):
``d_i = (1/K)·Σ_k |p_ik − y_ik|`` (``p`` softmax, ``y`` one-hot, ``K`` classes), which equals
``2·(1 − p_iy)/K``; ``L_AML = mean_i exp(d_i + d_i²)``. Hard samples (low ``p_iy``) weigh more.
RemoteTrimmer fine-tunes with ``L = r1·L_AML + r2·CE``, ``r1 = r2 = 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["aml_ce_loss", "aml_distance", "aml_loss"]


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] or target.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"target must be integer class indices of shape ({logits.shape[0]},), got "
            f"{target.dtype} {tuple(target.shape)}"
        )


def aml_distance(logits: Tensor, target: Tensor) -> Tensor:
    """``d_i = (1/K)·Σ_k |p_ik − y_ik| = 2·(1 − p_iy)/K`` per sample, shape ``(batch,)``.

    ``1 − p_iy`` is computed as ``−expm1(log p_iy)`` from ``log_softmax``, which keeps its
    precision when ``p_iy`` is close to 1.
    """
    _check(logits, target)
    num_classes = logits.shape[1]
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p_target = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return 2.0 * -torch.expm1(log_p_target) / num_classes


def aml_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Adaptive Mining Loss: ``mean_i exp(d_i + d_i²)`` (its minimum, 1, is at ``p_iy = 1``)."""
    d = aml_distance(logits, target)
    return torch.exp(d + d * d).mean()


def aml_ce_loss(logits: Tensor, target: Tensor, r1: float = 1.0, r2: float = 1.0) -> Tensor:
    """RemoteTrimmer's fine-tuning loss ``r1·AML + r2·CE``."""
    return r1 * aml_loss(logits, target) + r2 * F.cross_entropy(logits.float(), target.long())
