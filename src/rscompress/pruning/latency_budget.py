"""Prune to a measured latency: find the MACs share whose pruned model runs at a target share
of the parent's latency (``--target-latency-ms``, ``--target-speedup``).

Latency is not counted but measured, so each trial prunes the parent to a MACs share with
the exact MACs search (budget.prune_to_budget, through the method) and hands the candidate
to ``measure``, which times it against the parent and returns the latency ratio with its
standard error. The ratio falls with the MACs share but not in proportion (fixed per-call
costs, memory-bound layers), so the search is a secant on log ratio over log share,
bracketed once both sides are seen, starting from the proportional guess. It stops at the
first candidate within ``tolerance`` of the target, or after ``MAX_TRIALS`` with the closest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from torch import nn

from rscompress.errors import UserError

TOLERANCE = 0.05  # |achieved / target − 1| the search stops at (the bar re-measures to ±10 %)
MAX_TRIALS = 8
MIN_SHARE = 0.02  # the smallest MACs share tried: below it a CNN is mostly its stem and head
# A measurement whose ratio is less certain than this (relative standard error) was hit by load
# that came and went while it ran; it is taken again once and the steadier one kept, so that one
# outlier does not send the secant off (seen on a loaded 2-core machine: a ratio of 3.2, ±24 %).
UNSTEADY = 0.05
# Channel multiples ``--round-to auto`` times (1: unrounded). Which is fastest depends on the
# CPU's vector width and the runtime's kernels (issue 34: 16 on this AVX-512 machine at 10 %).
AUTO_MULTIPLES = (1, 8, 16, 32)


@dataclass(frozen=True)
class Measured:
    """A candidate's latency as a share of the parent's, timed interleaved with it."""

    ratio: float  # candidate median / parent median
    spread: float  # standard error of ``ratio``, relative (0.01: ±1 %)
    candidate_ms: float
    parent_ms: float
    repeats: int  # timed calls of each model


class LatencyMeter(Protocol):
    """Times candidates against one parent (deploy/latency_probe.LatencyProbe)."""

    threads: int

    @property
    def precision(self) -> str: ...

    def parent_ms(self) -> float: ...

    def __call__(self, candidate: nn.Module) -> Measured: ...


@dataclass
class LatencyReport:
    """What the search did, for prune.json and metrics.json."""

    target_ratio: float  # latency share of the parent aimed at
    ratio: float  # achieved, as measured
    spread: float
    macs_share: float  # the MACs share that gave it (of the model the method prunes)
    trials: list[dict[str, float]] = field(default_factory=list)  # macs_share, ratio, spread per trial
    seconds: float = 0.0

    @property
    def error(self) -> float:
        return abs(self.ratio / self.target_ratio - 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error": self.error, "within_tolerance": self.error <= TOLERANCE}


def _next_share(
    lo: tuple[float, float] | None, hi: tuple[float, float] | None, last: list[tuple[float, float]], target: float
) -> float:
    """The next MACs share: the secant of log ratio on log share between the bracket's ends
    (``lo``: faster than the target, ``hi``: slower), or through the last two trials while one
    side is unseen, kept to a quarter/four times the last share per step."""
    if lo is not None and hi is not None:
        a, b = lo, hi
    elif len(last) >= 2:
        a, b = last[-2], last[-1]
    else:
        a = b = last[-1]
    share, ratio = last[-1]
    if a[0] != b[0] and a[1] != b[1]:
        slope = (math.log(b[1]) - math.log(a[1])) / (math.log(b[0]) - math.log(a[0]))
        slope = min(max(slope, 0.2), 2.0)  # a noisy pair must not send the step off
    else:
        slope = 1.0  # latency proportional to MACs: the first guess
    step = math.exp((math.log(target) - math.log(ratio)) / slope)
    proposal = share * min(max(step, 0.25), 4.0)
    if lo is not None and hi is not None:  # stay strictly inside the bracket
        low, high = sorted((lo[0], hi[0]))
        proposal = min(max(proposal, low + 0.1 * (high - low)), high - 0.1 * (high - low))
    return min(max(proposal, MIN_SHARE), 1.0)


def search_latency(
    prune_at: Callable[[float], nn.Module],
    measure: Callable[[nn.Module], Measured],
    target_ratio: float,
    *,
    describe_target: str,
) -> tuple[nn.Module, LatencyReport]:
    """The candidate ``prune_at(share)`` (pruned to that MACs share) whose ``measure`` is
    closest to ``target_ratio`` of the parent's latency. UserError when even ``MIN_SHARE``
    of the MACs runs slower than the target; ``describe_target`` names it there."""
    if not 0 < target_ratio < 1:
        raise UserError(
            f"{describe_target} asks for {target_ratio:.0%} of the parent's latency; it must be below 100 %"
        )
    start = time.perf_counter()
    report = LatencyReport(target_ratio=target_ratio, ratio=math.inf, spread=0.0, macs_share=1.0)
    best: nn.Module | None = None
    lo = hi = None  # (share, ratio) faster / slower than the target
    tried: list[tuple[float, float]] = []
    share = max(target_ratio, MIN_SHARE)
    for _ in range(MAX_TRIALS):
        candidate = prune_at(share)
        m = measure(candidate)
        if m.spread > UNSTEADY:
            m = min(m, measure(candidate), key=lambda taken: taken.spread)
        report.trials.append({"macs_share": share, "ratio": m.ratio, "spread": m.spread, "ms": m.candidate_ms})
        tried.append((share, m.ratio))
        if abs(m.ratio / target_ratio - 1) < report.error or best is None:
            best, report.ratio, report.spread, report.macs_share = candidate, m.ratio, m.spread, share
        if report.error <= TOLERANCE:
            break
        if m.ratio > target_ratio:
            hi = (share, m.ratio) if hi is None or share < hi[0] else hi
            if share <= MIN_SHARE:
                raise UserError(
                    f"{describe_target} cannot be reached: at {MIN_SHARE:.0%} of the MACs the model still runs at "
                    f"{m.ratio:.0%} of the parent's latency ({m.candidate_ms:.3g} vs {m.parent_ms:.3g} ms); "
                    "what is left is fixed cost (stem, head, per-call overhead)"
                )
        else:
            lo = (share, m.ratio) if lo is None or share > lo[0] else lo
        following = _next_share(lo, hi, tried, target_ratio)
        if any(abs(following - s) < 1e-4 for s, _ in tried):
            break  # the bracket has closed on a step of whole channels
        share = following
    assert best is not None  # MAX_TRIALS >= 1
    report.seconds = time.perf_counter() - start
    return best, report
