"""Sparse training on BN γ, then pruning by |γ|: L1RR (METHODS.md §3, Ran et al. 2024) and
network slimming, the two methods (l1rr.py, slim.py) that share this code.

L1RR for classification in two calls:

1. ``sparse_train(parent, train_batches, val_batches, cfg)``: fine-tune the trained dense
   parent with cross-entropy + ``attention_weight``·attention transfer to a frozen copy of
   the parent + λ·Σ w_c|γ_c| over the BN scales of every prunable channel, where
   * w_c = 1/(|γ_c| + eps), re-estimated every epoch (Candès reweighting, ``reweight``),
   * times a per-layer factor from that layer's γ distribution (``self_adaptive``,
     l1rr_losses.layer_multipliers),
   * and λ moves between epochs with the measured sparsity and validation loss
     (``dynamic``, ``next_rate``). The controller works on a rate ρ, the share of the dense
     parent's median |γ| the penalty alone removes per epoch, and λ = ρ·strength_per_rate
     (l1rr_losses): the same ρ then moves γ alike whatever the lr, the epoch length or the
     scale of the parent's γ.
2. ``prune_to_budget(model, "bn", img_size, target_macs=F, global_pruning=True)``: one
   global |γ| ranking sets every layer's ratio from the γ distribution the sparse training
   left, each layer keeps at least 1 − MAX_PRUNING_RATIO of its channels, and the ratio is
   bisected on measured MACs. Then fine-tune.

Residual reconstruction. In a residual stream (ResNet's stem conv, every block's last
conv/BN, the downsample conv/BN, and the first conv of every following block) one channel
index is one channel of the sum: the paper removes such a channel by recombining the output
channels of all producers and the input channels of all consumers at once. Torch-Pruning's
dependency group of the stream is exactly that set of layers, and ``bn`` scores a stream
channel by the mean |γ| over all its BNs, so pruning a group removes the channel everywhere
and every residual add keeps matching widths. Sparse training penalises a stream channel as
one (``couple_groups``, prunable_channel_sets): its γ in every BN of the stream form one column
of the penalty, shrunk together. Penalised BN by BN instead, the blocks' last BNs went to
zero while the downsample BN, which carries the shortcut, did not: on se_resnet18 (seed 0,
35 % of the MACs) no stream channel of layers 2–4 reached a zero mean |γ|, so the ranking
kept every stream whole and took all the MACs from inside the blocks (35 % of the params
kept; the bar is 25 %).

``SparsityConfig(reweight=False, dynamic=False, self_adaptive=False, attention_weight=0)``
is network slimming (Liu et al. 2017): plain L1 on γ at constant λ, through the same code.
The penalty is applied as a proximal (soft-thresholding) step after each SGD step, not as a
subgradient: same objective, but γ reaches exact zeros (l1rr_losses.group_soft_threshold says
why).
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_pruning.pruner import function

from rscompress.artifacts import RunDir, setting_differences
from rscompress.config import FitConfig, OptimConfig
from rscompress.engine.tasks import Classification, Evaluation, Task
from rscompress.engine.trainer import EpochBatches, LossFn, TrainingHooks, fit
from rscompress.errors import UserError
from rscompress.io_utils import write_json_atomic
from rscompress.models.weights import read_state_dict, save_weights
from rscompress.pruning.budget import prune_to_budget
from rscompress.pruning.graph import ROOT_TYPES, build_graph
from rscompress.pruning.methods.base import PruningMethod, Selection
from rscompress.pruning.methods.l1rr_losses import (
    attention_loss,
    candes_weights,
    coupled_magnitudes,
    group_soft_threshold,
    layer_multipliers,
    layer_spread,
    reweighted_l1,
    sparsity,
    strength_per_rate,
)
from rscompress.pruning.plan import MAX_PRUNING_RATIO
from rscompress.pruning.pruner import find_classifier, protected_layers

# (epoch, sparsity after it, rate ρ in effect during it, val loss after it)
Progress = Callable[[int, float, float, float], None]
# One set of coupled channels: (position of a BN in prunable_channel_sets' list, channel
# indices in it); every entry lists the same n channels of one dependency group, in one order.
ChannelSet = list[tuple[int, Tensor]]


@dataclass(frozen=True)
class SparsityConfig:
    """Sparse-training settings. Defaults are for fine-tuning a trained parent for ~30 epochs.

    * ``lr`` 0.01, constant: a tenth of the usual from-scratch SGD rate, as usual for
      fine-tuning a trained net (``prune`` uses a tenth of the parent's own rate,
      sparse_training_lr). Constant, so that val loss moves because of λ and not a
      schedule (the controller reads it); the fine-tune after pruning has its own schedule.
    * ``rate`` 0.01 (ρ): the share of the parent's median |γ| the penalty alone takes off a
      median channel per epoch (l1rr_losses.strength_per_rate turns it into λ). With
      reweighting the push grows as a channel shrinks (∝ 1/(|γ| + eps)), so at a constant ρ a
      channel at the median reaches zero in about 1/(2ρ) epochs and one at half the median in a
      quarter of that, unless the task loss holds it. On se_resnet18 (SE-folded parent, median
      |γ| 0.36) the old λ controller, raising from network slimming's λ = 1e-4 (ρ ≈ 0.002),
      had γ begin to reach zero in epoch 13 at λ ≈ 8.7e-3 (ρ ≈ 0.14); from ρ = 0.01 the
      controller reached its cap in 6 epochs and γ began to reach zero in epoch 7.
    * ``rate_range`` 10: ρ stays in [rate / 10, rate · 10]; at 0.1 a median channel is gone in
      ~5 epochs, faster than the val check (once an epoch) can react.
    * ``couple_groups``: shrink the channels of a residual stream together, one column over all
      its BNs (residual reconstruction in sparse training; the module docstring says why);
      off, every BN is penalised on its own, as network slimming does.
    * ``eps`` 1e-2: both the Candès constant and the "is zero" threshold of the sparsity.
    * ``target_sparsity`` 0.5: share of prunable BN channels to drive below eps; set it near
      the channel share the budget removes (≈ 1 − √F to keep a fraction F of the MACs).
    * ``loss_tolerance`` 0.6: λ backs off once val loss exceeds the dense model's by 60 %.
      Chosen on val (benchmarks/l1rr_controller.yaml, UC Merced se_resnet18, 3 seeds) against
      0.1 and 0.3, on the mean over the 35 % and 10 % budgets (0.6: 84.05, 0.1: 83.26). At 0.1
      the phase stops far short of its target sparsity (0.27 of 0.68 at 10 %), so the global
      |γ| ranking cuts live channels; at 0.6 it gets near or past it. Val leans to the tight
      arm, the one that tracks it closely (it preferred 0.1 at 35 %), and still chose 0.6.
      Read raw, not smoothed: the val loss moves with the rate step of the same epoch (in 127
      of 155 epochs), so its swing is the controller's own and an average would only make it
      react later.
    * ``raise_factor`` 1.5 / ``backoff_factor`` 0.5: cautious growth, fast retreat, so one
      bad epoch (or one past the target sparsity) costs one halving.
    * ``hold_layer_scale`` (off; L1RR's ``--sparse-hold-scale``): after each proximal step,
      scale every BN's γ back to the mean |γ| it had before the step, so the penalty takes
      channels from a layer without shrinking the layer. Where a BN is followed (through a
      convolution) by another BN, training mode normalises its common scale away, so the task
      loss does not resist the whole layer shrinking: on fcos_mobilenet_v3 (NEPU_OWOD, seed 0,
      12 epochs at 35 %) every γ shrank alike (median 0.95 to 0.46 in 8 epochs, none below
      eps), then 99.6 % of them passed eps in one epoch and val mAP@0.5 fell from 0.70 to 0.
      Held, only the channels the penalty pushes below their layer's share shrink: the same
      cell did not collapse and scored val mAP@0.5 0.73 after fine-tuning, against 0.56.
    * ``attention_weight`` 1.0: each layer's term is in [0, 4]; weight 1 with maps summed over
      positions is the low end of Zagoruyko & Komodakis' β=1000 on position-averaged maps.
    * ``attention_layers``: ResNet's last three stages; for vgg16_bn use the ReLUs that end
      stages 3–5, ("features.22", "features.32", "features.42").
    * ``momentum``/``weight_decay`` 0.9/5e-4: the project's training defaults (config.py),
      on all parameters, so sparse training differs from training only by its extra terms.
    * ``bf16``/``channels_last``: the training forward passes (model and frozen reference) in
      bfloat16 autocast / channels_last memory, as the fine-tuning recipe's FitConfig says;
      γ, the penalty, the losses and validation stay float32.
    """

    epochs: int = 30
    lr: float = 0.01
    rate: float = 0.01
    reweight: bool = True
    couple_groups: bool = True
    dynamic: bool = True
    self_adaptive: bool = True
    attention_weight: float = 1.0
    attention_layers: tuple[str, ...] = ("layer2", "layer3", "layer4")
    hold_layer_scale: bool = False
    target_sparsity: float = 0.5
    eps: float = 1e-2
    loss_tolerance: float = 0.6
    raise_factor: float = 1.5
    backoff_factor: float = 0.5
    rate_range: float = 10.0
    max_ratio: float = MAX_PRUNING_RATIO  # self-adaptive: the pruning cap per layer
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    bf16: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1),
            ("lr", self.lr > 0),
            ("rate", self.rate >= 0),
            ("attention_weight", self.attention_weight >= 0),
            ("target_sparsity", 0 < self.target_sparsity < 1),
            ("eps", self.eps > 0),
            ("loss_tolerance", self.loss_tolerance >= 0),
            ("raise_factor", self.raise_factor >= 1),
            ("backoff_factor", 0 < self.backoff_factor <= 1),
            ("rate_range", self.rate_range >= 1),
            ("max_ratio", 0 < self.max_ratio < 1),
            ("momentum", 0 <= self.momentum < 1),
            ("weight_decay", self.weight_decay >= 0),
        ]
        for name, ok in checks:
            if not ok:
                raise UserError(f"invalid sparse-training setting {name}={getattr(self, name)!r}")
        if self.attention_weight > 0 and not self.attention_layers:
            raise UserError("attention_weight > 0 needs at least one attention layer")


@dataclass(frozen=True)
class SparsityReport:
    """What sparse training did; ``to_dict`` goes into metrics.json as is."""

    epochs: int
    prunable_bns: int  # BNs penalised (those of prunable groups)
    coupled_sets: int  # sets of channels shrunk together that span more than one BN
    channels: int  # their channels in all
    median_gamma: float  # the dense parent's median |γ| over those channels, ρ's scale
    gamma_spread: float  # the dense parent's l1rr_losses.layer_spread
    strength_per_rate: float  # λ = ρ · this (l1rr_losses.strength_per_rate)
    ref_val_loss: float  # the dense parent's, the controller's reference
    ref_val: dict  # the dense parent's val metrics (top-1 for a classifier, mAP for a detector)
    final_val_loss: float
    final_val: dict
    final_sparsity: float  # share of those channels with |γ| < eps
    final_rate: float  # ρ the controller would use next
    seconds: float
    config: dict
    history: list[dict]  # one row per epoch

    def to_dict(self) -> dict:
        return asdict(self)


def next_rate(rate: float, sparsity: float, val_loss: float, ref_val_loss: float, cfg: SparsityConfig) -> float:
    """ρ for the next epoch (``cfg.dynamic``; otherwise unchanged).

    Back off (×backoff_factor) when val loss is above the dense model's by more than
    ``loss_tolerance`` (relative): accuracy is going, give the task loss room. Otherwise raise
    (×raise_factor) while the sparsity is below target, and back off once it is at or above
    it. Always within [cfg.rate / rate_range, cfg.rate · rate_range].

    Why back off at target rather than hold: held, the push kept zeroing channels past the
    target (se_resnet18 s0 at 35 %: sparsity 0.55–0.59 against 0.41). Channels at zero beyond
    what the budget removes tie in the global ranking and are kept or removed by their place
    in the net, not by their γ; on that run the two 512-wide layer-4 convs kept every channel
    though 411 and 384 of them were at zero, and 48 % of the params stayed.
    """
    if not cfg.dynamic:
        return rate
    if val_loss > ref_val_loss * (1 + cfg.loss_tolerance):
        new = rate * cfg.backoff_factor
    elif sparsity < cfg.target_sparsity:
        new = rate * cfg.raise_factor
    else:
        new = rate * cfg.backoff_factor
    return min(max(new, cfg.rate / cfg.rate_range), cfg.rate * cfg.rate_range)


def target_difference(report: dict, target: float) -> str | None:
    """Why the sparse training ``report`` records (``SparsityReport.to_dict()`` read back from
    JSON) is not, epoch for epoch, the run towards target sparsity ``target`` with all else the
    same; None when it is.

    The target is read in one place, ``next_rate``'s "below target?" test (and not at all
    without ``dynamic``); every epoch is seeded from the settings alone (``derived_seed``). So
    the two runs are one when each epoch's sparsity fell on the same side of both targets. On
    vgg16_bn no γ reached zero in 30 epochs, and the phases towards 35 %, 10 % and 5 % of the
    MACs repeated bit for bit.
    """
    ran_with, history = report["config"]["target_sparsity"], report["history"]
    if not report["config"]["dynamic"] or all(
        (row["sparsity"] < ran_with) == (row["sparsity"] < target) for row in history
    ):
        return None
    reached = max(row["sparsity"] for row in history)
    return (
        f"sparse_training.target_sparsity: {ran_with:.4g} there, {target:.4g} now, and its sparsity (up to "
        f"{reached:.4g}) crossed one and not the other, so the strength would have moved otherwise"
    )


def reuse_differences(report: dict, cfg: SparsityConfig) -> list[str]:
    """Why the sparse training ``report`` records is not the one ``cfg`` runs, as
    ``"key: X there, Y now"``; empty when it is (``target_difference`` says when a run towards
    another target sparsity is)."""
    unset = {"target_sparsity": None}
    given = json.loads(json.dumps(asdict(cfg)))
    differences = setting_differences({**report["config"], **unset}, {**given, **unset}, "sparse_training")
    if not differences and (difference := target_difference(report, cfg.target_sparsity)):
        differences.append(difference)
    return differences


def gamma_stack(gammas: Sequence[Tensor], channels: ChannelSet) -> Tensor:
    """The (k, n) stack of a set's γ: row j is BN j's γ at the set's n channels."""
    return torch.stack([gammas[position][idxs] for position, idxs in channels])


