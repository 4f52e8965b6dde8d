"""``rscompress report``: compare finished runs in one self-contained HTML file + markdown twin.

The HTML embeds every plot as a base64 PNG (no network, one file to mail around); the
markdown twin links the same PNGs written to ``<name>_files/`` beside it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rscompress.artifacts import INT8_ONNX, RunDir
from rscompress.errors import UserError
from rscompress.io_utils import write_bytes_atomic, write_text_atomic
from rscompress.report.plots import confusion_png, pareto_png, per_class_png


@dataclass
class RunSummary:
    name: str
    path: Path
    model: str
    method: str
    top1: float
    kappa: float
    val_top1: float
    macs: int
    params: int
    parent: str | None
    macs_kept: float | None
    class_names: list[str]
    per_class: list[float]
    confusion: list[list[int]]
    latency_ms: float | None = None

    def row(self) -> dict[str, Any]:
        return {
            "run": self.name,
            "model": self.model,
            "method": self.method,
            "top1 (%)": f"{100 * self.top1:.2f}",
            "kappa": f"{self.kappa:.4f}",
            "MMACs": f"{self.macs / 1e6:.1f}",
            "params (M)": f"{self.params / 1e6:.3f}",
            "MACs kept": "" if self.macs_kept is None else f"{100 * self.macs_kept:.1f} %",
            "latency bs1 (ms)": "" if self.latency_ms is None else f"{self.latency_ms:.2f}",
            "parent": Path(self.parent).name if self.parent else "",
        }


def summarise(run_path: Path) -> RunSummary:
    run = RunDir(run_path).require()
    config, metrics = run.load_config(), run.load_metrics()
    test = metrics["test"]
    return RunSummary(
        name=run.path.name,
        path=run.path,
        model=config.model,
        method=config.method,
        top1=metrics["top1"],
        kappa=metrics["kappa"],
        val_top1=metrics["val"]["top1"],
        macs=metrics["macs"],
        params=metrics["params"],
        parent=config.parent,
        macs_kept=metrics.get("macs_kept"),
        class_names=config.class_names,
        per_class=test["per_class_accuracy"],
        confusion=test["confusion"],
    )


def add_latency(summaries: list[RunSummary], repeats: int = 50) -> list[dict[str, Any]]:
    """ONNX Runtime, 1 thread, batch 1, all runs interleaved in this process (DESIGN.md), the
    INT8 models of the runs that have one (``export --int8``) among them. Returns the INT8
    models' points (name, method, test top-1, MMACs, ms) for the latency plot."""
    from rscompress.deploy.latency import measure

    runs = [RunDir(s.path) for s in summaries]
    int8 = any((run.path / INT8_ONNX).is_file() for run in runs)
    results = measure(
        runs, batch_sizes=(1,), threads=(1,), engines=("onnxruntime",), repeats=repeats, peak_rss=False, int8=int8
    )
    fp32 = [r for r in results if r.precision == "fp32"]
    for summary, result in zip(summaries, fp32, strict=True):
        summary.latency_ms = result.median_ms
    by_run = {str(s.path): s for s in summaries}
    return [
        {
            "name": f"{by_run[r.run].name} int8",
            "method": f"{by_run[r.run].method} int8",
            "top1": r.top1,
            "mmacs": r.macs / 1e6,
            "ms": r.median_ms,
        }
        for r in results
        if r.precision == "int8" and r.run in by_run and r.top1 is not None
    ]


def _table_md(rows: list[dict[str, Any]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _table_html(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(run_paths: list[Path], out: Path, latency: bool = True, repeats: int = 50) -> Path:
    """Write ``out`` (HTML) and ``out`` with suffix .md; returns the HTML path."""
    if not run_paths:
        raise UserError("report needs at least one run dir")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out must end in .html, got {out}")
    summaries = [summarise(p) for p in run_paths]
    int8_points = add_latency(summaries, repeats) if latency else []
    # The model shown in detail is the one a user would pick: best on validation, not test.
    best = max(summaries, key=lambda s: (s.val_top1, -s.macs))
    points = [
        {"name": s.name, "method": s.method, "top1": s.top1, "mmacs": s.macs / 1e6, "ms": s.latency_ms}
        for s in summaries
    ]
    figures: list[tuple[str, str, bytes]] = [
        ("pareto_macs", "Top-1 vs MACs", pareto_png(points, "mmacs", "MMACs (log)", "Top-1 vs compute")),
    ]
    if latency:
        figures.append(
            (
                "pareto_latency",
                "Top-1 vs latency",
                pareto_png(
                    points + int8_points,
                    "ms",
                    "ONNX Runtime latency, bs 1, 1 thread (ms, log)",
                    "Top-1 vs CPU latency" + (" (FP32 and INT8)" if int8_points else ""),
                ),
            )
        )
    figures += [
        (
            "per_class",
            f"Per-class accuracy: {best.name}",
            per_class_png(best.class_names, best.per_class, f"{best.name}: per-class test accuracy"),
        ),
        (
            "confusion",
            f"Confusion matrix: {best.name}",
            confusion_png(best.class_names, best.confusion, f"{best.name}: confusion (row-normalised)"),
        ),
    ]
    rows = [s.row() for s in summaries]
    intro = (
        f"{len(summaries)} runs. Test split metrics; the detailed model ({best.name}) is the best on the "
        "validation split. MACs and params counted at each run's input size."
    )

    imgs_html = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for _, title, png in figures
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rscompress report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f3f3f3}}
figure{{display:inline-block;margin:1em}}img{{max-width:520px}}</style></head>
<body><h1>rscompress report</h1><p>{html.escape(intro)}</p>{_table_html(rows)}{imgs_html}</body></html>
"""
    write_text_atomic(out, page)
    assets = out.with_name(out.stem + "_files")
    assets.mkdir(parents=True, exist_ok=True)
    md_imgs = []
    for key, title, png in figures:
        write_bytes_atomic(assets / f"{key}.png", png)
        md_imgs.append(f"![{title}]({assets.name}/{key}.png)")
    write_text_atomic(
        out.with_suffix(".md"),
        "# rscompress report\n\n" + intro + "\n\n" + _table_md(rows) + "\n\n" + "\n\n".join(md_imgs) + "\n",
    )
    return out
