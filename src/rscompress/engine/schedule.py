"""Learning-rate and momentum schedules as pure functions of training progress.

The rate depends only on (epoch, step) so a resumed run needs no scheduler state and gets
exactly the rates an uninterrupted run would have used.
"""

from __future__ import annotations

import math

import torch

from rscompress.config import OptimConfig

# OneCycle's constants, as torch.optim.lr_scheduler.OneCycleLR's defaults: the rate starts at
# lr / 25, peaks at lr after pct_start of the run and ends at lr / 25 / 1e4; cycled momentum
# falls from 0.95 to 0.85 while the rate rises and comes back while it falls.
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_MOMENTUM = (0.85, 0.95)


def _cos_between(start: float, end: float, done: float) -> float:
    """Cosine annealing from ``start`` (done 0) to ``end`` (done 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(done, 0.0), 1.0)))


def _onecycle_phase(progress: float, epochs: int, cfg: OptimConfig) -> tuple[bool, float]:
    """(still rising?, fraction of that phase done) at ``progress`` epochs of ``epochs``."""
    done = progress / epochs
    if done < cfg.pct_start:
        return True, done / cfg.pct_start
    return False, (done - cfg.pct_start) / (1.0 - cfg.pct_start)


def lr_factor(progress: float, epochs: int, cfg: OptimConfig) -> float:
    """Multiplier of the base rate at ``progress`` epochs done (fractional, 0 <= p < epochs)."""
    if cfg.schedule == "onecycle":
        rising, done = _onecycle_phase(progress, epochs, cfg)
        low = 1.0 / ONECYCLE_DIV
        return _cos_between(low, 1.0, done) if rising else _cos_between(1.0, low / ONECYCLE_FINAL_DIV, done)
    if cfg.warmup_epochs and progress < cfg.warmup_epochs:
        return (progress + 1e-3) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    span = max(epochs - cfg.warmup_epochs, 1e-9)
    done = (progress - cfg.warmup_epochs) / span
    return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


def cycled_momentum(progress: float, epochs: int, cfg: OptimConfig) -> float | None:
    """Momentum (AdamW's β1) at ``progress`` under OneCycle with ``cycle_momentum``; else None:
    the optimiser keeps the momentum it was built with."""
    if cfg.schedule != "onecycle" or not cfg.cycle_momentum:
        return None
    rising, done = _onecycle_phase(progress, epochs, cfg)
    low, high = ONECYCLE_MOMENTUM
    return _cos_between(high, low, done) if rising else _cos_between(low, high, done)


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        momentum = cycled_momentum(0.0, 1, cfg)
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum if momentum is None else momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def apply_schedule(optimizer: torch.optim.Optimizer, progress: float, epochs: int, cfg: OptimConfig) -> float:
    """Set every group's rate (and cycled momentum) for ``progress`` epochs done; returns the rate."""
    lr = cfg.lr * lr_factor(progress, epochs, cfg)
    momentum = cycled_momentum(progress, epochs, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if momentum is None:
            continue
        if "betas" in group:
            group["betas"] = (momentum, group["betas"][1])
        else:
            group["momentum"] = momentum
    return lr