def penalty_weights(gammas: Sequence[Tensor], sets: Sequence[ChannelSet], cfg: SparsityConfig) -> list[Tensor]:
    """Per coupled channel weights of the penalty for this epoch, one (n,) tensor per set:
    Candès on the channel's RMS γ (or 1) × the mean self-adaptive factor of the set's BNs."""
    if cfg.reweight:
        weights = candes_weights(coupled_magnitudes([gamma_stack(gammas, c) for c in sets]), cfg.eps)
    else:
        weights = [torch.ones(len(c[0][1]), device=gammas[0].device) for c in sets]
    if cfg.self_adaptive:
        factors = layer_multipliers(gammas, cfg.eps, cfg.max_ratio)
        weights = [w * sum(factors[p] for p, _ in c) / len(c) for w, c in zip(weights, sets, strict=True)]
    return weights


def prunable_channel_sets(
    model: nn.Module, example_inputs: Tensor, couple: bool
) -> tuple[list[nn.modules.batchnorm._BatchNorm], list[ChannelSet]]:
    """Affine BNs whose channels some prunable dependency group removes (in module order), and
    their channels as the sets the penalty shrinks together.

    The same groups ``prune``/``prune_to_budget`` score: protected roots (the classifier, SE
    squeeze layers) are excluded, so a BN whose channels can never be pruned is not pushed
    to zero for nothing.

    ``couple``: a group whose BNs each list as many channels as its root (a residual stream,
    where one index is one channel of the sum) is one set. Every other BN channel, and all of
    them without ``couple``, is in a set per BN. A channel is in one set only: the groups of
    a concatenation list a BN's channels in part or again, and stay per BN.
    """
    graph = build_graph(model, example_inputs)
    groups: list[tuple[int, list[tuple[nn.Module, list[int]]]]] = []
    for group in graph.get_all_groups(
        ignored_layers=protected_layers(model, example_inputs), root_module_types=ROOT_TYPES
    ):
        items = [
            (item.dep.target.module, [int(i) for i in item.idxs])
            for item in group
            if item.dep.handler == function.prune_batchnorm_out_channels and item.dep.target.module.affine
        ]
        if items:
            groups.append((len(group[0].idxs), items))
    found = {layer for _, items in groups for layer, _ in items}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m in found]
    position: dict[nn.Module, int] = {bn: i for i, bn in enumerate(bns)}
    taken = [torch.zeros(bn.num_features, dtype=torch.bool) for bn in bns]
    sets: list[ChannelSet] = []
    for root_len, items in groups if couple else ():
        entries = [(position[layer], torch.tensor(idxs)) for layer, idxs in items]
        if (
            len(entries) > 1
            and all(len(idxs) == root_len for _, idxs in entries)
            and len({p for p, _ in entries}) == len(entries)
            and not any(taken[p][idxs].any() for p, idxs in entries)
        ):
            for p, idxs in entries:
                taken[p][idxs] = True
            sets.append(entries)
    for p, mask in enumerate(taken):
        if not mask.all():
            sets.append([(p, (~mask).nonzero().flatten())])
    return bns, sets


