"""Which channels to remove: a pure function of group scores and a pruning ratio.

Why not Torch-Pruning's own thresholding (``BasePruner.step``)? In Torch-Pruning 1.6, one-shot
global pruning does not apply ``max_pruning_ratio`` (it only checks widths *before* a step):
on ResNet-18 at ratio 0.85 / max 0.9 the layer3 stream kept 18 of 256 channels (7 %). Its
``round_to`` rounds kept channels *down*, and a group that would lose every channel is then
skipped whole, so kept MACs are not monotonic in the ratio, which a budget search needs.
And it re-scores on every call. Here scores come in precomputed (graph.score_groups), and
the floor per layer holds in both modes.

Definitions
-----------
* ``ratio``: fraction of channels to remove. Uniform: from every group. Global: from all
  groups together, the lowest-scored channels of the whole network first.
* ``max_pruning_ratio`` (default 0.9): no group loses more than this fraction, i.e. every
  layer keeps at least ⌈10 %⌉ of its channels and at least one; where a split or concat
  hands only part of a group to a layer, that part keeps its own floor. 0.9 leaves room for the hard
  budgets we benchmark: uniform pruning of ResNet-18 to 5 % of its MACs removes ~80 % of
  every layer's channels, to 3 % ~85 % (measured at 32 px); global pruning then hits the floor only in its least
  important layers instead of cutting them to a single channel.
* ``round_to``: every group keeps a multiple of ``round_to`` channels (hardware-friendly
  widths); a group narrower than its floor rounded up keeps all its channels. Only whole
  groups are rounded: a slice a split hands on (G-Ghost's raw/cheap paths) may not be.
* Uniform rounding: a group of n positions keeps n·(1−ratio) rounded to the nearest, so a
  group's width never grows with the ratio and the kept MACs fall monotonically.
* ``fixed``: groups whose kept count is pinned while the ratio moves the others (the budget
  search pins the groups whose next channel would jump over the target; see budget.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from rscompress.errors import UserError
from rscompress.pruning.graph import GroupScore

MAX_PRUNING_RATIO = 0.9


def check_ratio(ratio: float, max_pruning_ratio: float = MAX_PRUNING_RATIO) -> None:
    """UserError unless 0 < max_pruning_ratio < 1 and 0 <= ratio <= max_pruning_ratio."""
    if not 0 < max_pruning_ratio < 1:
        raise UserError(f"max_pruning_ratio must be in (0, 1), got {max_pruning_ratio}")
    if not 0 <= ratio <= max_pruning_ratio:
        raise UserError(
            f"pruning ratio must be in [0, {max_pruning_ratio}] (the fraction of channels to "
            f"remove; no layer may lose more than {max_pruning_ratio:.0%}), got {ratio}"
        )


def _check_round_to(round_to: int | None) -> None:
    if round_to is None:
        return
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise UserError(f"round_to must be a positive integer, got {round_to!r}")


def _step(group: GroupScore, round_to: int | None) -> int:
    """Positions per ``round_to`` step: kept channels = ch_groups · positions must divide."""
    if round_to is None:
        return 1
    return round_to // math.gcd(round_to, group.ch_groups)


def _least(size: int, max_pruning_ratio: float) -> int:
    """Fewest of ``size`` channels a layer may keep: ⌈size·(1−max)⌉ and at least one."""
    return max(1, math.ceil(size * (1 - max_pruning_ratio) - 1e-9))


def _candidates(group: GroupScore, max_pruning_ratio: float) -> Tensor:
    """Positions the group may lose, lowest score first (ties: lowest index first).

    Protected: the best ``_least`` positions of the whole group and of each segment (the
    part of the group a split or concat hands to some layer), so that layer keeps its floor
    too: G-Ghost's cheap path sees only half of its stage's channels.
    """
    protected = torch.zeros(group.positions, dtype=torch.bool)
    for segment in (tuple(range(group.positions)), *group.segments):
        where = torch.tensor(segment, dtype=torch.long)
        best = torch.sort(group.scores[where], descending=True, stable=True).indices
        protected[where[best[: _least(len(segment), max_pruning_ratio)]]] = True
    order = torch.sort(group.scores, stable=True).indices
    return order[~protected[order]]


def _floor(group: GroupScore, n_candidates: int, step: int) -> int:
    """Fewest positions the group keeps: its protected ones, rounded up to a step, <= n."""
    return min(group.positions, step * math.ceil((group.positions - n_candidates) / step))


def _snap(keep: float, positions: int, step: int, floor: int) -> int:
    """Nearest multiple of ``step`` (all positions when above n), at least ``floor``."""
    return max(floor, min(positions, step * math.floor(keep / step + 0.5)))


def _global_remove(
    groups: Sequence[GroupScore],
    ratio: float,
    candidates: Sequence[Tensor],
    free: Sequence[bool],
    n_fixed_removed: int,
) -> list[int]:
    """Positions each group loses when the lowest-scored candidates of the network go first.

    The count is taken over all groups (so pinning a group does not change what the ratio
    means) minus what the pinned groups already lose; candidates come from free groups only.
    Removals are nested: a larger ratio removes a superset. Equal scores go cheapest first
    (``GroupScore.cost``), so the most of the zeros sparse training leaves fit the budget.
    """
    total = sum(g.positions for g in groups)
    n_remove = max(0, total - math.floor(total * (1 - ratio) + 0.5) - n_fixed_removed)
    scores, costs, owner = [], [], []
    for i, (group, cands, is_free) in enumerate(zip(groups, candidates, free, strict=True)):
        if is_free:
            scores.append(group.scores[cands])
            costs.append(torch.full((len(cands),), group.cost, dtype=torch.float64))
            owner.append(torch.full((len(cands),), i, dtype=torch.long))
    if not scores:
        return [0] * len(groups)
    all_scores, all_costs, all_owner = torch.cat(scores), torch.cat(costs), torch.cat(owner)
    # Lowest score first; among equal scores the cheapest position (GroupScore.cost), then
    # network order: a stable sort by cost, then a stable sort of that order by score.
    by_cost = torch.sort(all_costs, stable=True).indices
    lowest = by_cost[torch.sort(all_scores[by_cost], stable=True).indices][:n_remove]
    return torch.bincount(all_owner[lowest], minlength=len(groups)).tolist()


def keep_counts(
    groups: Sequence[GroupScore],
    ratio: float,
    *,
    global_pruning: bool = False,
    round_to: int | None = None,
    max_pruning_ratio: float = MAX_PRUNING_RATIO,
    fixed: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Positions each group keeps at this ratio, ``{root name: count}`` for every group."""
    check_ratio(ratio, max_pruning_ratio)
    _check_round_to(round_to)
    fixed = fixed or {}
    candidates = [_candidates(g, max_pruning_ratio) for g in groups]
    steps = [_step(g, round_to) for g in groups]
    floors = [_floor(g, len(c), s) for g, c, s in zip(groups, candidates, steps, strict=True)]
    free = [g.root not in fixed for g in groups]
    if global_pruning:
        n_fixed_removed = sum(g.positions - fixed[g.root] for g in groups if g.root in fixed)
        removed = _global_remove(groups, ratio, candidates, free, n_fixed_removed)
        wanted: list[float] = [g.positions - r for g, r in zip(groups, removed, strict=True)]
    else:
        wanted = [g.positions * (1 - ratio) for g in groups]
    return {
        g.root: _snap(w, g.positions, step, floor) if is_free else fixed[g.root]
        for g, w, step, floor, is_free in zip(groups, wanted, steps, floors, free, strict=True)
    }


