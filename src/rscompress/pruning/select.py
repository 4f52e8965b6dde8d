"""Which channels go: every ``--method`` of ``rscompress prune`` behind one function.

The method (methods.METHODS) prunes the prepared parent to the budget: a one-shot criterion
scores the trained model once (l1, l2, bn, taylor, fpgm, lamp, random, remotetrimmer, hrank);
``slim`` and ``l1rr`` first train it sparse on BN γ and prune by |γ| ranked globally;
``nas`` searches trainable channel gates towards the budget and prunes by gate score.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.config import PruneConfig
from rscompress.engine.tasks import Task
from rscompress.engine.trainer import TrainingDiverged
from rscompress.errors import UserError
from rscompress.models.complexity import count_macs_params
from rscompress.pruning.importance import forget_cap_attention
from rscompress.pruning.latency_budget import AUTO_MULTIPLES, MIN_SHARE, LatencyMeter, search_latency
from rscompress.pruning.methods import check_config
from rscompress.pruning.methods.base import Budget, PruningMethod, Selection
from rscompress.pruning.parent import budget_reference, rebase_budget

Batches = Iterable[tuple[torch.Tensor, Any]]  # targets as the task has them (labels, box dicts)


def select_and_prune(
    model: nn.Module,
    model_name: str,
    img_size: int,
    cfg: PruneConfig,
    *,
    budget: Budget | None = None,
    train_batches,
    val_batches: Batches,
    calibration: list[tuple[torch.Tensor, Any]],
    log: Callable[[str], None] = lambda _: None,
    phase_dir: Path | None = None,
    weights_as_trained: nn.Module | None = None,
    device: torch.device = torch.device("cpu"),
    parent_optim: dict[str, Any] | None = None,
    run: RunDir | None = None,
    latency_meter: LatencyMeter | None = None,
    task: Task | None = None,
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

    ``latency_meter``: for a latency budget, what times candidates against the parent.
    ``task``: what the model does, for a training phase (Selection.task); None: classification.
    """
    method = check_config(cfg)
    selection = Selection(
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
        task=task,
    )
    if selection.budget.timed:
        if latency_meter is None:
            raise ValueError(f"{selection.budget} is timed: it needs a latency_meter")
        pruned, details = _select_timed(method, selection, latency_meter)
    else:
        pruned, details = method.select(selection)
    forget_cap_attention(pruned)
    return pruned, details


def _select_timed(method: PruningMethod, s: Selection, meter: LatencyMeter) -> tuple[nn.Module, dict[str, Any]]:
    """The method's pruning to a timed budget: the channel multiple whose plan runs fastest
    (``--round-to auto``), then, for a latency budget, the MACs share whose model runs at it."""
    budget, found = s.budget, {}
    target = _latency_target(budget, meter) if budget.measured else None
    if budget.round_to == "auto":
        # A latency budget's multiple is picked at its proportional guess of the MACs share.
        at = Budget("macs", max(target[0], MIN_SHARE)) if target is not None else budget
        multiple, chosen, found["round_to_auto"] = _fastest_multiple(method, s, at, meter)
        budget = replace(budget, round_to=multiple)
        if target is None:
            return chosen[0], {**chosen[1], **found}
    assert target is not None  # a timed budget that is not "auto" is measured
    target_ratio, described, recorded = target
    details_of: dict[int, dict[str, Any]] = {}

    def prune_at(share: float) -> nn.Module:
        pruned, details = method.select(replace(s, budget=Budget("macs", share, budget.round_to)))
        details_of[id(pruned)] = details
        s.log(f"latency budget: {share:.1%} of the MACs")
        return pruned

    pruned, report = search_latency(prune_at, meter, target_ratio, describe_target=described)
    s.log(f"latency budget: {report.ratio:.1%} of the parent's latency (target {target_ratio:.1%})")
    latency = {**recorded, **report.to_dict(), "threads": meter.threads, "precision": meter.precision}
    return pruned, {**details_of[id(pruned)], **found, "latency_budget": latency}


