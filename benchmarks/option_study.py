"""A study of one prune option, chosen on val (issue 31): a study file runs one method's cells
with the option at other values (``benchmarks/l1rr_controller.yaml``: L1RR's controller
tolerance; ``benchmarks/slim_rate.yaml``: network slimming's L1 rate).

Each arm is one value of the option. The default arm is the suite's own cells of that method
(pruning.jsonl, made without the option); the others are the study's records. A run that is in
both (an arm at the value that became the default) counts once. The arms are judged on val
top-1 after fine-tuning (the split settings are chosen on); test top-1 is shown beside it,
never chosen on. For sparse-training methods the sparsity the phase reached, against the one it
ran towards, says whether it got where the budget needs it. Records made before the suite wrote
a figure (val top-1, the sparsity) lack it: the figure is then over the seeds that have it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from benchmarks.tables import points_mean_std
from rscompress.pruning.methods.slim import Slim
from rscompress.pruning.methods.sparse_training import SparsityConfig

# (method, option): the value a suite cell that does not set the option runs at.
DEFAULTS: dict[tuple[str, str], float] = {
    ("l1rr", "sparse_loss_tolerance"): SparsityConfig.loss_tolerance,
    ("slim", "sparse_rate"): Slim.default_rate,
}


def studied(cells: list[dict[str, Any]], shared: dict[str, Any]) -> tuple[str, str]:
    """(method, option) of a study file's cells: one method, one option beyond ``shared`` (the
    options every cell of the suite gets); ValueError otherwise."""
    methods = {c["method"] for c in cells}
    options = {k for c in cells for k in c.get("options", {}) if k not in shared}
    if len(methods) != 1 or len(options) != 1:
        varied = f"{sorted(options)} of {sorted(methods)}"
        raise ValueError(f"a study varies one option of one method; these cells vary {varied}")
    key = (methods.pop(), options.pop())
    if key not in DEFAULTS:
        raise ValueError(f"no default known for {key[1]} of {key[0]}: add it to option_study.DEFAULTS")
    return key


def arm_value(record: dict[str, Any], method: str, option: str) -> float:
    """The arm a record belongs to: its value of ``option``, else the method's default."""
    return float(record.get("options", {}).get(option, DEFAULTS[(method, option)]))


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


def arms(pruning: list[dict[str, Any]], study: list[dict[str, Any]], method: str, option: str) -> list[dict[str, Any]]:
    """One row per (dataset, budget, value) the study ran, with the suite's default arm at the
    same dataset and budget; each over the seeds it has, a seed's run counted once."""
    cells = {(r["dataset"], r["model"], r["target_macs"]) for r in study}
    default = [r for r in pruning if r["method"] == method and (r["dataset"], r["model"], r["target_macs"]) in cells]
    groups: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in [*default, *study]:  # the study's record of a seed wins: it names the value
        groups[(r["dataset"], r["model"], r["target_macs"], arm_value(r, method, option))][r["seed"]] = r
    rows = []
    for (dataset, model, target, value), by_seed in sorted(groups.items()):
        rs = list(by_seed.values())
        reached = [r for r in rs if "sparsity" in r]
        validated = [r for r in rs if "val_top1" in r]
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "target_macs": target,
                "value": value,
                "default": value == DEFAULTS[(method, option)],
                "seeds": sorted(by_seed),
                "val_top1": (points_mean_std([r["val_top1"] for r in validated]) if validated else "")
                + _of(validated, rs),
                "top1": points_mean_std([r["top1"] for r in rs]),
                "delta": points_mean_std([r["top1"] - r["parent_top1"] for r in rs], signed=True),
                "params_kept": points_mean_std([r["params_kept"] for r in rs]),
                "sparsity": _sparsity(reached) + _of(reached, rs),
            }
        )
    return rows


def table_text(pruning: list[dict[str, Any]], study: list[dict[str, Any]], method: str, option: str) -> str:
    if not study:
        return "No records yet: running the study file writes them."
    lines = [
        f"| dataset | MACs kept | {option} | seeds | val top-1 (%) | test top-1 (%) | Δ parent (test) "
        "| params kept (%) | sparsity reached / target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in arms(pruning, study, method, option):
        seeds = ", ".join(str(s) for s in row["seeds"])
        value = f"{row['value']:g}" + (" (default)" if row["default"] else "")
        lines.append(
            f"| {row['dataset']} | {row['target_macs'] * 100:g} % | {value} | {seeds} "
            f"| {row['val_top1']} | {row['top1']} | {row['delta']} | {row['params_kept']} | {row['sparsity']} |"
        )
    return "\n".join(lines)
