"""The pruning grid's bars (issues 4, 5, re-judged for issue 31) from its records.

    python -m benchmarks tables      # the judged bars are a table of benchmarks/README.md

A bar holds only when every cell it compares has all of ``SEEDS``; until then it reads "open"
with the seeds it has, unless a complete cell already misses against a complete baseline (later
seeds can only raise the best baseline): that fails. Every comparison is of seed means, as the
issues state (``tables.summarise``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.tables import summarise

SEEDS = 3
# One-shot criteria RemoteTrimmer is measured against, and those of them Torch-Pruning ships
# (NAS's bar names Torch-Pruning's baselines).
BASELINES = ("l1", "l2", "bn", "fpgm", "hrank")
TORCH_PRUNING_BASELINES = ("l1", "l2", "bn", "fpgm")
REMOTETRIMMER = "remotetrimmer-aml+ce"


@dataclass(frozen=True)
class Cell:
    method: str
    target: float
    seeds: int
    top1: float  # mean test top-1, %
    delta: float  # mean of each seed's top-1 minus its own parent's, points
    params_kept: float


@dataclass(frozen=True)
class Verdict:
    dataset: str
    bar: str
    measured: str
    verdict: str  # "holds", "fails" or "open (...)"


def cells(records: list[dict[str, Any]], dataset: str) -> dict[tuple[str, float], Cell]:
    """Seed means of one dataset's MACs-target cells, by (method, target)."""
    return {
        (row["method"], row["target_macs"]): Cell(
            row["method"],
            row["target_macs"],
            row["seeds"],
            100 * row["score"],
            100 * row["delta"],
            row["params_kept"],
        )
        for row in summarise(records)
        if row["dataset"] == dataset and row["target_macs"] is not None
    }


def _open(grid: dict[tuple[str, float], Cell], keys: list[tuple[str, float]]) -> str:
    """ "open (...)" naming the cells short of SEEDS seeds; "" when all have them."""
    short = [
        f"{method} {100 * target:g} % {grid[(method, target)].seeds if (method, target) in grid else 0}/{SEEDS}"
        for method, target in keys
        if (method, target) not in grid or grid[(method, target)].seeds < SEEDS
    ]
    return f"open (seeds: {', '.join(short)})" if short else ""


def _complete(grid: dict[tuple[str, float], Cell], key: tuple[str, float]) -> bool:
    return key in grid and grid[key].seeds >= SEEDS


def _against_baselines(
    grid: dict[tuple[str, float], Cell],
    key: tuple[str, float],
    baselines: list[tuple[str, float]],
    margin: float,
    parent_floor: float | None = None,
) -> tuple[str, str]:
    """(measured, verdict) of "cell ``key`` ≥ the best of ``baselines`` + ``margin`` (and, with
    ``parent_floor``, Δ parent ≥ it)". A complete cell that already misses against a complete
    baseline fails for good: the seeds still to come can only raise the best baseline."""
    cell = grid.get(key)
    present = [grid[k] for k in baselines if k in grid]
    if cell is None or not present:
        return "no records", _open(grid, [key, *baselines])
    best = max(present, key=lambda c: c.top1)
    measured = f"{cell.top1:.2f} vs {best.method} {best.top1:.2f} ({cell.top1 - best.top1:+.2f})"
    if parent_floor is not None:
        measured += f"; Δ parent {cell.delta:+.2f}"
    done = [grid[k] for k in baselines if _complete(grid, k)]
    if _complete(grid, key) and (
        (parent_floor is not None and cell.delta < parent_floor)
        or (done and cell.top1 < max(c.top1 for c in done) + margin)
    ):
        return measured, "fails"
    return measured, _open(grid, [key, *baselines]) or "holds"


def judge(records: list[dict[str, Any]], dataset: str, planned: set[tuple[str, float]]) -> list[Verdict]:
    """The bars on one dataset's records; ``planned``: the (method, MACs target) cells the grid
    runs, so a baseline not yet run keeps a bar open instead of leaving the comparison."""
    grid = cells(records, dataset)

    def baselines(methods: tuple[str, ...], target: float) -> list[tuple[str, float]]:
        return [(m, target) for m in methods if (m, target) in planned]

    # RemoteTrimmer at 10 %: >= best baseline + 2 points, and <= 1.5 points below its parent.
    out = [
        Verdict(
            dataset,
            "RemoteTrimmer 10 %: ≥ best baseline + 2, ≥ parent − 1.5",
            *_against_baselines(grid, (REMOTETRIMMER, 0.1), baselines(BASELINES, 0.1), 2.0, parent_floor=-1.5),
        )
    ]
    # NAS at 35 % and 10 %: >= the best Torch-Pruning baseline at the same budget.
    for target in (0.35, 0.1):
        out.append(
            Verdict(
                dataset,
                f"NAS {100 * target:g} %: ≥ best Torch-Pruning baseline",
                *_against_baselines(grid, ("nas", target), baselines(TORCH_PRUNING_BASELINES, target), 0.0),
            )
        )

    # L1RR at 35 % of the MACs with <= 25 % of the params: within 0.5 points of its parent.
    l1rr = grid.get(("l1rr", 0.35))
    measured, verdict = "no records", _open(grid, [("l1rr", 0.35)])
    if l1rr is not None:
        measured = f"Δ parent {l1rr.delta:+.2f}, params kept {100 * l1rr.params_kept:.1f} %"
        verdict = verdict or ("holds" if l1rr.delta >= -0.5 and l1rr.params_kept <= 0.25 else "fails")
    out.append(Verdict(dataset, "L1RR 35 %: ≤ 25 % params, ≥ parent − 0.5", measured, verdict))
    return out


def table_text(records: list[dict[str, Any]], planned: dict[str, set[tuple[str, float]]]) -> str:
    """Every dataset's bars as one markdown table; ``planned``: the grid's cells by dataset."""
    rows = [v for dataset in sorted(planned) for v in judge(records, dataset, planned[dataset])]
    lines = ["| dataset | bar | measured (test top-1, seed means) | verdict |", "|---|---|---|---|"]
    lines += [f"| {v.dataset} | {v.bar} | {v.measured} | {v.verdict} |" for v in rows]
    return "\n".join(lines)
