"""Markdown tables (mean ± std over seeds) and plots from benchmark records."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from benchmarks.records import read_records


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def points(value: float, signed: bool = False) -> str:
    """A fraction as points (0.8524 → "85.24"; signed: "+85.24")."""
    # + 0.0: a mean of float noise around zero reads 0.00, not -0.00
    return f"{round(100 * value, 2) + 0.0:{'+' if signed else ''}.2f}"


def points_mean_std(values: list[float], signed: bool = False) -> str:
    """Mean ± std of fractions over seeds, in points; one seed has no spread to show."""
    mean = points(statistics.fmean(values), signed)
    return f"{mean} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else mean


# What a record is judged by, per task: (its score's field, its parent's field, the score's name).
SCORES = {"classification": ("top1", "parent_top1", "top-1"), "detection": ("map50", "parent_map50", "mAP@0.5")}


def reference(record: dict[str, Any]) -> float:
    """The score a record is judged against, of its task (``SCORES``): a pruned model's parent's,
    a student's teacher's, an unpruned parent's own."""
    key, parent_key, _ = SCORES[record.get("task", "classification")]
    return record.get(parent_key, record.get("teacher_top1", record[key]))


def task_of(records: list[dict[str, Any]]) -> str:
    """The one task of ``records`` (a detector's record says so; a classifier's predates the
    field); ValueError where they mix, since one table cannot rank top-1 against mAP."""
    tasks = {r.get("task", "classification") for r in records}
    if len(tasks) > 1:
        raise ValueError(f"records of more than one task in one table: {sorted(tasks)}")
    return tasks.pop() if tasks else "classification"


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, model, method, target): means and stds over seeds of the task's
    score (``SCORES``; ``score``, ``score_std``, ``parent_score``, ``delta``)."""
    key, _, name = SCORES[task_of(records)]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["model"], r["method"], r.get("target_macs"), r.get("target_params"))].append(r)
    rows = []
    for (dataset, model, method, target, target_params), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -(kv[0][3] or kv[0][4] or 1), kv[0][2])
    ):
        score, score_sd = _mean_std([r[key] for r in rs])
        timed = all("parent_latency_ms_bs1" in r for r in rs)
        refs = [reference(r) for r in rs]
        parent, _ = _mean_std(refs)
        # Each seed against its own parent: fair where a cell's parents were re-trained.
        delta, delta_sd = _mean_std([r[key] - ref for r, ref in zip(rs, refs, strict=True)])
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "method": method,
                "target_macs": target,
                "target_params": target_params,
                "macs_kept": statistics.fmean(r.get("macs_kept", 1.0) for r in rs),
                "params": statistics.fmean(r["params"] for r in rs),
                # Of the parent's (a student's: of its teacher's), the quantity the issues' bars name.
                "params_kept": statistics.fmean(r.get("params_kept", 1.0) for r in rs),
                "score_key": key,
                "metric": name,
                "score": score,
                "score_std": score_sd,
                "parent_score": parent,
                "delta": delta,
                "delta_std": delta_sd,
                "seeds": len(rs),
                # Latency only as a ratio to the parent timed interleaved with it: absolute
                # milliseconds follow the machine's load (a parent's bs1 median ranged 7.6-22 ms
                # across the records of one day), the ratio of a pair timed A, B, A, B does not.
                "speedup": statistics.fmean(r["parent_latency_ms_bs1"] / r["latency_ms_bs1"] for r in rs)
                if timed
                else None,
                "latency_kept": statistics.fmean(r["latency_ms_bs1"] / r["parent_latency_ms_bs1"] for r in rs)
                if timed
                else None,
            }
        )
    return rows


def _score(row: dict[str, Any], key: str = "score") -> str:
    """Mean ± std over seeds in points; one seed has no spread to show."""
    mean = points(row[key], signed=key == "delta")
    return f"{mean} ± {100 * row[key + '_std']:.2f}" if row["seeds"] > 1 else mean


def _target(row: dict[str, Any]) -> str:
    """The budget a row was pruned to: a MACs fraction, "params F", or none (a student)."""
    if row["target_params"] is not None:
        return f"params {row['target_params']:g}"
    return f"{row['target_macs']:g}" if row["target_macs"] is not None else ""


def speedup_ratio(row: dict[str, Any]) -> float:
    """A timed row's bs1 speedup ÷ (parent MACs / MACs): how much of the MAC saving turns into
    time (1 = all)."""
    return float(row["speedup"] * row["macs_kept"])


def metric_name(rows: list[dict[str, Any]]) -> str:
    """The score the rows rank by, as a table names it: their task's metric (top-1 when none)."""
    return rows[0]["metric"] if rows else "top-1"


