"""Matplotlib figures for reports and benchmarks, returned as PNG bytes (no files, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are made on servers and in CI
import matplotlib.pyplot as plt
import numpy as np


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pareto_png(points: Sequence[dict], x_key: str, x_label: str, title: str, log_x: bool = True) -> bytes:
    """Top-1 against a cost (MMACs, latency); one marker per run, labelled, grouped by method."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in sorted({p["method"] for p in points}):
        group = [p for p in points if p["method"] == method]
        ax.scatter([p[x_key] for p in group], [100 * p["top1"] for p in group], label=method, s=36)
        for p in group:
            ax.annotate(p["name"], (p[x_key], 100 * p["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def per_class_png(class_names: Sequence[str], accuracy: Sequence[float], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6.4, 0.22 * len(class_names) + 1.2))
    y = np.arange(len(class_names))
    ax.barh(y, [100 * a for a in accuracy])
    ax.set_yticks(y, class_names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_title(title)
    return _png(fig)


def confusion_png(class_names: Sequence[str], confusion: Sequence[Sequence[int]], title: str) -> bytes:
    matrix = np.asarray(confusion, dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 0.28 * len(class_names) + 2
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=6)
    ax.set_yticks(ticks, class_names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _png(fig)