@contextmanager
def feature_taps(model: nn.Module, names: Sequence[str]) -> Iterator[list[Tensor | None]]:
    """Forward hooks that keep the last output of each named module; removed on exit."""
    outputs: list[Tensor | None] = [None] * len(names)
    handles = []
    try:
        for i, name in enumerate(names):
            try:
                module = model.get_submodule(name)
            except AttributeError:
                children = ", ".join(n for n, _ in model.named_children())
                raise UserError(
                    f"attention layer {name!r} is not a module of {type(model).__name__} "
                    f"(its top-level modules: {children})"
                ) from None

            def keep(_module: nn.Module, _inputs: object, output: Tensor, i: int = i) -> None:
                outputs[i] = output

            handles.append(module.register_forward_hook(keep))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def attention_transfer(model: nn.Module, layers: Sequence[str]) -> Iterator[Callable[[Tensor], Tensor]]:
    """Yields ``loss_of(x)``: the attention loss between ``model``'s last forward pass (on
    ``x``) and a frozen copy of ``model`` as it is now (eval mode, no grad) on the same ``x``.
    Hooks on both models are removed on exit."""
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    with feature_taps(model, layers) as student_maps, feature_taps(teacher, layers) as teacher_maps:

        def loss_of(x: Tensor) -> Tensor:
            with torch.no_grad():
                teacher(x)
            pairs = [(s, t) for s, t in zip(student_maps, teacher_maps, strict=True) if s is not None and t is not None]
            if len(pairs) != len(layers):
                raise UserError(f"the forward pass did not reach every attention layer of {', '.join(layers)}")
            return attention_loss([s for s, _ in pairs], [t for _, t in pairs])

        yield loss_of


