"""Prune to a compute budget: find the ratio whose pruned model keeps a given share of MACs/params.

The share is measured, never modelled: every candidate ratio is applied to a deep copy of the
parent and counted with ``count_macs_params`` (the project's one counter), so residual
couplings, depthwise layers, the protected classifier and ``round_to`` are all accounted for.

Search: the kept share f(r) falls as the ratio r grows, in steps (channels are whole). The
target is bracketed in [0, max_pruning_ratio] and the bracket shrinks until
|f(r)/target − 1| <= 1 %. Each trial point is the false-position estimate (interpolating
log f against log(1 − r), close to linear since a conv's MACs and params scale with
(1 − r)², with the Illinois correction against one-sided stalls); after two trials in a
row that did not halve the bracket comes a plain bisection step, so the bracket halves at
least every three trials. A plan already counted is not counted again.

Whole channels make steps, and at hard budgets one step can be wider than the ±1 % band:
on ResNet-18 at 32 px pruned to 5 % of its MACs, the 64-wide stream keeps ~13 channels and
one of them (stem conv included) is ~3 % of what is left. When the bracket closes on such a
jump, the jumping groups are pinned at their width just above the target and the search
continues on the remaining groups, whose channels are cheaper. The result is uniform (or
globally ranked) pruning up to a few channels in the pinned groups; ``pinned_groups`` in
the report says how many.

With ``round_to`` and many tied scores (the exact zeros of sparse training) that can still
miss: a slim phase on se_resnet18 left the kept share jumping from 0.098 to 0.108 at a 10 %
target however the groups were pinned. Then, from the closest plan, one group at a time is
made one ``round_to`` step narrower or wider, the move that lands closest kept, until the share
is within the band (``_nudge``; ``nudges`` in the report). Within each group the channels kept
are still the best-scored ones; only widths move, by a step each.

Scores are computed once, on the unpruned parent (graph.score_groups); candidates reuse
them. For Taylor the gradients therefore only need to exist once: ``calibration`` batches
are run through a copy of the parent (accumulate_gradients) and that copy is scored;
candidates are pruned from those scores and never read gradients, so the copies need none.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rscompress.errors import UserError
from rscompress.models.complexity import count_macs_params
from rscompress.pruning.graph import (
    GroupScore,
    Metric,
    apply_plan,
    build_graph,
    with_tie_costs,
)
from rscompress.pruning.importance import (
    CalibrationLoss,
    Importance,
    accumulate_gradients,
    needs_gradients,
)
from rscompress.pruning.plan import (
    MAX_PRUNING_RATIO,
    check_ratio,
    keep_counts,
    one_step_plans,
    removal_plan,
)
from rscompress.pruning.pruner import resolve_importance, score_model

TOLERANCE = 0.01  # |achieved / target − 1| allowed
MAX_TRIALS = 40  # candidates pruned and counted, at most
MAX_NUDGE_TRIALS = 200  # more candidates for _nudge, at most (each ~ms to tens of ms)
_RESOLUTION = 1e-6  # bracket width (in ratio) below which no channel count changes any more
_MAX_STEPS = 2000  # search steps incl. plans already counted (cheap); only a safety net


@dataclass(frozen=True)
class BudgetReport:
    """What prune_to_budget achieved, next to the parent's counts (DESIGN.md, Conventions)."""

    parent_macs: int
    parent_params: int
    macs: int
    params: int
    macs_kept: float  # macs / parent_macs
    params_kept: float
    ratio: float  # channel pruning ratio that produced the model (plan.py)
    pinned_groups: int  # groups the search held at a smaller ratio to land on target
    nudges: int  # one-step width changes made after the search to land on target (_nudge)
    target_metric: Metric | None  # None when the ratio was given
    target: float | None  # the requested kept fraction of target_metric
    iterations: int  # candidates pruned and counted
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"{name} must be a fraction of the parent's count to keep, 0 < F <= 1; got {value!r}")