def one_step_plans(
    groups: Sequence[GroupScore],
    keep: Mapping[str, int],
    *,
    round_to: int | None = None,
    max_pruning_ratio: float = MAX_PRUNING_RATIO,
) -> list[dict[str, int]]:
    """Every plan that differs from ``keep`` in one group by one ``round_to`` step of width,
    narrower or wider, within that group's floor and its full width (budget.py's last resort
    when no ratio lands within the band)."""
    plans = []
    for group in groups:
        step = _step(group, round_to)
        floor = _floor(group, len(_candidates(group, max_pruning_ratio)), step)
        n = keep[group.root]
        narrower = step * ((n - 1) // step)  # the next multiple below n (n may be the full width)
        wider = min(group.positions, step * (n // step + 1))
        plans += [{**keep, group.root: m} for m in (narrower, wider) if m != n and floor <= m <= group.positions]
    return plans


def removal_plan(
    groups: Sequence[GroupScore], keep: Mapping[str, int], max_pruning_ratio: float = MAX_PRUNING_RATIO
) -> dict[str, list[int]]:
    """``{root name: output channels to remove}`` for the groups that lose any.

    Within a group the lowest-scored unprotected positions go first (see _candidates);
    ``max_pruning_ratio`` must be the one ``keep`` was computed with.
    """
    plan = {}
    for group in groups:
        n_remove = group.positions - keep[group.root]
        if n_remove > 0:
            lowest = _candidates(group, max_pruning_ratio)[:n_remove]
            plan[group.root] = group.channels(lowest.tolist())
    return plan


def plan_pruning(
    groups: Sequence[GroupScore],
    ratio: float,
    *,
    global_pruning: bool = False,
    round_to: int | None = None,
    max_pruning_ratio: float = MAX_PRUNING_RATIO,
) -> dict[str, list[int]]:
    """The channels to remove at ``ratio``: removal_plan of keep_counts."""
    keep = keep_counts(
        groups,
        ratio,
        global_pruning=global_pruning,
        round_to=round_to,
        max_pruning_ratio=max_pruning_ratio,
    )
    return removal_plan(groups, keep, max_pruning_ratio)
