"""Torch-Pruning's dependency graph, used for two things: scoring groups and removing channels.

Scoring and removing are separate on purpose. ``score_groups`` runs an importance criterion
once, on the unpruned model, and keeps the scores by the root layer's *name*; ``apply_plan``
removes the chosen channels from any model with the same module names, e.g. each deep copy a
budget search tries. So a criterion that reads gradients (Taylor) or draws random numbers
scores exactly once, and every candidate of a search is ranked by the same numbers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning import ops

from rscompress.models.detection import deployable
from rscompress.pruning.importance import Importance

# Another torchvision detector (a RetinaNet) is still traced through its box decoding and NMS,
# where Torch-Pruning's channel inference gives up with a warning each time; they hold no
# prunable layer, so its groups are complete without them. Only that message is silenced.
warnings.filterwarnings("ignore", "Maximum recursive depth reached", UserWarning, r"torch_pruning\.")

# Layers whose output channels start a group; BNs, activations, adds and concats follow them.
ROOT_TYPES = (ops.TORCH_CONV, ops.TORCH_LINEAR)
Metric = Literal["macs", "params"]  # what a budget counts


@dataclass(frozen=True)
class GroupScore:
    """One prunable group: its root layer, channel layout and per-position importance.

    A group whose channels feed a grouped (not depthwise) convolution must stay divisible
    into ``ch_groups`` equal parts, so it is pruned by *position*: removing position ``p``
    removes channel ``p + g·positions`` of every part ``g``. Otherwise ``ch_groups`` is 1 and
    positions are channels.

    ``segments``: position sets that some member layer sees only part of (through a split
    or concat, e.g. G-Ghost's raw and cheap paths); each must keep its own floor.

    ``cost``: MACs (or params, for a params budget) one position is worth in the unpruned
    model (``with_tie_costs``); among equal scores, global ranking removes the cheapest
    first. 0 when not measured.
    """

    root: str  # qualified module name of the root layer (its output channels are pruned)
    ch_groups: int
    scores: Tensor  # (positions,) float32 on CPU; higher = more important
    segments: tuple[tuple[int, ...], ...] = ()
    cost: float = 0.0

    @property
    def positions(self) -> int:
        return self.scores.numel()

    def channels(self, positions: Sequence[int]) -> list[int]:
        """Root-layer channel indices of the given positions, in every channel group."""
        n = self.positions
        return sorted(p + g * n for g in range(self.ch_groups) for p in positions)


def build_graph(model: nn.Module, example_inputs: Tensor) -> tp.DependencyGraph:
    """Trace ``model`` into a dependency graph without changing its train/eval flags.

    Torch-Pruning's tracer puts the model in eval mode and leaves it there; a model handed
    to us in training mode must come back in training mode. Tracing follows autograd, so it
    runs with gradients enabled even if the caller is inside ``torch.no_grad``.
    """
    training = {m: m.training for m in model.modules()}
    try:
        with torch.enable_grad():
            # An FCOS detector is traced as it is exported, up to its head's raw outputs
            # (models.detection.deployable): every prunable layer is before them. Its box
            # decoding and NMS hold none, yet their reshapes cost Torch-Pruning a recursive
            # channel walk each time it builds a group (a budget search on fcos_mobilenet_v3
            # ran 2.5x slower through them).
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=lambda m, x: deployable(m)(x)
            )
    finally:
        for m, flag in training.items():
            m.training = flag


def channel_groups(graph: tp.DependencyGraph, group: tp.dependency.Group) -> int:
    """How many equal parts the group's channels must keep (largest conv ``groups`` in it).

    Same rule as Torch-Pruning's BasePruner: a depthwise conv is channel-wise already (its
    in and out channels are one group member each), so only other grouped convs count.
    """
    parts = 1
    for item in group:
        layer, handler = item.dep.target.module, item.dep.handler
        if isinstance(layer, ops.TORCH_CONV) and layer.groups == layer.out_channels:
            continue
        layer_pruner = graph.get_pruner_of_module(layer)
        if layer_pruner is None:
            continue
        if graph.is_out_channel_pruning_fn(handler):
            parts = max(parts, layer_pruner.get_out_channel_groups(layer))
        elif graph.is_in_channel_pruning_fn(handler):
            parts = max(parts, layer_pruner.get_in_channel_groups(layer))
    return parts


def _segments(group: tp.dependency.Group, positions: int) -> tuple[tuple[int, ...], ...]:
    """Distinct proper subsets of the root's positions that group members map to."""
    found = set()
    for item in group:
        if item.root_idxs and not any(r is None for r in item.root_idxs):
            covered = tuple(sorted({r % positions for r in item.root_idxs}))
            if len(covered) < positions:
                found.add(covered)
    return tuple(sorted(found))


