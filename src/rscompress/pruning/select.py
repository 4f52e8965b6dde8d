"""Which channels go: every ``--method`` of ``rscompress prune`` behind one function.

The method (methods.METHODS) prunes the prepared parent to the budget: a one-shot criterion
scores the trained model once (l1, l2, bn, taylor, fpgm, lamp, random, remotetrimmer, hrank);
``slim`` and ``l1rr`` first train it sparse on BN γ and prune by |γ| ranked globally;
``nas`` searches trainable channel gates towards the budget and prunes by gate score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.config import PruneConfig
from rscompress.models.complexity import count_macs_params
from rscompress.pruning.importance import forget_cap_attention
from rscompress.pruning.methods import check_config
from rscompress.pruning.methods.base import Budget, Selection
from rscompress.pruning.parent import budget_reference, rebase_budget

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def select_and_prune(
    model: nn.Module,
    model_name: str,
    img_size: int,
    cfg: PruneConfig,
    *,
    budget: Budget | None = None,
    train_batches,
    val_batches: Batches,
    calibration: list[tuple[torch.Tensor, torch.Tensor]],
    log: Callable[[str], None] = lambda _: None,
    phase_dir: Path | None = None,
    weights_as_trained: nn.Module | None = None,
    device: torch.device = torch.device("cpu"),
    parent_optim: dict[str, Any] | None = None,
    run: RunDir | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Pruned copy of ``model`` within the budget, and what the method did (for metrics.json).

    ``model`` is on the CPU, and so is the result. ``budget``: the budget as a share of
    ``model`` (Budget.on_prepared), ``Budget.of(cfg)`` if not given. ``device``: where sparse training and the NAS
    search run; scoring and pruning are cheap and stay on the CPU.

    ``weights_as_trained``: for a folded SE parent, the same architecture with the weights the
    SE model learned (models.se.strip_se_blocks); the criteria that read weights alone
    (base.Criterion.reads_weights_only) score it.

    ``phase_dir``: where sparse training / the NAS search commit their state every epoch, so
    a killed run continues there instead of starting the phase over.

    ``parent_optim``: the optimizer settings the parent was trained with (its config.json's
    ``train.optim``); sparse training's default lr derives from them
    (sparse_training.sparse_training_lr).

    ``run``: the prune run dir. Sparse training saves the model it leaves there
    (``sparse.safetensors`` + ``sparse.json``), and starts from a model found there instead of
    training: the run's own (killed after the phase) or another budget's (``--sparse-from``),
    if it is the one these settings would train (sparse_training.reuse_differences).
    """
    method = check_config(cfg)
    pruned, details = method.select(
        Selection(
            model=model,
            family=model_name,
            img_size=img_size,
            budget=budget or Budget.of(cfg),
            cfg=cfg,
            train_batches=train_batches,
            val_batches=val_batches,
            calibration=calibration,
            log=log,
            phase_dir=phase_dir,
            weights_as_trained=weights_as_trained,
            device=device,
            parent_optim=parent_optim or {},
            run=run,
        )
    )
    forget_cap_attention(pruned)
    return pruned, details


def prepare_and_prune(
    parent: nn.Module,
    family: str,
    img_size: int,
    cfg: PruneConfig,
    *,
    calibration: list[tuple[torch.Tensor, torch.Tensor]],
    train_batches,
    val_batches: Batches,
    log: Callable[[str], None] = lambda _: None,
    device: torch.device = torch.device("cpu"),
    parent_optim: dict[str, Any] | None = None,
    run: RunDir | None = None,
    on_prepared: Callable[[], None] = lambda: None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The pruning step of ``rscompress prune`` and ``rsc.prune`` alike: ``parent`` prepared
    as ``cfg``'s method prepares it (folded in place), pruned to the budget counted on the
    parent as given, and what the method did, its budget report in shares of that parent.

    ``calibration``: plain (unaugmented) train batches: SE attention, taylor, hrank. The
    rest as in ``select_and_prune``; the phase dir is the run's (``RunDir.phase_dir``).
    ``on_prepared``: called once the parent is prepared (a parent the method cannot take is
    refused before it), before any training phase starts.
    """
    method = check_config(cfg)
    parent_cost = count_macs_params(budget_reference(parent), img_size)
    model, weights_as_trained = method.prepare_parent(parent, calibration)
    on_prepared()
    torch.manual_seed(cfg.finetune.seed)  # the random criterion, sparse training
    pruned, details = select_and_prune(
        model,
        family,
        img_size,
        cfg,
        budget=Budget.of(cfg).on_prepared(parent_cost, count_macs_params(model, img_size)),
        train_batches=train_batches,
        val_batches=val_batches,
        calibration=calibration,
        log=log,
        phase_dir=run.phase_dir if run is not None else None,
        weights_as_trained=weights_as_trained,
        device=device,
        parent_optim=parent_optim,
        run=run,
    )
    return pruned, {**details, "budget": rebase_budget(details["budget"], parent_cost)}