def _target(
    target_macs: float | None, target_params: float | None, ratio: float | None
) -> tuple[Metric | None, float | None]:
    named = (("target_macs", target_macs), ("target_params", target_params), ("ratio", ratio))
    given = {k: v for k, v in named if v is not None}
    if len(given) != 1:
        raise UserError(
            "give exactly one of target_macs, target_params, ratio; got "
            + (", ".join(f"{k}={v}" for k, v in given.items()) or "none")
        )
    if target_macs is not None:
        _check_fraction("target_macs", target_macs)
        return "macs", float(target_macs)
    if target_params is not None:
        _check_fraction("target_params", target_params)
        return "params", float(target_params)
    return None, None


def _scores(
    scorer: nn.Module,
    importance: Importance,
    example: Tensor,
    calibration: Iterable[tuple[Tensor, Any]] | None,
    calibration_loss: CalibrationLoss | None,
) -> list[GroupScore]:
    if needs_gradients(importance) and calibration is not None:
        scorer = copy.deepcopy(scorer)  # the parent's own .grad stays as the caller left it
        accumulate_gradients(scorer, calibration, calibration_loss)
    return score_model(build_graph(scorer, example), importance, example)


def _architecture_mismatch(model: nn.Module, other: nn.Module) -> str | None:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    other_shapes = {k: tuple(v.shape) for k, v in other.state_dict().items()}
    if shapes == other_shapes:
        return None
    differ = sorted(k for k in shapes.keys() | other_shapes.keys() if shapes.get(k) != other_shapes.get(k))
    return f"{differ[0]} is {shapes.get(differ[0])} vs {other_shapes.get(differ[0])} ({len(differ)} tensors differ)"


def _x(r: float) -> float:
    # Kept MACs of a conv scale with (kept in)·(kept out) ≈ (1 − r)², params likewise, so
    # log f is close to linear in log(1 − r): interpolating there lands near the target.
    return math.log1p(-r)


@dataclass(frozen=True)
class _Point:
    ratio: float
    keep: dict[str, int]  # positions kept per group (plan.keep_counts)
    kept: float  # measured fraction of the parent's count


class _Trials:
    """Prunes and counts candidates, each distinct plan once, and keeps the closest one."""

    def __init__(
        self,
        build: Callable[[dict[str, int]], nn.Module],
        count: Callable[[nn.Module], tuple[int, int]],
        metric: str,
        parent_count: int,
        target: float,
    ) -> None:
        self._build, self._count = build, count
        self._index = 0 if metric == "macs" else 1
        self._parent_count, self._target = parent_count, target
        self._cache: dict[tuple[int, ...], float] = {}
        self.best: tuple[_Point, nn.Module, tuple[int, int]] | None = None
        self.evaluated = 0

    def error(self, point: _Point) -> float:
        return abs(point.kept / self._target - 1)

    def done(self) -> bool:
        return self.best is not None and self.error(self.best[0]) <= TOLERANCE

    def measure(self, ratio: float, keep: dict[str, int]) -> _Point:
        key = tuple(keep.values())
        if key in self._cache:
            return _Point(ratio, keep, self._cache[key])
        model = self._build(keep)
        counts = self._count(model)
        self.evaluated += 1
        point = _Point(ratio, keep, counts[self._index] / self._parent_count)
        self._cache[key] = point.kept
        if self.best is None or self.error(point) < self.error(self.best[0]):
            self.best = (point, model, counts)
        return point


