"""What a pruning method is: the protocol every module under ``pruning/methods/`` implements,
the budget it prunes to, and what it is given to prune one parent.

A method is one module with one ``PruningMethod`` (one row of ``methods.METHODS``). It says

* its ``name`` (what ``--method`` takes) and a one-line ``summary``;
* which ``PruneConfig`` options are its own (``options``): a run of another method that sets
  one of them is refused, naming the option and the methods that read it;
* how it prepares the parent (``prepare_parent``: rscompress's SE blocks are folded for every
  method; RemoteTrimmer also folds other libraries' SE layers);
* how it picks the channels that go (``select``): score a criterion once and prune to the
  budget, or train first (sparse training, a gate search) and then prune;
* whether its training phase can be shared between budgets (``sparse_training``).

Fine-tuning is not a method's business: every method is fine-tuned by the same recipe and
loss (``--loss``), so that methods are compared at the same budget on equal terms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from rscompress.pruning.budget import prune_to_budget
from rscompress.pruning.importance import Importance
from rscompress.pruning.parent import prepare_parent

if TYPE_CHECKING:
    from rscompress.artifacts import RunDir
    from rscompress.config import PruneConfig
    from rscompress.engine.tasks import Task

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Budget:
    """How much of the parent the pruned model keeps: ``value`` of its MACs or params, or
    (``metric == "ratio"``) the share of channels removed per layer, paper-style, or a measured
    batch-1 latency (``latency_ms``, or ``speedup`` over the parent as given). Made once from
    the options (``of``); a method prunes to a counted budget through ``search_args``, and
    select.py turns a measured one into counted ones (pruning/latency_budget.py)."""

    metric: Literal["macs", "params", "ratio", "latency_ms", "speedup"]
    value: float
    round_to: int | Literal["auto"] | None = None

    @classmethod
    def of(cls, cfg: PruneConfig) -> Budget:
        given = (
            ("macs", cfg.target_macs),
            ("params", cfg.target_params),
            ("ratio", cfg.ratio),
            ("latency_ms", cfg.target_latency_ms),
            ("speedup", cfg.target_speedup),
        )
        metric, value = next((m, v) for m, v in given if v is not None)  # PruneConfig checked: exactly one
        return cls(metric, float(value), cfg.round_to)  # type: ignore[arg-type]  # one of the literals

    @property
    def measured(self) -> bool:
        """A latency budget: hit by timing candidates, not by counting them."""
        return self.metric in ("latency_ms", "speedup")

    @property
    def timed(self) -> bool:
        """Candidates are timed: a latency budget, or the channel multiple picked by latency."""
        return self.measured or self.round_to == "auto"

    @property
    def target_macs(self) -> float | None:
        return self.value if self.metric == "macs" else None

    @property
    def target_params(self) -> float | None:
        return self.value if self.metric == "params" else None

    def search_args(self) -> dict[str, Any]:
        """``prune_to_budget``'s budget keywords."""
        if self.timed:
            raise ValueError(f"{self} is timed, not counted (select.py turns it into counted budgets)")
        return {
            "target_macs": self.target_macs,
            "target_params": self.target_params,
            "ratio": self.value if self.metric == "ratio" else None,
            "round_to": self.round_to,
        }

    def on_prepared(self, parent_cost: tuple[int, int], prepared_cost: tuple[int, int]) -> Budget:
        """This budget as a share of the prepared model: folding another library's SE layers
        away removes their MACs and params, and a budget is a share of the model as given.
        ``*_cost``: (MACs, params) of each. Unchanged where preparing removed nothing."""
        if self.metric == "ratio" or self.measured:  # measured against the parent as given
            return self
        i = 0 if self.metric == "macs" else 1
        if prepared_cost[i] == parent_cost[i]:
            return self
        return Budget(self.metric, min(1.0, self.value * parent_cost[i] / prepared_cost[i]), self.round_to)


@dataclass
class Selection:
    """What a method is given to prune one parent."""

    model: nn.Module  # the prepared parent, on the CPU; a method may change it
    family: str  # the architecture's family name (resnet18, vgg16_bn, ...): L1RR's attention layers
    img_size: int
    budget: Budget  # a share of ``model`` (Budget.on_prepared)
    cfg: PruneConfig
    train_batches: Any  # re-iterable (images, labels) batches with len(); set_epoch if it has one
    val_batches: Iterable[Batch]
    calibration: list[Batch]  # a few plain (unaugmented) train batches
    log: Callable[[str], None]
    # Where a training phase commits its state every epoch, so a killed run continues there.
    phase_dir: Path | None
    # For a folded SE parent: the same architecture with the weights as the SE model learned
    # them (models.se.strip_se_blocks); criteria that read weights alone score it.
    weights_as_trained: nn.Module | None
    device: torch.device  # where a training phase runs; scoring and pruning stay on the CPU
    parent_optim: dict[str, Any]  # the parent's own optimizer settings (config.json train.optim)
    run: RunDir | None  # the prune run dir, where a phase's result is kept for reuse
    # What the model does (engine/tasks.py): a training phase trains and validates on its loss
    # and score. None: classification into the model's classifier outputs.
    task: Task | None = None


class PruningMethod:
    """One pruning method. Subclasses set the class attributes and implement ``select``."""

    name: str
    summary: str
    # PruneConfig fields only this method (and others naming them too) reads.
    options: frozenset[str] = frozenset()
    # Fold other libraries' SE layers (torchvision, timm) into the model before pruning.
    folds_foreign_se: bool = False
    # A training phase whose result another budget of the same settings can start from (--sparse-from).
    sparse_training: bool = False

    def check(self, cfg: PruneConfig) -> None:
        """UserError naming what in ``cfg`` this method cannot take (options are checked by
        methods.check_config); nothing by default."""

    def prepare_parent(self, parent: nn.Module, calibration: Iterable[Batch]) -> tuple[nn.Module, nn.Module | None]:
        """``(model to prune, weights_as_trained)``; ``parent`` itself may be folded in place."""
        return prepare_parent(parent, calibration, fold_foreign_se=self.folds_foreign_se)

    def select(self, s: Selection) -> tuple[nn.Module, dict[str, Any]]:
        """A pruned copy of ``s.model`` within ``s.budget`` (on the CPU), and what the method
        did (JSON-ready, for prune.json; ``budget``: the BudgetReport's dict)."""
        raise NotImplementedError


class Criterion(PruningMethod):
    """A one-shot method: score the trained model once with an importance criterion, prune
    each layer by the same ratio (or globally with ``--global``) to the budget."""

    # True where the criterion reads the weights alone: on an SE parent it scores the weights
    # as trained, not the folded γ·s̄, which would turn bn into RemoteTrimmer's CAP.
    reads_weights_only: bool = False

    def importance(self, s: Selection) -> Importance:
        raise NotImplementedError

    def select(self, s: Selection) -> tuple[nn.Module, dict[str, Any]]:
        details: dict[str, Any] = {}
        scorer = None  # the model itself
        if self.reads_weights_only:
            scorer = s.weights_as_trained
            details["scored"] = "weights as trained" if scorer is not None else "model"
        pruned, report = prune_to_budget(
            s.model,
            self.importance(s),
            s.img_size,
            global_pruning=s.cfg.global_pruning,
            calibration=s.calibration,
            calibration_loss=s.task.score_loss if s.task is not None else None,
            scorer=scorer,
            **s.budget.search_args(),
        )
        return pruned, {"budget": report.to_dict(), **details}
