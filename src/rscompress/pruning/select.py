"""Which channels go: every ``--method`` of ``rscompress prune`` behind one function.

One-shot criteria (l1, l2, bn, taylor, fpgm, lamp, random, remotetrimmer) score the trained
model and prune it to the budget. ``slim`` (network slimming) and ``l1rr`` first train the
model sparse on BN γ and then prune by |γ| ranked globally, so per-layer ratios come from the
γ distribution. ``nas`` searches trainable channel gates (weights on train, gates on val,
cost-awareness loss towards the MACs target) and prunes by gate score globally.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.config import PruneConfig
from rscompress.errors import UserError
from rscompress.io_utils import write_json_atomic
from rscompress.models.weights import read_state_dict, save_weights
from rscompress.pruning.budget import prune_to_budget
from rscompress.pruning.importance import forget_cap_attention
from rscompress.pruning.method_names import SPARSE_METHODS

# Criteria that rank channels by the weights alone: on an SE parent they read the weights as
# trained (weights_as_trained), not the folded γ·s̄, which would turn bn into CAP. Taylor reads
# gradients of the function the pruned model computes (the folded one); random reads nothing.
WEIGHT_CRITERIA = ("l1", "l2", "bn", "fpgm", "lamp")

# Stages whose attention maps L1RR keeps close to the dense model's (METHODS.md §3).
_ATTENTION_LAYERS = {
    "resnet": ("layer2", "layer3", "layer4"),
    "vgg": ("features.22", "features.32", "features.42"),  # ReLUs ending VGG-16-BN stages 3-5
}

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def attention_layers(model_name: str) -> tuple[str, ...]:
    """The layers of ``model_name``'s family (torchvision/ and timm/ names included)."""
    family = model_name.split("/")[-1]
    for prefix, layers in _ATTENTION_LAYERS.items():
        if family.startswith(prefix):
            return layers
    return ()


