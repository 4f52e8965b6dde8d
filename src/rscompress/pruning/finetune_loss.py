"""The loss a pruned model is fine-tuned with, as ``PruneConfig.loss`` names it: shared by
``rscompress prune`` (api.prune) and ``rsc.prune`` (python_api.prune)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rscompress.config import PruneConfig
from rscompress.engine.trainer import LossFn, aml_ce_objective


def finetune_objective(
    cfg: PruneConfig, unpruned: Callable[[], nn.Module], device: torch.device
) -> tuple[LossFn | None, nn.Module | None]:
    """(loss_fn, teacher): None for plain CE (the fit loop's own), RemoteTrimmer's AML + CE, or
    KD / DKD from the unpruned parent as trained (SE blocks and all), which ``unpruned()`` gives
    and is only called for those; the teacher is returned frozen for the caller's records."""
    if cfg.loss is None:
        raise ValueError("the fine-tuning loss is not named yet: PruneConfig.with_loss_for names the task's default")
    if cfg.loss == "aml+ce":
        return aml_ce_objective(cfg.r1, cfg.r2), None
    if cfg.loss in ("kd", "dkd"):
        from rscompress.distillation.objective import freeze, teacher_loss_fn

        teacher = freeze(unpruned().to(device), cfg.kd)
        return teacher_loss_fn(teacher, cfg.loss, cfg.kd, cfg.finetune.label_smoothing), teacher
    return None, None
