"""The pruning grids' bars from their records: the classifiers' (issues 4, 5, re-judged for
issue 31) and the detectors' (issue 33).

    python -m benchmarks tables      # the judged bars are tables of benchmarks/README.md

A bar holds only when every cell it compares has all of ``SEEDS``; until then it reads "open"
with the seeds it has, unless a complete cell already misses against a complete baseline (later
seeds can only raise the best baseline): that fails. Every comparison is of seed means, as the
issues state (``tables.summarise``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.tables import SCORES, speedup_ratio, summarise, task_of
from rscompress.pruning.budget import TOLERANCE

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
    score: float  # mean test score (top-1, or a detector's mAP@0.5), %
    delta: float  # mean of each seed's score minus its own parent's, points
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
    best = max(present, key=lambda c: c.score)
    measured = f"{cell.score:.2f} vs {best.method} {best.score:.2f} ({cell.score - best.score:+.2f})"
    if parent_floor is not None:
        measured += f"; Δ parent {cell.delta:+.2f}"
    done = [grid[k] for k in baselines if _complete(grid, k)]
    if _complete(grid, key) and (
        (parent_floor is not None and cell.delta < parent_floor)
        or (done and cell.score < max(c.score for c in done) + margin)
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


# Issue 33's bars for detectors: L1RR at 35 % of the MACs with at most 25 % of the params keeps
# mAP@0.5 within 1 point of its parent and is above slim and l1; every record is within 1 % of
# its MACs target and exports with ONNX parity; at 35 % the bs1 speedup turns at least 0.8 of
# the MAC reduction into time.
DETECTION_L1RR_BASELINES = ("slim", "l1")
SPEEDUP_RATIO = 0.8


def _every_record(grid: dict[tuple[str, float], Cell], planned: set[tuple[str, float]], missed: bool) -> str:
    """A bar on every record: fails once one misses, else open until every planned cell has
    every seed."""
    if missed:
        return "fails"
    if not planned:
        return "no cells planned"
    have = sum(min(grid[k].seeds, SEEDS) for k in planned if k in grid)
    return "holds" if have == SEEDS * len(planned) else f"open ({have}/{SEEDS * len(planned)} runs)"


def judge_detection(records: list[dict[str, Any]], dataset: str, planned: set[tuple[str, float]]) -> list[Verdict]:
    """Issue 33's bars on one dataset's detection records (mAP@0.5, seed means)."""
    grid = cells(records, dataset)
    mine = [r for r in records if r["dataset"] == dataset and r.get("target_macs") is not None]
    key = ("l1rr", 0.35)
    baselines = [(m, 0.35) for m in DETECTION_L1RR_BASELINES if (m, 0.35) in planned]
    measured, verdict = _against_baselines(grid, key, baselines, 0.0, parent_floor=-1.0)
    if key in grid:
        if measured == "no records":  # of the baselines only: say what L1RR has
            measured = f"{grid[key].score:.2f}; Δ parent {grid[key].delta:+.2f}"
        measured += f"; params kept {100 * grid[key].params_kept:.1f} %"
        if _complete(grid, key) and grid[key].params_kept > 0.25:
            verdict = "fails"
    out = [Verdict(dataset, "L1RR 35 %: ≤ 25 % params, ≥ parent − 1, above slim and l1", measured, verdict)]

    off = [r for r in mine if abs(r["macs_kept"] / r["target_macs"] - 1) > TOLERANCE]
    worst = max((abs(r["macs_kept"] / r["target_macs"] - 1) for r in mine), default=0.0)
    out.append(
        Verdict(
            dataset,
            "Every record within ±1 % of its MACs target",
            f"{len(mine) - len(off)}/{len(mine)} records; worst {100 * worst:.2f} % off" if mine else "no records",
            _every_record(grid, planned, bool(off)),
        )
    )
    broken = [r for r in mine if not r.get("onnx_parity")]
    out.append(
        Verdict(
            dataset,
            "ONNX parity for every pruned detector",
            f"{len(mine) - len(broken)}/{len(mine)} records" if mine else "no records",
            _every_record(grid, planned, bool(broken)),
        )
    )
    # Seed means of each method's ratio at 35 %: a cell fails only once it has every seed.
    timed = [row for row in summarise(mine) if row["target_macs"] == 0.35 and row["speedup"] is not None]
    ratios = {row["method"]: speedup_ratio(row) for row in timed}
    slow = [m for m, ratio in ratios.items() if ratio < SPEEDUP_RATIO and _complete(grid, (m, 0.35))]
    at_35 = {k for k in planned if k[1] == 0.35}
    out.append(
        Verdict(
            dataset,
            "bs1 speedup ÷ MACs reduction ≥ 0.8 at 35 %",
            ", ".join(f"{m} {ratio:.2f}" for m, ratio in sorted(ratios.items())) or "no records",
            _every_record(grid, at_35, bool(slow)),
        )
    )
    return out


def table_text(records: list[dict[str, Any]], planned: dict[str, set[tuple[str, float]]], task: str) -> str:
    """Every dataset's bars as one markdown table, those of the grid's ``task`` (``judge`` for
    classifiers, ``judge_detection`` for detectors); ``planned``: the grid's cells by dataset."""
    if records and task_of(records) != task:
        raise ValueError(f"{task} bars asked of {task_of(records)} records")
    rule = judge_detection if task == "detection" else judge
    rows = [v for dataset in sorted(planned) for v in rule(records, dataset, planned[dataset])]
    lines = [f"| dataset | bar | measured (test {SCORES[task][2]}, seed means) | verdict |", "|---|---|---|---|"]
    lines += [f"| {v.dataset} | {v.bar} | {v.measured} | {v.verdict} |" for v in rows]
    return "\n".join(lines)
