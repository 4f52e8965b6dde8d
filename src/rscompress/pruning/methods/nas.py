"""NAS-based channel pruning (Wei et al., IEEE GRSL 2022; METHODS.md §2).

Every prunable channel gets a trainable score α; its gate sigmoid(α/τ) multiplies the
channel after its BatchNorm (nas_gates.py: one α vector per Torch-Pruning dependency group,
so residual streams share gates). The search is first-order DARTS, alternating

* a weight step on a train batch: cross-entropy, SGD with momentum on the model's weights
  (α fixed), model in train mode;
* a score step on the same train batch: CE + λ·|E[MACs]/F_full / r* − 1|, Adam on α
  (weights fixed), model in eval mode, so dropout does not blur the signal.

METHODS.md takes the score steps on the val split, as DARTS does on its held-out half. Here
the val split is the selection split (DESIGN.md): α steps on it fitted thousands of gate
values, folded into the model, to its few hundred images (UC Merced: 2,880 gates, 210 images;
a 35 % search then scored 90.5 on val and 81.4 on test), and left val no clean judge of the
fine-tuning's best epoch or of any setting. The validation images only validate each epoch.

E[MACs] is differentiable in the gates (nas_cost.py); with a params budget
(``target_params``) E[params] takes its place everywhere, the final threshold included. The
cost term is METHODS.md's |E[MACs]/F_full − r*| divided by r* (``cost_awareness_loss``:
why there). λ rises linearly from 0 over the first ``warmup_epochs`` epochs, so
cross-entropy alone ranks the channels before the cost term starts pushing gates down.

After the search each gate value is folded into the layer it follows (a BN's γ and β, or the
output rows of a conv/linear with no BN after it), the gates come off (hooks removed: the
model is a plain model again, computing what the gated one did) and the channels are ranked
globally by α. ``prune_to_budget`` with an importance that returns
the α's then finds the global threshold whose pruned model keeps ``target_macs`` of the
parent's MACs (or ``target_params`` of its params) within ±1 %, counted with
``count_macs_params`` on the real pruned model. The weights pruned are the ones trained
during the search. Fine-tuning is the caller's step.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from rscompress.artifacts import RunDir, setting_differences
from rscompress.config import FitConfig, OptimConfig
from rscompress.engine.device import model_device
from rscompress.engine.precision import bf16_autocast
from rscompress.engine.tasks import Classification, Evaluation, Task
from rscompress.engine.trainer import Batches, EpochBatches, LossFn, TrainingHooks, fit
from rscompress.errors import UserError
from rscompress.pruning.budget import prune_to_budget
from rscompress.pruning.graph import Metric
from rscompress.pruning.methods.base import PruningMethod, Selection
from rscompress.pruning.methods.nas_cost import ExpectedCost, cost_awareness_loss
from rscompress.pruning.methods.nas_gates import ChannelGates, gate_layout
from rscompress.pruning.pruner import find_classifier

if TYPE_CHECKING:
    from rscompress.config import PruneConfig

WEIGHT_MOMENTUM = 0.9
DEFAULT_TARGET_MACS = 0.35
_NAMES = {"macs": "MACs", "params": "params"}
Progress = Callable[[int, float, float, float], None]  # (epoch, expected ratio, target, score-step CE)


@dataclass(frozen=True)
class NASReport:
    """What the search and the derivation did; ``to_dict`` goes into metrics.json as is."""

    target_macs: float | None  # the budget: one of these two is set
    target_params: float | None
    initial_expected_ratio: float  # E[cost]/E[cost at g = 1] with the gates at their start (≈ 0.9)
    expected_ratio: list[float]  # after each epoch, of the budget's metric
    final_expected_ratio: float
    train_ce: list[float]  # mean cross-entropy of the weight steps, per epoch
    score_ce: list[float]  # mean cross-entropy of the score steps, per epoch
    gated_groups: int
    gated_channels: int  # α's searched (positions; a grouped conv's parts share one)
    macs_kept: float  # real, of the derived model (count_macs_params)
    params_kept: float
    search_seconds: float
    budget: dict  # budget.BudgetReport.to_dict() of the derivation
    gates_folded: bool  # the searched gate values went into the kept layers (else dropped)
    gated_without_bn: bool  # groups with no BN were searched (and pruned) too

    def to_dict(self) -> dict:
        return asdict(self)


class AlphaImportance(tp.importance.Importance):
    """Scores a group of the searched model by its α (one per position, see nas_gates).

    Groups without α (never gated: see nas_gates) return ``None`` and are not pruned. A
    group whose root is not a layer of the searched model means a different model is
    being scored, a bug, so it raises.
    """

    def __init__(self, model: nn.Module, alphas: dict[str, Tensor]) -> None:
        self._names = {m: n for n, m in model.named_modules()}
        self._alphas = alphas

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> Tensor | None:
        root = group[0].dep.target.module
        if root not in self._names:
            raise RuntimeError(f"{type(root).__name__} is not a layer of the searched model")
        alpha = self._alphas.get(self._names[root])
        if alpha is None:
            return None
        # channel c is position c mod n (graph.GroupScore); score_groups averages the copies back
        return alpha[torch.arange(len(group[0].idxs)) % alpha.numel()]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _budget(target_macs: float | None, target_params: float | None) -> tuple[Metric, float]:
    """(metric, target) of the budget: at most one given, 35 % of the MACs when neither is."""
    if target_macs is not None and target_params is not None:
        raise UserError("give the NAS search one budget: target_macs or target_params, not both")
    metric: Metric = "params" if target_params is not None else "macs"
    target = target_params if target_params is not None else target_macs
    if target is None:
        return "macs", DEFAULT_TARGET_MACS
    if not (_is_number(target) and 0 < target <= 1):
        raise UserError(
            f"target_{metric} must be a fraction of the parent's {_NAMES[metric]} to keep, 0 < F <= 1; got {target!r}"
        )
    return metric, float(target)


def _check(integers: dict[str, tuple[int, int]], positive: dict[str, float], lam: float) -> None:
    """UserError naming the first bad setting. ``integers``: name → (value, least allowed)."""
    for name, (value, least) in integers.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"{name} must be an integer >= {least}, got {value!r}")
    for name, number in positive.items():
        if not (_is_number(number) and number > 0):
            raise UserError(f"{name} must be a finite number > 0, got {number!r}")
    if not (_is_number(lam) and lam >= 0):
        raise UserError(f"lam must be a finite number >= 0, got {lam!r}")


def lambda_at(epoch: int, lam: float, warmup_epochs: int) -> float:
    """λ for ``epoch``: 0 at epoch 0, rising linearly to ``lam`` at ``warmup_epochs``."""
    return lam if warmup_epochs == 0 else lam * min(1.0, epoch / warmup_epochs)


class _GateSearch(TrainingHooks):
    """The score steps of the search as hooks of the fit loop, whose own steps are the weight
    steps: after each weight step on a train batch, one Adam step on α on the same batch
    (model in eval mode, weights fixed) against CE + λ·cost-awareness."""

    keep = "last"  # the search's result is where the gates end, not a best epoch

    def __init__(
        self,
        model: nn.Module,
        gates: ChannelGates,
        cost: ExpectedCost,
        *,
        target: float,
        lam: float,
        warmup_epochs: int,
        arch_lr: float,
        settings: dict[str, Any],
        progress: Progress | None,
        bf16: bool,
        channels_last: bool,
        task: Task,
    ) -> None:
        self.model, self.gates, self.cost = model, gates, cost
        self.task = task
        self.target, self.lam, self.warmup_epochs, self.settings = target, lam, warmup_epochs, settings
        self.progress, self.bf16 = progress, bf16
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.arch_opt = torch.optim.Adam([gates.alpha], lr=arch_lr)
        self.ratios: list[float] = []
        self.train_ce: list[float] = []
        self.score_ce: list[float] = []

    def loss(self) -> LossFn:
        """The weight step's task loss (CE for a classifier), summed for the epoch's mean."""
        task_loss = self.task.objective(0.0)

        def loss_fn(model: nn.Module, x: Tensor, y: Any, epoch: int) -> tuple[Tensor, Any]:
            self.batch = (x, y)  # the score step's, once the weights have stepped on it
            loss, outputs = task_loss(model, x, y, epoch)
            self.sums[0] += loss.item()
            return loss, outputs

        return loss_fn

    def start_epoch(self, epoch: int) -> None:
        self.lam_now = lambda_at(epoch, self.lam, self.warmup_epochs)
        self.sums, self.steps = [0.0, 0.0], 0

    def after_step(self, epoch: int) -> None:
        x, y = self.batch
        device = self.gates.alpha.device
        with bf16_autocast(self.model, self.bf16):
            ce = self.task.score_loss(
                self.model, x.to(device, memory_format=self.memory_format), self.task.to_device(y, device)
            ).float()
        arch_loss = ce + self.lam_now * cost_awareness_loss(self.cost.ratio(self.gates.flat()), self.target)
        self.arch_opt.zero_grad(set_to_none=True)
        arch_loss.backward(inputs=[self.gates.alpha])  # weights get no gradient
        self.arch_opt.step()
        self.sums[1] += ce.item()
        self.steps += 1

    def end_epoch(self, epoch: int, val: Evaluation) -> dict[str, Any]:
        if not math.isfinite(self.sums[1]):
            raise UserError(
                f"the NAS search diverged in epoch {epoch} (non-finite score-step loss); "
                f"try a smaller arch_lr (now {self.arch_opt.param_groups[0]['lr']})"
            )
        with torch.no_grad():
            self.ratios.append(float(self.cost.ratio(self.gates.flat())))
        self.train_ce.append(self.sums[0] / self.steps)
        self.score_ce.append(self.sums[1] / self.steps)
        if self.progress is not None:
            self.progress(epoch, self.ratios[-1], self.target, self.score_ce[-1])
        return {"expected_ratio": self.ratios[-1], "score_step_ce": self.score_ce[-1]}

    def state(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "expected_ratio": self.ratios,
            "train_ce": self.train_ce,
            "score_ce": self.score_ce,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if differences := setting_differences(state["settings"], self.settings, "nas_search"):
            raise UserError(
                f"the NAS search kept there ran with other settings ({'; '.join(differences)}); "
                "resume with the same options or remove it"
            )
        self.ratios, self.train_ce, self.score_ce = state["expected_ratio"], state["train_ce"], state["score_ce"]

    def tensors(self) -> dict[str, Tensor]:
        return {"gates.alpha": self.gates.alpha}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"arch": self.arch_opt}


def _search(
    model: nn.Module,
    gates: ChannelGates,
    search: _GateSearch,
    train_batches: Batches,
    val_batches: Iterable[tuple[Tensor, Tensor]],
    example: Tensor,
    *,
    epochs: int,
    weight_lr: float,
    seed: int,
    checkpoint_dir: Path | None,
    bf16: bool,
    channels_last: bool,
) -> None:
    """The search loop on a gated model: the fit loop's weight steps (SGD with momentum,
    constant ``weight_lr``, no weight decay) with ``search``'s score steps after each, and a
    validation of the gated model after each epoch (its history row). Each epoch is seeded on
    its own, so one resumed from ``checkpoint_dir`` (a phase run dir, committed after every
    epoch) runs exactly as it would have. ``bf16`` autocasts the two forward passes only: the
    expected cost stays float32."""
    param = next(model.parameters())
    cfg = FitConfig(
        epochs=epochs,
        seed=seed,
        label_smoothing=0.0,
        bf16=bf16,
        channels_last=channels_last,
        device=str(param.device),
        optim=OptimConfig(
            lr=weight_lr, momentum=WEIGHT_MOMENTUM, nesterov=False, weight_decay=0.0, schedule="constant"
        ),
    )
    with ExitStack() as stack:
        phase_dir = checkpoint_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nas-")))
        fit(
            model,
            EpochBatches(train_batches),
            val_batches,
            cfg,
            RunDir(phase_dir),
            search.task,
            loss_fn=search.loss(),
            resume=True,
            quiet=True,
            hooks=search,
        )


def nas_search(
    model: nn.Module,
    train_batches: Batches,
    val_batches: Iterable[tuple[Tensor, Tensor]],
    *,
    img_size: int = 64,
    target_macs: float | None = None,
    target_params: float | None = None,
    search_epochs: int = 20,
    weight_lr: float = 0.01,
    arch_lr: float = 0.05,
    tau: float = 1.0,
    lam: float = 2.0,
    warmup_epochs: int = 2,
    progress: Progress | None = None,
    seed: int = 0,
    checkpoint_dir: Path | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    device: torch.device | None = None,
    fold_gates: bool = True,
    gate_without_bn: bool = False,
    task: Task | None = None,
) -> tuple[nn.Module, NASReport]:
    """Search channel scores on a copy of ``model``, then prune it to its budget.

    The budget: ``target_macs`` or ``target_params``, the fraction of the parent's MACs or
    params to keep (at most one; 35 % of the MACs when neither is given). A params budget
    steers E[params] in the search and thresholds on real params (VGG's weights sit in its
    classifier, so a MACs budget alone leaves most of them).

    ``model``: the trained parent (SE folded, if any); it is not changed. ``train_batches``
    feed the weight steps and the score steps (``set_epoch`` is called each epoch);
    ``val_batches`` only validate the gated model after each epoch (the module docstring says
    why no score step sees them). Returns the pruned model (a plain model: no gates, no hooks;
    its train/eval flags are the parent's) and the report.

    Defaults: ``weight_lr`` 0.01 with momentum 0.9 is a fine-tuning rate for a trained
    parent, not a training-from-scratch one. ``arch_lr`` 0.05 with Adam moves each α by at
    most about 0.05 per step, so with ``tau`` 1 (α starts at 3τ, nas_gates.INIT_LOGIT) a
    gate needs ≥ 60 steps to cross 0.5: a few epochs of a small RS train split, slow enough
    for CE to keep re-ranking the channels on the way. ``lam`` 2: the cost term is λ times the
    miss relative to the target, which is about 1 at a 35 % target's start (on the scale of
    a trained parent's CE) and grows with harder targets, which need the harder push: with
    the absolute miss a UC Merced se_resnet18 search (23 steps an epoch, 20 epochs) stalled
    at an expected ratio of 0.23 for both a 0.10 and a 0.05 target. ``warmup_epochs`` 2:
    λ = 0 in the first epoch, λ/2 in the second, so CE alone ranks the channels before the
    cost pushes.
    ``progress(epoch, expected ratio, target, mean score-step CE)`` is called after each epoch.
    ``seed`` seeds the search's own randomness (dropout); the caller's CPU RNG state is
    restored afterwards. ``checkpoint_dir``: the search state is committed there after every
    epoch, and a call with the same parent and settings continues from it. ``bf16`` and
    ``channels_last``: the search's forward passes in bfloat16 autocast / channels_last memory
    (a vgg16_bn search epoch 1.7x faster on an AVX512-BF16 CPU, benchmarks/results/phase_step.json);
    the pruned model comes back float32 in the default memory format either way.
    ``device``: where the search runs (default: ``model``'s device); the gate ranking and the
    pruning happen on ``model``'s device, where the pruned model is returned.
    ``fold_gates``: the searched gate values go into the layers they follow before the gates are
    removed (nas_gates.ChannelGates.fold_into), so the kept channels compute what the search
    trained; False drops them (the ablation).
    ``gate_without_bn``: search the groups with no BatchNorm too (VGG's hidden classifier
    layers; nas_gates has why the default leaves them out).
    ``task``: what the model does (engine/tasks.py): the loss both steps take; None:
    classification.
    """
    metric, target = _budget(target_macs, target_params)
    _check(
        {"img_size": (img_size, 1), "search_epochs": (search_epochs, 1), "warmup_epochs": (warmup_epochs, 0)},
        {"weight_lr": weight_lr, "arch_lr": arch_lr, "tau": tau},
        lam,
    )
    if next(iter(val_batches), None) is None:
        raise UserError("the NAS search needs validation batches to validate each search epoch; got none")
    start = time.perf_counter()
    home = model_device(model)
    searched = copy.deepcopy(model).to(device or home)
    flags = [m.training for m in model.modules()]
    param = next(searched.parameters())
    example = torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)
    layout = gate_layout(searched, example, gate_without_bn=gate_without_bn)
    if not layout.sizes:
        raise UserError(f"{type(model).__name__} has no prunable channel group with a BatchNorm to gate")
    gates = ChannelGates(layout, tau).to(param.device)
    cost = ExpectedCost(searched, layout, example, metric)
    with torch.no_grad():
        initial = float(cost.ratio(gates.flat()))
    gates.attach(searched)
    if channels_last:
        searched.to(memory_format=torch.channels_last)
    try:
        # A params budget adds its key, so a MACs search saved before params budgets existed
        # still compares equal to the same search now.
        budget_setting = {"target_macs": target} if metric == "macs" else {"target_macs": None, "target_params": target}
        settings = {
            **budget_setting,
            "img_size": img_size,
            "search_epochs": search_epochs,
            "weight_lr": weight_lr,
            "arch_lr": arch_lr,
            "tau": tau,
            "lam": lam,
            "warmup_epochs": warmup_epochs,
            "seed": seed,
            "cost": "relative",
            # A search saved when the score steps took val batches is another search: not resumed.
            "score_batches": "train",
            "bf16": bf16,
            "channels_last": channels_last,
            "gate_without_bn": gate_without_bn,
        }
        search = _GateSearch(
            searched,
            gates,
            cost,
            target=target,
            lam=lam,
            warmup_epochs=warmup_epochs,
            arch_lr=arch_lr,
            settings=settings,
            progress=progress,
            bf16=bf16,
            channels_last=channels_last,
            task=task or Classification(find_classifier(searched, example).out_features),
        )
        with torch.random.fork_rng(devices=[]):
            _search(
                searched,
                gates,
                search,
                train_batches,
                val_batches,
                example,
                epochs=search_epochs,
                weight_lr=weight_lr,
                seed=seed,
                checkpoint_dir=checkpoint_dir,
                bf16=bf16,
                channels_last=channels_last,
            )
        ratios, train_ce, score_ce = search.ratios, search.train_ce, search.score_ce
        if fold_gates:
            gates.fold_into(searched)
    finally:
        gates.remove()
        searched.to(home).to(memory_format=torch.contiguous_format)  # the pruned model in the default layout
    for m, flag in zip(searched.modules(), flags, strict=True):
        m.training = flag
    searched.zero_grad(set_to_none=True)
    search_seconds = time.perf_counter() - start

    importance = AlphaImportance(searched, gates.group_alphas())
    pruned, budget = prune_to_budget(
        searched,
        importance,
        img_size,
        global_pruning=True,
        target_macs=target if metric == "macs" else None,
        target_params=target if metric == "params" else None,
    )
    report = NASReport(
        target_macs=target if metric == "macs" else None,
        target_params=target if metric == "params" else None,
        initial_expected_ratio=initial,
        expected_ratio=ratios,
        final_expected_ratio=ratios[-1],
        train_ce=train_ce,
        score_ce=score_ce,
        gated_groups=len(layout.sizes),
        gated_channels=layout.n_gates,
        macs_kept=budget.macs_kept,
        params_kept=budget.params_kept,
        search_seconds=search_seconds,
        budget=budget.to_dict(),
        gates_folded=fold_gates,
        gated_without_bn=gate_without_bn,
    )
    return pruned, report


class NAS(PruningMethod):
    name = "nas"
    summary = "NAS channel pruning: trainable channel gates, cost-awareness loss to the budget"
    options = frozenset({"search_epochs", "gate_without_bn"})

    def check(self, cfg: PruneConfig) -> None:
        if cfg.ratio is not None:
            raise UserError(
                "--method nas searches towards a budget: give --target-macs or --target-params, not --ratio"
            )

    def select(self, s: Selection) -> tuple[nn.Module, dict[str, Any]]:
        cfg = s.cfg
        metric = "MACs" if s.budget.metric == "macs" else "params"

        def progress(epoch: int, expected: float, target: float, ce: float) -> None:
            s.log(
                f"search epoch {epoch + 1}/{cfg.search_epochs}: expected {metric} {expected:.3f} "
                f"(target {target:.3f})  score-step CE {ce:.4f}"
            )

        pruned, report = nas_search(
            s.model,
            s.train_batches,
            s.val_batches,
            img_size=s.img_size,
            target_macs=s.budget.target_macs,
            target_params=s.budget.target_params,
            search_epochs=cfg.search_epochs,
            progress=progress,
            seed=cfg.finetune.seed,
            checkpoint_dir=s.phase_dir,
            bf16=cfg.finetune.bf16,
            channels_last=cfg.finetune.channels_last,
            device=s.device,
            gate_without_bn=cfg.gate_without_bn,
            task=s.task,
        )
        details = report.to_dict()
        return pruned, {"budget": details.pop("budget"), "nas_search": details}
