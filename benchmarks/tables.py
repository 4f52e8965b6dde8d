"""Markdown tables (mean ± std over seeds) and plots from benchmark records."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.records import read_records  # noqa: E402


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, model, method, target): means and stds over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["model"], r["method"], r.get("target_macs"))].append(r)
    rows = []
    for (dataset, model, method, target), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -(kv[0][3] or 1), kv[0][2])):
        top1, top1_sd = _mean_std([r["top1"] for r in rs])
        # A student's reference is its teacher; an unpruned parent is its own.
        parent, _ = _mean_std([r.get("parent_top1", r.get("teacher_top1", r["top1"])) for r in rs])
        rows.append({
            "dataset": dataset, "model": model, "method": method, "target_macs": target,
            "macs_kept": statistics.fmean(r.get("macs_kept", 1.0) for r in rs),
            "params": statistics.fmean(r["params"] for r in rs),
            "top1": top1, "top1_std": top1_sd, "parent_top1": parent, "seeds": len(rs),
            "speedup": statistics.fmean(r["parent_latency_ms_bs1"] / r["latency_ms_bs1"] for r in rs)
            if all("parent_latency_ms_bs1" in r for r in rs) else None,
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | model | method | MACs target | MACs kept | params (M) | top-1 (%) | parent / teacher top-1 (%) | bs1 speedup | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{r['speedup']:.2f}×" if r["speedup"] else ""
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['method']} | {r['target_macs'] or ''} | {100 * r['macs_kept']:.1f} % "
            f"| {r['params'] / 1e6:.2f} "
            f"| {100 * r['top1']:.2f} ± {100 * r['top1_std']:.2f} | {100 * r['parent_top1']:.2f} | {speed} | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Top-1 vs MACs kept per dataset, one line per method (mean ± std over seeds)."""
    paths = []
    for dataset in sorted({r["dataset"] for r in rows}):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for method in sorted({r["method"] for r in rows if r["dataset"] == dataset}):
            pts = sorted((r for r in rows if (r["dataset"], r["method"]) == (dataset, method)), key=lambda r: r["macs_kept"])
            ax.errorbar([100 * p["macs_kept"] for p in pts], [100 * p["top1"] for p in pts],
                        yerr=[100 * p["top1_std"] for p in pts], marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{dataset}: top-1 vs MACs kept")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = out_dir / f"{dataset}_top1_vs_macs.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_tables(results: Path) -> tuple[Path, list[Path]]:
    rows = summarise(read_records(results))
    table = results.with_suffix(".md")
    table.write_text(markdown(rows))
    return table, plot(rows, results.parent)
