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


def pareto_png(
    points: Sequence[dict], x_key: str, x_label: str, title: str, log_x: bool = True, y_label: str = "top-1 (%)"
) -> bytes:
    """A score (``score``: top-1, mAP@0.5) against a cost (MMACs, latency); one marker per run,
    labelled, grouped by method."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in sorted({p["method"] for p in points}):
        group = [p for p in points if p["method"] == method]
        ax.scatter([p[x_key] for p in group], [100 * p["score"] for p in group], label=method, s=36)
        for p in group:
            ax.annotate(p["name"], (p[x_key], 100 * p["score"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def per_class_png(
    class_names: Sequence[str], values: Sequence[float], title: str, x_label: str = "accuracy (%)"
) -> bytes:
    fig, ax = plt.subplots(figsize=(6.4, 0.22 * len(class_names) + 1.2))
    y = np.arange(len(class_names))
    ax.barh(y, [100 * a for a in values])
    ax.set_yticks(y, class_names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(x_label)
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


def detections_png(
    images: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    predicted: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    title: str,
) -> bytes:
    """Images (H×W×3 uint8) side by side with their true boxes (green) and the predicted ones
    (red, score written beside); boxes as N×4 x1 y1 x2 y2 in the image's pixels."""
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6), squeeze=False)
    for ax, image, true_boxes, boxes, box_scores in zip(axes[0], images, truth, predicted, scores, strict=True):
        ax.imshow(image)
        for x1, y1, x2, y2 in true_boxes:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.2))
        for (x1, y1, x2, y2), score in zip(boxes, box_scores, strict=True):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=1.0))
            ax.text(x1, y1, f"{score:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_axis_off()
    fig.suptitle(title + " (green: truth, red: predicted)", fontsize=9)
    return _png(fig)
