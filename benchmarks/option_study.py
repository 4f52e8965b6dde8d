"""A study of one setting, chosen on val (issues 31, 33): a study file runs one method's cells
with the setting at other values (``benchmarks/l1rr_controller.yaml``: L1RR's controller
tolerance; ``benchmarks/slim_rate.yaml``: network slimming's L1 rate;
``benchmarks/detection_l1rr_hold_scale.yaml``: L1RR's held layer scale on detectors, and
``benchmarks/detection_l1rr_hold_scale_rate.yaml``: its starting rate when held;
``benchmarks/detection_finetune_lr.yaml``: the detectors' fine-tuning rate;
``benchmarks/finetune_loss.yaml``: the fine-tuning loss after pruning).

The setting is a prune option (a cell's ``options``), the fine-tuning peak rate (a cell's
``finetune_lr``, ``FINETUNE_LR``) or the fine-tuning loss (a cell's ``loss``, ``LOSS``). Each
arm is one value of it. The default arm is the paired suite's own cells of that method (made
without the setting); the others are the study's records. A run that is in both (an arm at the
value that became the default) counts once. The arms are judged on the task's val score after
fine-tuning (the split settings are chosen on);
the test score is shown beside it, never chosen on. For sparse-training methods the sparsity the
phase reached, against the one it ran towards, says whether it got where the budget needs it.
Records made before the suite wrote a figure (the val score, the sparsity) lack it: the figure
is then over the seeds that have it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from benchmarks.suite import Cell
from benchmarks.tables import SCORES, points_mean_std, task_of
from rscompress.pruning.methods.l1rr import L1RR
from rscompress.pruning.methods.slim import Slim
from rscompress.pruning.methods.sparse_training import SparsityConfig

# (method, option): the value a suite cell that does not set the option runs at.
DEFAULTS: dict[tuple[str, str], float] = {
    ("l1rr", "sparse_loss_tolerance"): SparsityConfig.loss_tolerance,
    ("slim", "sparse_rate"): Slim.default_rate,
    ("l1rr", "sparse_hold_scale"): SparsityConfig.hold_layer_scale,
    ("l1rr", "sparse_rate"): L1RR.default_rate,
}
# The fine-tuning peak rate: a cell's ``finetune_lr`` and a record's field, not a prune option;
# its default is the paired suite's recipe's, which every method's cells share.
FINETUNE_LR = "finetune_lr"
# The fine-tuning loss: a cell's and a record's ``loss``; its default is a suite cell's.
LOSS = "loss"
DEFAULT_LOSS: str = Cell.model_fields[LOSS].default

Value = float | str  # an arm's value of the setting: a number (a switch is a bool), or a loss's name


def settings(cells: list[Cell]) -> list[dict[str, Any]]:
    """What of each of a study file's cells ``studied`` reads."""
    return [{"method": c.method, "options": c.options, FINETUNE_LR: c.finetune_lr, LOSS: c.loss} for c in cells]


def studied(cells: list[dict[str, Any]], shared: dict[str, Any]) -> tuple[str, str]:
    """(method, option) of a study file's cells (each ``method``, ``options`` and, where set,
    ``finetune_lr`` and ``loss``): one method, one setting beyond ``shared`` (the options every
    cell of the suite gets); ValueError otherwise."""
    methods = {c["method"] for c in cells}
    options = {k for c in cells for k in c.get("options", {}) if k not in shared}
    options |= {FINETUNE_LR for c in cells if c.get(FINETUNE_LR) is not None}
    options |= {LOSS for c in cells if c.get(LOSS, DEFAULT_LOSS) != DEFAULT_LOSS}
    if len(methods) != 1 or len(options) != 1:
        varied = f"{sorted(options)} of {sorted(methods)}"
        raise ValueError(f"a study varies one option of one method; these cells vary {varied}")
    key = (methods.pop(), options.pop())
    if key[1] not in (FINETUNE_LR, LOSS) and key not in DEFAULTS:
        raise ValueError(f"no default known for {key[1]} of {key[0]}: add it to option_study.DEFAULTS")
    return key


