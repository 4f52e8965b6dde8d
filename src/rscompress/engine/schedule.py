"""Learning-rate schedules as pure functions of training progress.

The rate depends only on (epoch, step) so a resumed run needs no scheduler state and gets
exactly the rates an uninterrupted run would have used.
"""

from __future__ import annotations

import math

import torch

from rscompress.config import OptimConfig


def lr_factor(progress: float, epochs: int, cfg: OptimConfig) -> float:
    """Multiplier of the base rate at ``progress`` epochs done (fractional, 0 <= p < epochs)."""
    if cfg.warmup_epochs and progress < cfg.warmup_epochs:
        return (progress + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    span = max(epochs - cfg.warmup_epochs, 1e-9)
    done = (progress - cfg.warmup_epochs) / span
    return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