@torch.no_grad()
def score_groups(
    graph: tp.DependencyGraph, importance: Importance, ignored_roots: Iterable[nn.Module]
) -> list[GroupScore]:
    """Score every prunable group of ``graph.model`` once, in graph order.

    ``ignored_roots`` are layers whose output channels must not be pruned (the classifier,
    SE bottlenecks, user choices); as in Torch-Pruning, a group that would prune the output
    of any of them is skipped whole. Groups the criterion cannot score (it returns ``None``,
    e.g. BN criteria on a group without BN) are skipped too.
    """
    names = {m: n for n, m in graph.model.named_modules()}
    scored = []
    for group in graph.get_all_groups(ignored_layers=list(ignored_roots), root_module_types=ROOT_TYPES):
        imp = importance(group)
        if imp is None:
            continue
        parts = channel_groups(graph, group)
        # Average over the channel groups, as Torch-Pruning does: position p is kept or
        # removed in every part at once, so it is worth the mean of its copies.
        scores = imp.detach().float().cpu().view(parts, -1).mean(dim=0)
        root = names[group[0].dep.target.module]
        scored.append(GroupScore(root, parts, scores, _segments(group, scores.numel())))
    return scored


def apply_plan(graph: tp.DependencyGraph, plan: Mapping[str, Sequence[int]]) -> None:
    """Remove, for each root layer name, those output channels and everything coupled to them.

    ``graph`` must be traced from the model to prune (a fresh one per deep copy). Groups are
    built one at a time, right before each is pruned, so Torch-Pruning re-derives the index
    maps of concats and splits after every change.
    """
    model = graph.model
    for root, channels in plan.items():
        if not channels:
            continue
        layer = model.get_submodule(root)
        group = graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels, list(channels))
        if not graph.check_pruning_group(group):
            raise RuntimeError(f"pruning plan would empty a layer of the group rooted at {root}")
        group.prune()


def has_ties_across_groups(groups: Sequence[GroupScore]) -> bool:
    """Whether two positions of different groups share a score (their order is then arbitrary)."""
    distinct = [torch.unique(g.scores) for g in groups]
    merged = torch.cat(distinct) if distinct else torch.zeros(0)
    return torch.unique(merged).numel() < merged.numel()


def with_tie_costs(
    model: nn.Module, example: Tensor, groups: Sequence[GroupScore], metric: Metric = "macs"
) -> list[GroupScore]:
    """``groups`` with ``cost`` set: the MACs (or params) ``model`` loses when one position goes.

    Only where scores tie across groups (``has_ties_across_groups``); otherwise the costs
    could not change the ranking and ``groups`` come back as they are, nothing counted.

    Why: sparse training (L1RR, slimming) leaves many γ at exactly zero, and a global ranking
    removes equal scores in network order otherwise. Early channels carry the most MACs
    (largest feature maps), so a MACs budget was met before the zeros of the last stage
    were reached, and those stayed: se_resnet18 kept a 512-wide conv with 372 zero channels
    and 52 % of its params at 35 % of the MACs. Removing the cheapest of equally-scored
    channels, in the budget's own metric, removes the most of them within the budget.
    Measured, not modelled: one position is pruned from a copy of ``model`` and counted on
    ``example`` (copies only: Torch-Pruning's counter leaves a model in eval mode).
    """
    if not has_ties_across_groups(groups):
        return list(groups)
    example = example.detach().cpu().float()
    which = 0 if metric == "macs" else 1

    def count(plan: Mapping[str, Sequence[int]]) -> float:
        trial = copy.deepcopy(model).cpu().float()
        apply_plan(build_graph(trial, example), plan)
        with torch.no_grad():
            return float(tp.utils.count_ops_and_params(trial, example)[which])

    full = count({})
    return [
        # A single position is never a candidate (plan.py's floor), so it needs no cost.
        replace(g, cost=full - count({g.root: g.channels([g.positions - 1])}) if g.positions > 1 else 0.0)
        for g in groups
    ]