def default_value(method: str, option: str, finetune_lr: float) -> Value:
    """The value the paired suite's cells of ``method`` run ``option`` at (``finetune_lr``: the
    suite's fine-tuning rate)."""
    if option == LOSS:
        return DEFAULT_LOSS
    return finetune_lr if option == FINETUNE_LR else DEFAULTS[(method, option)]


def arm_value(record: dict[str, Any], option: str, default: Value) -> Value:
    """The arm a record belongs to: its value of ``option``, else the default (a prune option a
    cell leaves unset runs at the method's default)."""
    if option == LOSS:
        return str(record.get(LOSS) or default)
    given = record.get(FINETUNE_LR) if option == FINETUNE_LR else record.get("options", {}).get(option)
    value = default if given is None else given
    return value if isinstance(value, bool) else float(value)


def shown(value: Value) -> str:
    if isinstance(value, bool):  # a switch (sparse_hold_scale)
        return "on" if value else "off"
    return value if isinstance(value, str) else f"{value:g}"


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


def arms(
    suite: list[dict[str, Any]], study: list[dict[str, Any]], method: str, option: str, default: Value
) -> list[dict[str, Any]]:
    """One row per (dataset, budget, value) the study ran, with the suite's default arm at the
    same dataset and budget; each over the seeds it has, a seed's run counted once. Scores are
    the task's (``tables.SCORES``): ``val``, ``score`` (test) and ``delta`` (test − parent)."""
    cells = {(r["dataset"], r["model"], r["target_macs"]) for r in study}
    # A paired study's records carry their label as method; the method they ran is their criterion.
    ours = [
        r
        for r in suite
        if r.get("criterion", r["method"]) == method and (r["dataset"], r["model"], r["target_macs"]) in cells
    ]
    if option == FINETUNE_LR:  # a record from before records named their rate may have run at another
        ours = [r for r in ours if FINETUNE_LR in r]
    key, parent_key, _ = SCORES[task_of(study)]
    groups: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in [*ours, *study]:  # the study's record of a seed wins: it names the value
        groups[(r["dataset"], r["model"], r["target_macs"], arm_value(r, option, default))][r["seed"]] = r
    rows = []
    for (dataset, model, target, value), by_seed in sorted(groups.items()):
        rs = list(by_seed.values())
        reached = [r for r in rs if "sparsity" in r]
        validated = [r for r in rs if f"val_{key}" in r]
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "target_macs": target,
                "value": value,
                "default": value == default,
                "seeds": sorted(by_seed),
                "val": (points_mean_std([r[f"val_{key}"] for r in validated]) if validated else "")
                + _of(validated, rs),
                "score": points_mean_std([r[key] for r in rs]),
                "delta": points_mean_std([r[key] - r[parent_key] for r in rs], signed=True),
                "params_kept": points_mean_std([r["params_kept"] for r in rs]),
                "sparsity": _sparsity(reached) + _of(reached, rs),
            }
        )
    return rows


def table_text(
    suite: list[dict[str, Any]], study: list[dict[str, Any]], method: str, option: str, default: Value
) -> str:
    if not study:
        return "No records yet: running the study file writes them."
    name = SCORES[task_of(study)][2]
    lines = [
        f"| dataset | MACs kept | {option} | seeds | val {name} (%) | test {name} (%) | Δ parent (test) "
        "| params kept (%) | sparsity reached / target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in arms(suite, study, method, option, default):
        seeds = ", ".join(str(s) for s in row["seeds"])
        value = shown(row["value"]) + (" (default)" if row["default"] else "")
        lines.append(
            f"| {row['dataset']} | {row['target_macs'] * 100:g} % | {value} | {seeds} "
            f"| {row['val']} | {row['score']} | {row['delta']} | {row['params_kept']} | {row['sparsity']} |"
        )
    return "\n".join(lines)