def _search(
    trials: _Trials,
    keep_at: Callable[[float, dict[str, int]], dict[str, int]],
    target: float,
    max_ratio: float,
) -> tuple[int, bool]:
    """Bracket the target between ratios and shrink the bracket.

    Returns (groups pinned, whether the most pruning allowed already keeps more than target).

    When the bracket closes on a jump (one more channel of some group goes from above the
    ±1 % band to below it), the groups that jump are pinned at their last width above the
    target and the search goes on with the other groups only, whose channels are finer.
    """
    fixed: dict[str, int] = {}
    if abs(1 / target - 1) <= TOLERANCE:  # the parent itself is on target
        trials.measure(0.0, keep_at(0.0, fixed))
        return 0, False
    lo = _Point(0.0, keep_at(0.0, fixed), 1.0)  # r = 0 keeps everything: no need to count it
    hi = trials.measure(max_ratio, keep_at(max_ratio, fixed))
    if hi.kept > target:
        return 0, True
    log_target = math.log(target)
    lo_g, hi_g = -log_target, math.log(hi.kept) - log_target  # > 0 and <= 0 while bracketing
    side, slow = 0, 0
    for _ in range(_MAX_STEPS):
        if trials.done() or trials.evaluated >= MAX_TRIALS or hi.kept > target:
            break
        width = hi.ratio - lo.ratio
        if width <= _RESOLUTION:
            jumping = {root: n for root, n in lo.keep.items() if n != hi.keep[root]}
            fixed.update(jumping)
            if not jumping or len(fixed) == len(lo.keep):
                break
            hi = trials.measure(max_ratio, keep_at(max_ratio, fixed))
            hi_g, side, slow = math.log(hi.kept) - log_target, 0, 0
            continue
        if slow >= 2:
            r = lo.ratio + width / 2
        else:  # Illinois false position on log f over log(1 − r), kept off the ends
            t = lo_g / (lo_g - hi_g)
            r = 1 - math.exp(_x(lo.ratio) + (_x(hi.ratio) - _x(lo.ratio)) * min(max(t, 0.05), 0.95))
        point = trials.measure(r, keep_at(r, fixed))
        g = math.log(point.kept) - log_target
        if g > 0:
            lo, lo_g = point, g
            hi_g = hi_g / 2 if side > 0 else hi_g  # Illinois: a stale end pulls half as hard
            side = 1
        else:
            hi, hi_g = point, g
            lo_g = lo_g / 2 if side < 0 else lo_g
            side = -1
        # Two steps in a row that did not halve the bracket: bisect next, so the bracket at
        # least halves every three steps whatever the shape of f.
        slow = slow + 1 if hi.ratio - lo.ratio > width / 2 else 0
    return len(fixed), False


def _nudge(trials: _Trials, neighbours: Callable[[dict[str, int]], list[dict[str, int]]]) -> int:
    """Greedy one-step width changes from the closest plan until it is within the band, no
    move brings it closer, or MAX_NUDGE_TRIALS more candidates are spent. Returns the moves."""
    assert trials.best is not None  # the search measured at least one plan
    budget, moves = trials.evaluated + MAX_NUDGE_TRIALS, 0
    while not trials.done() and trials.evaluated < budget:
        start = trials.best[0]
        for keep in neighbours(start.keep):
            trials.measure(start.ratio, keep)
            if trials.done() or trials.evaluated >= budget:
                break
        if trials.best[0] is start:
            break
        moves += 1
    return moves