def _latency_target(budget: Budget, meter: LatencyMeter) -> tuple[float, str, dict[str, float]]:
    """(latency share of the parent aimed at, the flag that asked for it, what to record)."""
    if budget.metric == "speedup":
        return 1 / budget.value, f"--target-speedup {budget.value:g}", {"target_speedup": budget.value}
    parent_ms = meter.parent_ms()  # an absolute target is a share of the parent's latency now
    described = f"--target-latency-ms {budget.value:g} (the parent runs at {parent_ms:.3g} ms)"
    return budget.value / parent_ms, described, {"target_latency_ms": budget.value, "parent_ms_at_start": parent_ms}


def _fastest_multiple(
    method: PruningMethod, s: Selection, at: Budget, meter: LatencyMeter
) -> tuple[int | None, tuple[nn.Module, dict[str, Any]], dict[str, Any]]:
    """Of the channel multiples in AUTO_MULTIPLES whose plans land on the counted budget
    ``at``, the one whose pruned model ``meter`` times fastest: (multiple, its pruning, the
    record of every candidate)."""
    rows: list[dict[str, Any]] = []
    best: tuple[float, int | None, tuple[nn.Module, dict[str, Any]]] | None = None
    for multiple in AUTO_MULTIPLES:
        round_to = None if multiple == 1 else multiple
        try:
            pruned, details = method.select(replace(s, budget=replace(at, round_to=round_to)))
        except UserError as err:  # its steps in layer width cannot land on the budget
            rows.append({"round_to": multiple, "skipped": str(err)})
            continue
        m = meter(pruned)
        rows.append({"round_to": multiple, "ratio": m.ratio, "spread": m.spread, "ms": m.candidate_ms})
        s.log(f"--round-to auto: {multiple} runs at {m.ratio:.1%} of the parent's latency")
        if best is None or m.ratio < best[0]:
            best = (m.ratio, round_to, (pruned, details))
    if best is None:
        raise UserError(f"--round-to auto: no channel multiple lands on the budget ({rows[0]['skipped']})")
    return best[1], best[2], {"candidates": rows, "chosen": best[1] or 1}


def prepare_and_prune(
    parent: nn.Module,
    family: str,
    img_size: int,
    cfg: PruneConfig,
    *,
    calibration: list[tuple[torch.Tensor, Any]],
    train_batches,
    val_batches: Batches,
    log: Callable[[str], None] = lambda _: None,
    device: torch.device = torch.device("cpu"),
    parent_optim: dict[str, Any] | None = None,
    run: RunDir | None = None,
    on_prepared: Callable[[], None] = lambda: None,
    latency_meter: Callable[[nn.Module], LatencyMeter] | None = None,
    task: Task | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The pruning step of ``rscompress prune`` and ``rsc.prune`` alike: ``parent`` prepared
    as ``cfg``'s method prepares it (folded in place), pruned to the budget counted on the
    parent as given, and what the method did, its budget report in shares of that parent.

    ``calibration``: plain (unaugmented) train batches: SE attention, taylor, hrank. The
    rest as in ``select_and_prune``; the phase dir is the run's (``RunDir.phase_dir``).
    ``on_prepared``: called once the parent is prepared (a parent the method cannot take is
    refused before it), before any training phase starts. ``latency_meter(parent as given)``:
    what times candidates against it, for a latency budget.
    """
    method = check_config(cfg)
    parent_cost = count_macs_params(budget_reference(parent), img_size)
    # A latency budget is a share of the parent as given (SE blocks and all), as deployed.
    meter = latency_meter(copy.deepcopy(parent)) if latency_meter is not None and Budget.of(cfg).timed else None
    model, weights_as_trained = method.prepare_parent(parent, calibration)
    on_prepared()
    torch.manual_seed(cfg.finetune.seed)  # the random criterion, sparse training
    try:
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
            latency_meter=meter,
            task=task,
        )
    except TrainingDiverged as err:
        # A sparse training's or search's rates shape what gets pruned, so a resume keeps them
        # (no --override here): the way out is a new run.
        lower = " with a lower --sparse-lr" if "sparse_lr" in method.options else ""
        raise TrainingDiverged(
            err.cause, f"The {cfg.method} phase cannot go on at another rate: start it anew in another --out{lower}."
        ) from None
    return pruned, {**details, "budget": rebase_budget(details["budget"], parent_cost)}