def markdown(rows: list[dict[str, Any]]) -> str:
    name = metric_name(rows)
    lines = [
        f"| dataset | model | method | target | MACs kept | params (M) | params kept | {name} (%) "
        f"| parent / teacher {name} (%) | {name} − own parent (points) | bs1 speedup | speedup ÷ MACs ratio | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed, share = (f"{r['speedup']:.2f}×", f"{speedup_ratio(r):.2f}") if r["speedup"] else ("", "")
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['method']} | {_target(r)} | {100 * r['macs_kept']:.1f} % "
            f"| {r['params'] / 1e6:.2f} | {100 * r['params_kept']:.1f} % ({1 / r['params_kept']:.1f}× fewer) "
            f"| {_score(r)} | {100 * r['parent_score']:.2f} | {_score(r, 'delta')} | {speed} | {share} | {r['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def by_method(rows: list[dict[str, Any]], key: str = "score") -> str:
    """Per parent model: one line per method, one column per (dataset, MACs target), the score
    in % (``key="delta"``: the score minus each seed's own parent's, points) as mean ± std
    (n seeds), and the parents' mean score last: the headline comparison."""
    out = []
    for model in sorted({r["model"] for r in rows if r["target_macs"] is not None}):
        mine = [r for r in rows if r["model"] == model and r["target_macs"] is not None]
        columns = sorted({(r["dataset"], r["target_macs"]) for r in mine}, key=lambda c: (c[0], -c[1]))
        cell = {(r["method"], r["dataset"], r["target_macs"]): r for r in mine}
        out += [
            f"### {model}",
            "",
            "| method | " + " | ".join(f"{d} {100 * t:g} %" for d, t in columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for method in sorted({r["method"] for r in mine}):
            found = [cell.get((method, d, t)) for d, t in columns]
            out.append(
                f"| {method} | " + " | ".join(f"{_score(r, key)} (n={r['seeds']})" if r else "" for r in found) + " |"
            )
        # The parents of the best-covered cell of each column (all its seeds).
        parents = [
            max((r for r in mine if (r["dataset"], r["target_macs"]) == c), key=lambda r: r["seeds"]) for c in columns
        ]
        # a delta table's reference, not a delta
        label = "parent" if key == "score" else f"parent {parents[0]['metric']} (%)"
        out += [f"| {label} | " + " | ".join(f"{100 * r['parent_score']:.2f}" for r in parents) + " |", ""]
    return "\n".join(out)


def _plot(rows: list[dict[str, Any]], dataset: str, x_key: str, x_label: str, path: Path) -> Path | None:
    """The score against ``x_key`` for one dataset, one line per method (mean ± std over seeds);
    None, and no file at ``path``, when no row of the dataset has an ``x_key`` (parents only have
    no latency)."""
    if all(r[x_key] is None for r in rows if r["dataset"] == dataset):
        path.unlink(missing_ok=True)  # one an earlier run of the records drew
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a dozen methods: ten colours would repeat
    for method in sorted({r["method"] for r in rows if r["dataset"] == dataset}):
        pts = sorted(
            (r for r in rows if (r["dataset"], r["method"]) == (dataset, method) and r[x_key] is not None),
            key=lambda r: r[x_key],
        )
        if pts:
            ax.errorbar(
                [p[x_key] for p in pts],
                [100 * p["score"] for p in pts],
                yerr=[100 * p["score_std"] for p in pts],
                marker="o",
                capsize=3,
                label=method,
            )
    ax.set_xscale("log")
    # Label 1-2-3-5 steps only: labelling every minor tick of a log axis overprints near decades.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(x_label)
    name = metric_name(rows)
    ax.set_ylabel(f"test {name} (%)")
    ax.set_title(f"{dataset}: {name} vs {x_label.split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_stem(out_dir: Path, prefix: str, dataset: str, score_key: str) -> Path:
    """Where a results file's plots of one dataset go, less ``_macs.png`` / ``_latency.png``."""
    return out_dir / f"{prefix}_{dataset}_{score_key}_vs"


def plot(rows: list[dict[str, Any]], out_dir: Path, prefix: str) -> list[Path]:
    """Per dataset: the score vs MACs kept, and vs bs1 latency kept (ONNX Runtime, 1 thread,
    as a share of the parent's timed interleaved with it), as
    ``<prefix>_<dataset>_<score key>_vs_{macs,latency}.png`` (``plot_stem``); the latency plot
    only once a record of the dataset has a timing."""
    rows = [
        {
            **r,
            "macs_kept_pct": 100 * r["macs_kept"],
            "latency_kept_pct": None if r["latency_kept"] is None else 100 * r["latency_kept"],
        }
        for r in rows
    ]
    paths: list[Path | None] = []
    for dataset in sorted({r["dataset"] for r in rows}):
        stem = plot_stem(out_dir, prefix, dataset, rows[0]["score_key"])
        paths += [
            _plot(rows, dataset, "macs_kept_pct", "MACs kept (%)", Path(f"{stem}_macs.png")),
            _plot(
                rows,
                dataset,
                "latency_kept_pct",
                "latency kept (% of the parent's, bs1, ORT 1 thread)",
                Path(f"{stem}_latency.png"),
            ),
        ]
    return [p for p in paths if p is not None]


def write_tables(results: Path) -> tuple[Path, list[Path]]:
    rows = summarise(read_records(results))
    name = metric_name(rows)
    table = results.with_suffix(".md")
    table.write_text(
        markdown(rows)
        + f"\n## By method: {name} (%)\n\n"
        + by_method(rows)
        + f"\n## By method: {name} minus each seed's own parent's (points)\n\n"
        + by_method(rows, "delta")
    )
    return table, plot(rows, results.parent, results.stem)