def prune_to_budget(
    model: nn.Module,
    importance: str | Importance,
    img_size: int,
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    ratio: float | None = None,
    global_pruning: bool = False,
    round_to: int | None = None,
    calibration: Iterable[tuple[Tensor, Any]] | None = None,
    max_pruning_ratio: float = MAX_PRUNING_RATIO,
    scorer: nn.Module | None = None,
    calibration_loss: CalibrationLoss | None = None,
) -> tuple[nn.Module, BudgetReport]:
    """A pruned copy of ``model`` that keeps ``target_macs`` (or ``target_params``) of its count.

    Exactly one of ``target_macs``, ``target_params`` (fractions to keep, 0 < F <= 1) and
    ``ratio`` (channels to remove, as in ``prune``) must be given. ``model`` itself is not
    changed. ``calibration``: (images, targets) batches whose summed loss gradients feed
    gradient criteria (taylor; ``calibration_loss``, default the cross-entropy: see
    importance.accumulate_gradients); without it such a criterion reads the gradients already
    on ``model``. Raises UserError when no plan lands within ±1 % of the target, not even
    after ``_nudge`` (e.g. a very coarse ``round_to``), naming the closest share reached.
    ``scorer``: a model of the same architecture whose weights the criterion reads instead of
    ``model``'s (an SE parent's weights as trained, see select.py); the channels it ranks low
    go from ``model``.
    """
    start = time.perf_counter()
    metric, target = _target(target_macs, target_params, ratio)
    check_ratio(0.0 if ratio is None else ratio, max_pruning_ratio)
    imp = resolve_importance(importance)
    param = next(model.parameters())
    example = torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)
    parent_macs, parent_params = count_macs_params(model, img_size)
    if scorer is None:
        scorer = model
    elif (mismatch := _architecture_mismatch(model, scorer)) is not None:
        raise ValueError(f"scorer must have model's architecture: {mismatch}")
    scores = _scores(scorer, imp, example, calibration, calibration_loss)
    if global_pruning:
        scores = with_tie_costs(model, example, scores, metric or "macs")

    def keep_at(r: float, fixed: dict[str, int]) -> dict[str, int]:
        return keep_counts(
            scores,
            r,
            global_pruning=global_pruning,
            round_to=round_to,
            max_pruning_ratio=max_pruning_ratio,
            fixed=fixed,
        )

    def build(keep: dict[str, int]) -> nn.Module:
        pruned = copy.deepcopy(model)
        apply_plan(build_graph(pruned, example), removal_plan(scores, keep, max_pruning_ratio))
        return pruned

    parent_count = parent_params if metric == "params" else parent_macs
    count = lambda m: count_macs_params(m, img_size)  # noqa: E731
    trials = _Trials(build, count, metric or "macs", parent_count, target or 1.0)
    nudges = 0
    if metric is None:
        assert ratio is not None  # _target: no metric means the ratio was given
        trials.measure(float(ratio), keep_at(float(ratio), {}))
        pinned = 0
    else:
        assert target is not None  # _target: every metric comes with its target
        pinned, at_floor = _search(trials, keep_at, target, max_pruning_ratio)
        if not trials.done() and not at_floor:
            nudges = _nudge(
                trials,
                lambda keep: one_step_plans(scores, keep, round_to=round_to, max_pruning_ratio=max_pruning_ratio),
            )
        if not trials.done():
            assert trials.best is not None  # _search measured at least one ratio
            point = trials.best[0]
            raise UserError(_unreachable(metric, target, point, at_floor, round_to, max_pruning_ratio))
    assert trials.best is not None  # both branches measured at least one ratio
    point, pruned, (macs, params) = trials.best
    report = BudgetReport(
        parent_macs=parent_macs,
        parent_params=parent_params,
        macs=macs,
        params=params,
        macs_kept=macs / parent_macs,
        params_kept=params / parent_params,
        ratio=point.ratio,
        pinned_groups=pinned,
        nudges=nudges,
        target_metric=metric,
        target=target,
        iterations=trials.evaluated,
        seconds=time.perf_counter() - start,
    )
    return pruned, report


def _unreachable(
    metric: str, target: float, closest: _Point, at_floor: bool, round_to: int | None, max_ratio: float
) -> str:
    if at_floor:
        limits = f"max_pruning_ratio={max_ratio}" + (f", round_to={round_to}" if round_to else "")
        why = f"that is the most pruning allowed ({limits})"
    elif round_to:
        why = f"round_to={round_to} allows only coarse steps in layer widths"
    else:
        why = "no combination of whole channels lands closer"
    return (
        f"target_{metric}={target} cannot be reached within ±{TOLERANCE:.0%}: the closest "
        f"achievable fraction of the parent's {metric} is {closest.kept:.4f} "
        f"(ratio {closest.ratio:.4f}); {why}"
    )
