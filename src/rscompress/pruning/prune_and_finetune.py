"""The prune step itself, shared by ``rscompress prune`` (api.prune, on run dirs) and
``rsc.prune`` (python_api.prune, on the user's module and loaders): the parent pruned once to
its budget (``pruned.safetensors`` + ``prune.json`` in the run dir, so a resumed run never
prunes twice), then fine-tuned by the one fit loop with the loss the config names. What each
caller adds is its own: where data and models come from, config.json and metrics.json.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.config import PruneConfig
from rscompress.engine.metrics import evaluate as evaluate_classifier
from rscompress.engine.tasks import Task
from rscompress.engine.trainer import Batches, FitResult, LossFn, fit
from rscompress.errors import UserError
from rscompress.io_utils import write_json_atomic
from rscompress.models.weights import read_state_dict, save_weights
from rscompress.pruning.finetune_loss import finetune_objective
from rscompress.pruning.methods import check_config
from rscompress.pruning.rebuild import apply_architecture, architecture_spec
from rscompress.pruning.select import prepare_and_prune


@dataclass
class Pruned:
    model: nn.Module  # pruned and fine-tuned: its best epoch on val
    record: dict[str, Any]  # prune.json: the architecture and what the method did
    fit: FitResult[Any]
    teacher: nn.Module | None  # the unpruned parent, when the fine-tuning loss distils from it

    @property
    def details(self) -> dict[str, Any]:
        """What the method did (budget search, sparse training, NAS search), without the shapes."""
        return {k: v for k, v in self.record.items() if k != "architecture"}


def refuse_for_detectors(cfg: PruneConfig) -> None:
    """UserError naming what of ``cfg`` is not built for a detector parent."""
    if cfg.method == "remotetrimmer":
        raise UserError(
            "method remotetrimmer on a detector is not built yet (its Adaptive Mining Loss is a classification "
            "loss); the other methods take detectors"
        )
    if cfg.loss not in (None, "ce"):
        raise UserError(f"loss {cfg.loss} is for classifiers; a detector is fine-tuned with its own loss")


def prune_and_finetune(
    parent: nn.Module,
    family: str,
    img_size: int,
    cfg: PruneConfig,
    run: RunDir,
    *,
    calibration: list[tuple[torch.Tensor, Any]],
    train_batches: Batches,
    val_batches: Iterable,
    task: int | Task,
    unpruned: Callable[[], nn.Module],
    device: torch.device,
    resume: bool,
    quiet: bool,
    log: Callable[[str], None] = lambda _: None,
    parent_optim: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    overrides: list[dict[str, Any]] | None = None,
    on_prepared: Callable[[], None] = lambda: None,
    on_pruned: Callable[[nn.Module], None] = lambda _: None,
) -> Pruned:
    """Prune ``parent`` (prepared in place as ``cfg``'s method prepares it; ``family``: its
    registry name, or its architecture's for a user's module) to ``cfg``'s budget counted at
    ``img_size``, or take the pruned model ``run`` holds already, then fine-tune it in ``run``.

    ``task``: the number of classes of a classifier, or the detection task. ``calibration``:
    plain train batches (SE attention, taylor, hrank). ``unpruned()``: the parent as trained,
    for a KD / DKD fine-tuning loss (called only then); ``loss_fn`` replaces the configured
    loss. ``on_prepared``: before a training phase (sparse training, NAS search) starts;
    ``on_pruned(pruned)``: once pruned, before anything of it is written, for the caller's
    config.json. The model ends on the CPU.
    """
    from rscompress.deploy.latency_probe import latency_meter_for

    method = check_config(cfg)
    if run.holds_pruned_model():  # resumed, or taken from another run (--pruned-from)
        record = _read_record(run)
        pruned = method.prepare_parent(parent, calibration)[0]
        apply_architecture(pruned, record["architecture"])
        pruned.load_state_dict(read_state_dict(run.pruned_weights_path))
    else:
        pruned, details = prepare_and_prune(
            parent,
            family,
            img_size,
            cfg,
            calibration=calibration,
            train_batches=train_batches,
            val_batches=val_batches,
            log=log,
            device=device,
            parent_optim=parent_optim,
            run=run,
            on_prepared=on_prepared,
            latency_meter=latency_meter_for(cfg, img_size, calibration),
            task=None if isinstance(task, int) else task,
        )
        record = {"architecture": architecture_spec(pruned), **_before_finetuning(pruned, val_batches, task), **details}
        run.path.mkdir(parents=True, exist_ok=True)
        on_pruned(pruned)
        save_weights(pruned, run.pruned_weights_path)
        write_json_atomic(run.prune_record_path, record)  # last: its presence marks pruning done
        shutil.rmtree(run.phase_dir, ignore_errors=True)  # its work is in pruned.safetensors now
    pruned.train()
    teacher = None
    if loss_fn is None:
        loss_fn, teacher = finetune_objective(cfg, unpruned, device)
    result = fit(
        pruned,
        train_batches,
        val_batches,
        cfg.finetune,
        run,
        task,
        loss_fn=loss_fn,
        resume=resume,
        quiet=quiet,
        overrides=overrides or [],
    )
    pruned.cpu()
    return Pruned(pruned, record, result, teacher)


def _before_finetuning(pruned: nn.Module, val_batches: Iterable, task: int | Task) -> dict[str, float]:
    """A classifier's val top-1 right after pruning: how much the fine-tuning has to win back."""
    if not isinstance(task, int):
        return {}
    return {"val_top1_before_finetune": evaluate_classifier(pruned, val_batches, task).top1}


def _read_record(run: RunDir) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(run.prune_record_path.read_text())
    if "architecture" not in record:
        raise UserError(
            f"{run.prune_record_path} was written by an older rscompress (it names no architecture): "
            "prune anew in another --out"
        )
    return record
