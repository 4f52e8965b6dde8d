"""L1RR's rate-controller study (issue 31, part 5; ``benchmarks/l1rr_controller.yaml``): how far
above the dense parent's val loss the sparse phase may go before the controller backs off.

Each arm is one ``--sparse-loss-tolerance``. The 0.1 arm is the suite's own ``l1rr`` cells
(pruning.jsonl, made with the default); the others are the study's records. The arms are
judged on val top-1 after fine-tuning (the split settings are chosen on); test top-1 is shown
beside it, never chosen on. The sparsity the phase reached, against the one it ran towards,
says whether the controller got where the budget needs it. Records made before the suite
wrote a figure (val top-1, the sparsity) lack it: the figure is then over the seeds that have it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from benchmarks.tables import points_mean_std
from rscompress.pruning.methods.sparse_training import SparsityConfig

DEFAULT_LABEL = "l1rr"  # the suite's l1rr cells: made with SparsityConfig's tolerance


def tolerance(record: dict[str, Any]) -> float:
    """The arm a record belongs to: its ``sparse_loss_tolerance`` option, else the default."""
    return float(record.get("options", {}).get("sparse_loss_tolerance", SparsityConfig.loss_tolerance))


def _sparsity(reached: list[dict[str, Any]]) -> str:
    """Mean (± std) sparsity the phases reached / the target they ran towards."""
    values = [r["sparsity"] for r in reached]
    if not values:
        return ""
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3f}{spread} / {statistics.fmean(r['target_sparsity'] for r in reached):.3f}"


def _of(some: list[dict[str, Any]], rs: list[dict[str, Any]]) -> str:
    """`` (n=k)`` when only k of an arm's records name a figure (older records lack it)."""
    return f" (n={len(some)})" if some and len(some) < len(rs) else ""


def arms(pruning: list[dict[str, Any]], study: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, budget, tolerance) the study ran, with the suite's default arm at
    the same dataset and budget; each over the seeds it has."""
    studied = {(r["dataset"], r["model"], r["target_macs"]) for r in study}
    default = [
        r for r in pruning if r["method"] == DEFAULT_LABEL and (r["dataset"], r["model"], r["target_macs"]) in studied
    ]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in [*default, *study]:
        groups[(r["dataset"], r["model"], r["target_macs"], tolerance(r))].append(r)
    rows = []
    for (dataset, model, target, tol), rs in sorted(groups.items()):
        reached = [r for r in rs if "sparsity" in r]
        validated = [r for r in rs if "val_top1" in r]
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "target_macs": target,
                "tolerance": tol,
                "seeds": sorted(r["seed"] for r in rs),
                "val_top1": (points_mean_std([r["val_top1"] for r in validated]) if validated else "")
                + _of(validated, rs),
                "top1": points_mean_std([r["top1"] for r in rs]),
                "delta": points_mean_std([r["top1"] - r["parent_top1"] for r in rs], signed=True),
                "params_kept": points_mean_std([r["params_kept"] for r in rs]),
                "sparsity": _sparsity(reached) + _of(reached, rs),
            }
        )
    return rows


def table_text(pruning: list[dict[str, Any]], study: list[dict[str, Any]]) -> str:
    if not study:
        return "No records yet: `python -m benchmarks suite benchmarks/l1rr_controller.yaml` writes them."
    lines = [
        "| dataset | MACs kept | tolerance | seeds | val top-1 (%) | test top-1 (%) | Δ parent (test) "
        "| params kept (%) | sparsity reached / target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in arms(pruning, study):
        seeds = ", ".join(str(s) for s in row["seeds"])
        lines.append(
            f"| {row['dataset']} | {row['target_macs'] * 100:g} % | {row['tolerance']:g} | {seeds} "
            f"| {row['val_top1']} | {row['top1']} | {row['delta']} | {row['params_kept']} | {row['sparsity']} |"
        )
    return "\n".join(lines)