def _first_images(batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    for x, _ in batches:
        return x[:1]
    raise UserError("sparse training got no validation images")


class _SparsePenalty(TrainingHooks):
    """Sparse training as hooks of the fit loop: each epoch's penalty weights and threshold,
    the proximal step on γ after every SGD step, and the rate controller after validation."""

    keep = "last"  # sparsity, not val accuracy, is what the phase is for

    def __init__(
        self,
        gammas: Sequence[Tensor],
        sets: list[ChannelSet],
        cfg: SparsityConfig,
        lam_per_rate: float,
        ref_val_loss: float,
        progress: Progress | None,
    ) -> None:
        self.gammas, self.sets, self.cfg = gammas, sets, cfg
        self.lam_per_rate, self.ref_val_loss, self.progress = lam_per_rate, ref_val_loss, progress
        self.settings = json.loads(json.dumps(asdict(cfg)))  # as it reads back from state.json
        self.rate = cfg.rate
        self.history: list[dict[str, Any]] = []
        self.sums = {"ce": 0.0, "attention": 0.0, "penalty": 0.0}
        self.steps = 0

    def start_epoch(self, epoch: int) -> None:
        self.started = time.perf_counter()
        self.weights = penalty_weights(self.gammas, self.sets, self.cfg)
        # Proximal step of λ·Σ w|γ| after each SGD step. Divided by (1 − momentum): SGD's
        # momentum moves the smooth part by lr/(1 − μ) per step at steady state, so with
        # this threshold the fixed points are those of CE (+ attention) + λ·Σ w|γ|, as if
        # the penalty were a loss term, and λ means what it means in network slimming.
        self.strength = self.rate * self.lam_per_rate
        self.shrink = self.cfg.lr * self.strength / (1 - self.cfg.momentum)
        self.sums = {"ce": 0.0, "attention": 0.0, "penalty": 0.0}
        self.steps = 0

    def loss(self, attention: Callable[[Tensor], Tensor] | None, task_loss: LossFn) -> LossFn:
        """The task's loss (CE for a classifier, a detector's own) + attention_weight ·
        attention transfer, the parts summed for the history (``train_ce``: the task's)."""

        def loss_fn(model: nn.Module, x: Tensor, y: Any, epoch: int) -> tuple[Tensor, Any]:
            base, outputs = task_loss(model, x, y, epoch)
            loss = base
            if attention is not None:
                at = attention(x)
                loss = loss + self.cfg.attention_weight * at
                self.sums["attention"] += at.item()
            self.sums["ce"] += base.item()
            return loss, outputs

        return loss_fn

    @torch.no_grad()
    def after_step(self, epoch: int) -> None:
        hold = self.cfg.hold_layer_scale
        scales = [g.abs().mean() for g in self.gammas] if hold else []
        stacks = []
        for channels, w in zip(self.sets, self.weights, strict=True):
            shrunk = group_soft_threshold(gamma_stack(self.gammas, channels), self.shrink * w)
            for (p, idxs), row in zip(channels, shrunk, strict=True):
                self.gammas[p][idxs] = row
            stacks.append(shrunk)
        if hold:  # each BN back to its mean |γ|: the step moves γ within a layer, not the layer
            for gamma, scale in zip(self.gammas, scales, strict=True):
                left = gamma.abs().mean()
                if left > 0:
                    gamma.mul_(scale / left)
        self.sums["penalty"] += reweighted_l1(stacks, self.weights).item()
        self.steps += 1

    def end_epoch(self, epoch: int, val: Evaluation) -> dict[str, Any]:
        sparse = sparsity(self.gammas, self.cfg.eps)
        row = {
            "rate": self.rate,
            "strength": self.strength,
            "sparsity": sparse,
            "train_ce": self.sums["ce"] / self.steps,
            "attention_loss": self.sums["attention"] / self.steps,
            "penalty": self.sums["penalty"] / self.steps,
        }
        seconds = time.perf_counter() - self.started  # training and validation
        self.history.append({"epoch": epoch, **row, **val.history(), "seconds": seconds})
        if self.progress is not None:
            self.progress(epoch, sparse, self.rate, val.loss)
        self.rate = next_rate(self.rate, sparse, val.loss, self.ref_val_loss, self.cfg)
        return row

    def state(self) -> dict[str, Any]:
        return {"config": self.settings, "rate": self.rate, "history": self.history}

    def load_state(self, state: dict[str, Any]) -> None:
        if differences := setting_differences(state["config"], self.settings, "sparse_training"):
            raise UserError(
                f"the sparse training kept there ran with other settings ({'; '.join(differences)}); "
                "resume with the same options or remove it"
            )
        self.rate, self.history = state["rate"], state["history"]


def sparse_train(
    model: nn.Module,
    train_batches: Collection[tuple[Tensor, Tensor]],
    val_batches: Iterable[tuple[Tensor, Tensor]],
    cfg: SparsityConfig = SparsityConfig(),
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    task: Task | None = None,
) -> tuple[nn.Module, SparsityReport]:
    """Sparse-train ``model`` in place (see the module docstring) through the fit loop;
    returns it and a report. ``task``: what the model does (engine/tasks.py), its loss trained
    and its val loss read by the rate controller; None: classification.

    ``train_batches`` is iterated once per epoch (``set_epoch(epoch)`` is called first when it
    has one); its length is the epoch's step count, which turns ρ into λ. ``val_batches`` is
    iterated once per epoch and once before, for the dense reference. The model of the last
    epoch is returned (sparsity, not val accuracy, is what this phase is for), in the
    train/eval mode it came in, on the device it came on.

    ``checkpoint_dir``: a run dir of the phase (the fit loop's checkpoints and history), kept
    after every epoch; a call given the same dense ``model`` and ``cfg`` continues from it,
    ending where an uninterrupted run ends.
    """
    start = time.perf_counter()
    param = next(model.parameters())
    example = _first_images(val_batches).to(param.device, param.dtype)
    task = task or Classification(find_classifier(model, example).out_features)
    bns, sets = prunable_channel_sets(model, example, cfg.couple_groups)
    sets = [[(p, idxs.to(param.device)) for p, idxs in c] for c in sets]
    if not bns:
        raise UserError(f"{type(model).__name__} has no prunable BatchNorm layers to sparsify")
    gammas = [bn.weight for bn in bns]
    was_training = model.training
    if len(train_batches) == 0:
        raise UserError("sparse training got no training batches")
    # ρ's scale comes from the dense parent (taken before a resume loads later weights), so
    # λ per unit ρ is fixed for the whole phase.
    median_gamma = torch.cat([g.detach().abs().flatten() for g in gammas]).median().item()
    spread = layer_spread(gammas)
    lam_per_rate = strength_per_rate(median_gamma, cfg.eps, cfg.reweight, cfg.lr, cfg.momentum, len(train_batches))
    ref = task.evaluate(model, val_batches, False)
    penalty = _SparsePenalty(gammas, sets, cfg, lam_per_rate, ref.loss, progress)
    # Constant lr, plain momentum, no label smoothing: val loss then moves because of λ and
    # not a schedule (the controller reads it); the fine-tuning after pruning has its own recipe.
    fit_cfg = FitConfig(
        epochs=cfg.epochs,
        seed=cfg.seed,
        label_smoothing=0.0,
        bf16=cfg.bf16,
        channels_last=cfg.channels_last,
        device=str(param.device),
        optim=OptimConfig(
            lr=cfg.lr, momentum=cfg.momentum, nesterov=False, weight_decay=cfg.weight_decay, schedule="constant"
        ),
    )
    with ExitStack() as stack:
        # Entered before a resume loads its weights: the attention reference is the dense model.
        attention = (
            stack.enter_context(attention_transfer(model, cfg.attention_layers)) if cfg.attention_weight > 0 else None
        )
        phase_dir = checkpoint_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sparse-")))
        result = fit(
            model,
            EpochBatches(train_batches),
            val_batches,
            fit_cfg,
            RunDir(phase_dir),
            task,
            loss_fn=penalty.loss(attention, task.objective(0.0)),
            resume=True,
            quiet=True,
            hooks=penalty,
        )
    model.train(was_training)
    model.to(memory_format=torch.contiguous_format)  # pruned next, in the default layout
    last = penalty.history[-1]
    report = SparsityReport(
        epochs=cfg.epochs,
        prunable_bns=len(bns),
        coupled_sets=sum(len(c) > 1 for c in sets),
        channels=sum(g.numel() for g in gammas),
        median_gamma=median_gamma,
        gamma_spread=spread,
        strength_per_rate=lam_per_rate,
        ref_val_loss=ref.loss,
        ref_val=ref.summary(),
        final_val_loss=result.val.loss,
        final_val=result.val.summary(),
        final_sparsity=last["sparsity"],
        final_rate=penalty.rate,
        seconds=time.perf_counter() - start,
        config=asdict(cfg),
        history=penalty.history,
    )
    return model, report


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


class SparseTrainingMethod(PruningMethod):
    """Train the parent sparse on BN γ, then prune by |γ| ranked globally, so each layer's
    ratio comes from the γ distribution sparse training left (network slimming, L1RR)."""

    options = frozenset({"sparse_epochs", "sparse_rate", "sparse_lr"})
    sparse_training = True
    # The rate (SparsityConfig.rate) when --sparse-rate is not given: L1RR's controller starts
    # there and moves it; network slimming holds it for the whole phase.
    default_rate: float = SparsityConfig.rate

    def sparsity_config(self, s: Selection, base: SparsityConfig) -> SparsityConfig:
        """``base`` (the settings both methods share) with this method's own."""
        raise NotImplementedError

    def select(self, s: Selection) -> tuple[nn.Module, dict[str, Any]]:
        cfg = s.cfg
        base = SparsityConfig(
            epochs=cfg.sparse_epochs,
            lr=sparse_training_lr(cfg.sparse_lr, s.parent_optim),
            rate=self.default_rate if cfg.sparse_rate is None else cfg.sparse_rate,
            target_sparsity=sparse_target(s.budget.target_macs),
            seed=cfg.finetune.seed,
            bf16=cfg.finetune.bf16,
            channels_last=cfg.finetune.channels_last,
        )
        model, report = _sparse_model(s.model.to(s.device), self.sparsity_config(s, base), s)
        model.cpu()
        # Ranked by the γ sparse training left, never by the weights before it: that
        # distribution is what sets each layer's ratio.
        pruned, budget = prune_to_budget(
            model, "bn", s.img_size, global_pruning=True, calibration=s.calibration, **s.budget.search_args()
        )
        return pruned, {"budget": budget.to_dict(), "sparse_training": report}


def _sparse_model(model: nn.Module, cfg: SparsityConfig, s: Selection) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` trained sparse, and the report; the model kept in the run dir
    (``sparse.safetensors``) when there is one there already (a resumed run, --sparse-from)."""
    run = s.run
    if run is not None and run.holds_sparse_model():
        report = json.loads(run.sparse_record_path.read_text())
        if differences := reuse_differences(report, cfg):
            raise UserError(
                f"{run.sparse_record_path} is sparse training with other settings "
                f"({'; '.join(differences[:3])}); remove it to train again"
            )
        model.load_state_dict(read_state_dict(run.sparse_weights_path))
        s.log(
            f"sparse training: the model in {run.sparse_weights_path}"
            + (f" (taken from {report['taken_from']})" if "taken_from" in report else "")
        )
        return model, report

    def progress(epoch: int, sparse: float, rate: float, val_loss: float) -> None:
        s.log(f"sparse epoch {epoch + 1}/{cfg.epochs}: sparsity {sparse:.3f}  rate {rate:.3g}  val loss {val_loss:.4f}")

    model, trained = sparse_train(
        model, s.train_batches, s.val_batches, cfg=cfg, progress=progress, checkpoint_dir=s.phase_dir, task=s.task
    )
    s.log(
        f"sparse training: the parent's |γ| differed by {trained.gamma_spread:.2%} within a layer (median "
        f"std/mean), so the |γ| ranking sees what sparse training made of them: sparsity {trained.final_sparsity:.3f}"
    )
    if run is not None:
        save_weights(model, run.sparse_weights_path)
        write_json_atomic(run.sparse_record_path, trained.to_dict())  # last: marks the phase done
    return model, trained.to_dict()
