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

import numpy as np
import torch

from rscompress.artifacts import INT8_ONNX, RunDir
from rscompress.errors import UserError
from rscompress.io_utils import write_bytes_atomic, write_text_atomic
from rscompress.report.plots import confusion_png, detections_png, pareto_png, per_class_png

# What a run's headline score is, by task: (metrics.json key, its label).
SCORES = {"classification": ("top1", "top-1 (%)"), "detection": ("map50", "mAP@0.5 (%)")}
# Images a detection report draws its predicted boxes on, and the lowest score it draws.
BOX_PICTURE_IMAGES, BOX_PICTURE_MIN_SCORE = 4, 0.3


@dataclass
class RunSummary:
    name: str
    path: Path
    task: str  # classification or detection (metrics.json's ``task``)
    model: str
    method: str
    score: float  # test top-1, or test mAP@0.5 (SCORES)
    val_score: float
    macs: int
    params: int
    parent: str | None
    macs_kept: float | None
    class_names: list[str]
    per_class: list[float]  # test accuracy per class, or AP@0.5:0.95 per class
    metrics: dict[str, Any]  # the rest of metrics.json: kappa, confusion, mAP@0.5:0.95, ...
    latency_ms: float | None = None

    def row(self) -> dict[str, Any]:
        if self.task == "detection":
            scores = {
                "mAP@0.5 (%)": f"{100 * self.score:.2f}",
                "mAP@0.5:0.95 (%)": f"{100 * self.metrics['map']:.2f}",
                "mAP small (%)": "" if self.metrics["map_small"] < 0 else f"{100 * self.metrics['map_small']:.2f}",
            }
        else:
            scores = {"top1 (%)": f"{100 * self.score:.2f}", "kappa": f"{self.metrics['kappa']:.4f}"}
        return {
            "run": self.name,
            "model": self.model,
            "method": self.method,
            **scores,
            "MMACs": f"{self.macs / 1e6:.1f}",
            "params (M)": f"{self.params / 1e6:.3f}",
            "MACs kept": "" if self.macs_kept is None else f"{100 * self.macs_kept:.1f} %",
            "latency bs1 (ms)": "" if self.latency_ms is None else f"{self.latency_ms:.2f}",
            "parent": Path(self.parent).name if self.parent else "",
        }


def summarise(run_path: Path) -> RunSummary:
    run = RunDir(run_path).require()
    config, metrics = run.load_config(), run.load_metrics()
    task = str(metrics.get("task", "classification"))
    key = SCORES[task][0]
    if task == "detection":
        per_class = [metrics["per_class_ap"].get(name, 0.0) for name in config.class_names]
    else:
        per_class = metrics["test"]["per_class_accuracy"]
    return RunSummary(
        name=run.path.name,
        path=run.path,
        task=task,
        model=config.model,
        method=config.method,
        score=metrics[key],
        val_score=metrics["val"][key],
        macs=metrics["macs"],
        params=metrics["params"],
        parent=config.parent,
        macs_kept=metrics.get("macs_kept"),
        class_names=config.class_names,
        per_class=per_class,
        metrics=metrics,
    )


def predicted_boxes_png(summary: RunSummary, n_images: int = BOX_PICTURE_IMAGES) -> bytes:
    """The first ``n_images`` test images of a detector's run with its true and predicted boxes."""
    from rscompress.config import DataConfig
    from rscompress.data.detection_prepare import prepare_detection, split_from_json
    from rscompress.data.transforms import normalize_batch

    run = RunDir(summary.path)
    model, config = run.load_model()
    data_cfg = DataConfig.model_validate(config.data)
    data = split_from_json(
        prepare_detection(data_cfg.path, data_cfg.img_size, cache_dir=data_cfg.cache_dir), run.split_path
    )
    rows = np.sort(data.split["test"][:n_images])
    images = np.asarray(data.images[rows])
    model.eval()
    with torch.no_grad():
        found = model(list(normalize_batch(torch.from_numpy(images), config.mean, config.std)))
    kept = [d["scores"] >= BOX_PICTURE_MIN_SCORE for d in found]
    return detections_png(
        list(images),
        [data.boxes[i] for i in rows],
        [d["boxes"][k].numpy() for d, k in zip(found, kept, strict=True)],
        [d["scores"][k].numpy() for d, k in zip(found, kept, strict=True)],
        f"{summary.name}: test images, boxes scored >= {BOX_PICTURE_MIN_SCORE}",
    )


def add_latency(summaries: list[RunSummary], repeats: int = 50) -> list[dict[str, Any]]:
    """ONNX Runtime, 1 thread, batch 1, all runs interleaved in this process (DESIGN.md), the
    INT8 models of the runs that have one (``export --int8``) among them. Returns the INT8
    models' points (name, method, test top-1 as score, MMACs, ms) for the latency plot."""
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
            "score": r.top1,
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
    if len(tasks := {s.task for s in summaries}) > 1:
        raise UserError(f"report compares runs of one task; these mix {' and '.join(sorted(tasks))} runs")
    task = summaries[0].task
    missing = ""
    score_label = SCORES[task][1]
    int8_points = add_latency(summaries, repeats) if latency else []
    # The model shown in detail is the one a user would pick: best on validation, not test.
    best = max(summaries, key=lambda s: (s.val_score, -s.macs))
    points = [
        {"name": s.name, "method": s.method, "score": s.score, "mmacs": s.macs / 1e6, "ms": s.latency_ms}
        for s in summaries
    ]
    what = score_label.removesuffix(" (%)")
    figures: list[tuple[str, str, bytes]] = [
        (
            "pareto_macs",
            f"{what} vs MACs",
            pareto_png(points, "mmacs", "MMACs (log)", f"{what} vs compute", y_label=score_label),
        ),
    ]
    if latency:
        figures.append(
            (
                "pareto_latency",
                f"{what} vs latency",
                pareto_png(
                    points + int8_points,
                    "ms",
                    "ONNX Runtime latency, bs 1, 1 thread (ms, log)",
                    f"{what} vs CPU latency" + (" (FP32 and INT8)" if int8_points else ""),
                    y_label=score_label,
                ),
            )
        )
    if task == "detection":
        figures += [
            (
                "per_class",
                f"Per-class AP: {best.name}",
                per_class_png(best.class_names, best.per_class, f"{best.name}: per-class test AP", "AP@0.5:0.95 (%)"),
            ),
        ]
        # The picture needs the run's images; a report on runs whose data has moved still tabulates.
        root = Path(str(RunDir(best.path).load_config().data.get("path") or ""))
        if root.is_dir():
            figures.append(("boxes", f"Predicted boxes: {best.name}", predicted_boxes_png(best)))
        else:
            missing = f" No box picture: {best.name}'s data folder {root} is not there."
    else:
        figures += [
            (
                "per_class",
                f"Per-class accuracy: {best.name}",
                per_class_png(best.class_names, best.per_class, f"{best.name}: per-class test accuracy"),
            ),
            (
                "confusion",
                f"Confusion matrix: {best.name}",
                confusion_png(
                    best.class_names, best.metrics["test"]["confusion"], f"{best.name}: confusion (row-normalised)"
                ),
            ),
        ]
    rows = [s.row() for s in summaries]
    intro = (
        f"{len(summaries)} runs. Test split metrics; the detailed model ({best.name}) is the best on the "
        "validation split. MACs and params counted at each run's input size." + missing
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
