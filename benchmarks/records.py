"""Benchmark records (DESIGN.md): one JSON object per finished run in results/*.jsonl."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from rscompress.artifacts import RunDir

DEVICE = "cpu-2core"


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def has_record(path: Path, key: dict[str, Any]) -> bool:
    return any(all(r.get(k) == v for k, v in key.items()) for r in read_records(path))


def train_record(run: RunDir, dataset: str, command: str) -> dict[str, Any]:
    """The record of an unpruned (``method: none``) training run."""
    m = run.load_metrics()
    return {
        "dataset": dataset,
        "model": m["model"],
        "method": "none",
        "macs": m["macs"],
        "params": m["params"],
        "top1": m["top1"],
        "kappa": m["kappa"],
        "val_top1": m["val"]["top1"],
        "img_size": m["img_size"],
        "epochs": m["epochs"],
        "best_epoch": m["best_epoch"],
        "seed": m["seed"],
        "split": "test",
        "n_test": m["n_images"],
        "train_images_per_second": m["timings"]["train_images_per_second"],
        "device": DEVICE,
        "commit": git_commit(),
        "command": command,
    }