def select_and_prune(
    model: nn.Module,
    model_name: str,
    img_size: int,
    cfg: PruneConfig,
    *,
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

    ``model`` is on the CPU, and so is the result. ``device``: where sparse training and the NAS
    search run; scoring and pruning are cheap and stay on the CPU.

    ``weights_as_trained``: for a folded SE parent, the same architecture with the weights the
    SE model learned (models.se.strip_se_blocks); the WEIGHT_CRITERIA score it.

    ``phase_dir``: where sparse training / the NAS search commit their state every epoch, so
    a killed run continues there instead of starting the phase over.

    ``parent_optim``: the optimizer settings the parent was trained with (its config.json's
    ``train.optim``); sparse training's default lr derives from them (``sparse_training_lr``).

    ``run``: the prune run dir. Sparse training saves the model it leaves there
    (``sparse.safetensors`` + ``sparse.json``), and starts from a model found there instead of
    training: the run's own (killed after the phase) or another budget's (``--sparse-from``),
    if it is the one these settings would train (l1rr.reuse_differences).
    """
    budget = {
        "target_macs": cfg.target_macs,
        "target_params": cfg.target_params,
        "ratio": cfg.ratio,
        "round_to": cfg.round_to,
    }
    details: dict[str, Any] = {}
    if cfg.method == "nas":
        return _nas(model, img_size, cfg, train_batches, val_batches, log, phase_dir, device)
    scorer = None  # the model itself
    if cfg.method in SPARSE_METHODS:
        # Ranked by the γ sparse training left, never by the weights before it: that
        # distribution is what sets each layer's ratio.
        lr = sparse_training_lr(cfg.sparse_lr, parent_optim or {})
        model, details["sparse_training"] = _sparse_train(
            model.to(device), model_name, cfg, lr, train_batches, val_batches, log, phase_dir, run
        )
        model.cpu()
        importance, global_pruning = "bn", True
    else:
        importance, global_pruning = cfg.method, cfg.global_pruning
        if importance in WEIGHT_CRITERIA:
            scorer = weights_as_trained
            details["scored"] = "weights as trained" if weights_as_trained is not None else "model"
    pruned, report = prune_to_budget(
        model, importance, img_size, global_pruning=global_pruning, calibration=calibration, scorer=scorer, **budget
    )
    forget_cap_attention(pruned)
    return pruned, {"budget": report.to_dict(), **details}


def sparse_training_lr(given: float | None, parent_optim: dict[str, Any]) -> float:
    """Sparse training's constant lr: ``given``, else a tenth of the parent's SGD lr.

    Sparse training fine-tunes a trained net, and how far a constant rate throws it depends on
    the rate the net was trained at. A fixed 0.01 is a tenth of se_resnet18's 0.1 but all of
    vgg16_bn's 0.01: there it took val top-1 from 92 % to 55 % in the first epoch, and L1RR's
    controller, reading the lost val loss as the penalty's doing, backed λ off to its floor.
    (At a tenth the parent holds; that λ then moves its γ, all near 0.97, is what the rate
    of SparsityConfig.rate sees to, as λ follows from lr, epoch length and γ scale.) A parent
    not trained with SGD (AdamW's rates mean something else) gets SparsityConfig's 0.01, a
    tenth of the usual SGD rate.
    """
    from rscompress.pruning.methods.l1rr import SparsityConfig

    if given is not None:
        return given
    if parent_optim.get("optimizer", "sgd") == "sgd" and parent_optim.get("lr"):
        return parent_optim["lr"] / 10
    return SparsityConfig.lr


def sparse_target(target_macs: float | None) -> float:
    """The share of channels sparse training drives below eps: about the share the budget
    removes (MACs ~ kept channels²), 0.5 for a budget not in MACs."""
    target = 1 - math.sqrt(target_macs) if target_macs else 0.5
    return min(max(target, 0.05), 0.9)


def _sparse_train(
    model, model_name, cfg: PruneConfig, lr: float, train_batches, val_batches, log, phase_dir, run: RunDir | None
):
    from rscompress.pruning.methods.l1rr import SparsityConfig, reuse_differences, sparse_train

    l1rr = cfg.method == "l1rr"
    layers = attention_layers(model_name) if l1rr else ()
    sparse_cfg = SparsityConfig(
        epochs=cfg.sparse_epochs,
        lr=lr,
        rate=SparsityConfig.rate if cfg.sparse_rate is None else cfg.sparse_rate,
        reweight=l1rr,
        couple_groups=l1rr,
        dynamic=l1rr,
        self_adaptive=l1rr,
        attention_weight=cfg.attention_weight if layers else 0.0,
        attention_layers=layers,
        target_sparsity=sparse_target(cfg.target_macs),
        seed=cfg.finetune.seed,
        bf16=cfg.finetune.bf16,
        channels_last=cfg.finetune.channels_last,
    )

    def progress(epoch, sparsity, rate, val_loss):
        log(
            f"sparse epoch {epoch + 1}/{cfg.sparse_epochs}: sparsity {sparsity:.3f}  rate {rate:.3g}  "
            f"val loss {val_loss:.4f}"
        )

    if run is not None and run.holds_sparse_model():
        report = json.loads(run.sparse_record_path.read_text())
        if differences := reuse_differences(report, sparse_cfg):
            raise UserError(
                f"{run.sparse_record_path} is sparse training with other settings "
                f"({'; '.join(differences[:3])}); remove it to train again"
            )
        model.load_state_dict(read_state_dict(run.sparse_weights_path))
        log(
            f"sparse training: the model in {run.sparse_weights_path}"
            + (f" (taken from {report['taken_from']})" if "taken_from" in report else "")
        )
        return model, report
    model, report = sparse_train(
        model, train_batches, val_batches, cfg=sparse_cfg, progress=progress, checkpoint_dir=phase_dir
    )
    if run is not None:
        save_weights(model, run.sparse_weights_path)
        write_json_atomic(run.sparse_record_path, report.to_dict())  # last: marks the phase done
    return model, report.to_dict()


def _nas(model, img_size: int, cfg: PruneConfig, train_batches, val_batches, log, phase_dir, device):
    from rscompress.pruning.methods.nas import nas_search

    if cfg.target_macs is None and cfg.target_params is None:
        raise UserError("--method nas searches towards a budget: give --target-macs or --target-params, not --ratio")
    metric = "MACs" if cfg.target_macs is not None else "params"

    def progress(epoch, expected, target, ce):
        log(
            f"search epoch {epoch + 1}/{cfg.search_epochs}: expected {metric} {expected:.3f} "
            f"(target {target:.3f})  val CE {ce:.4f}"
        )

    pruned, report = nas_search(
        model,
        train_batches,
        val_batches,
        img_size=img_size,
        target_macs=cfg.target_macs,
        target_params=cfg.target_params,
        search_epochs=cfg.search_epochs,
        progress=progress,
        seed=cfg.finetune.seed,
        checkpoint_dir=phase_dir,
        bf16=cfg.finetune.bf16,
        channels_last=cfg.finetune.channels_last,
        device=device,
        gate_without_bn=cfg.gate_without_bn,
    )
    details = report.to_dict()
    return pruned, {"budget": details.pop("budget"), "nas_search": details}
