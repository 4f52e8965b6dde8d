"""Benchmark records (DESIGN.md): one JSON object per finished run in results/*.jsonl."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import warnings
from pathlib import Path
from typing import Any

from rscompress.artifacts import RunDir

DEVICE = "cpu-2core"
_SIMD = ("avx512f", "avx2", "avx", "neon", "asimd")  # widest first


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU model and its widest vector extension, e.g. ``AMD EPYC (avx512f)``.

    Sessions land on different 2-core machines, and latency and float results differ between
    them (one had no AVX2 and timed the same SE-ResNet-18 3-9x slower), so a record says which.
    """
    if not cpuinfo.is_file():
        return platform.processor() or platform.machine()
    fields = _cpuinfo_fields(cpuinfo)
    model = fields.get("model name") or fields.get("Hardware") or platform.machine()
    flags = _flags(fields)
    widest = next((f for f in _SIMD if f in flags), None)
    return f"{model} ({widest})" if widest else model


def cpu_flags(names: tuple[str, ...], cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Those of ``names`` (as /proc/cpuinfo spells them, e.g. amx_bf16) this CPU has."""
    flags = _flags(_cpuinfo_fields(cpuinfo)) if cpuinfo.is_file() else set()
    return [name for name in names if name in flags]


def _cpuinfo_fields(cpuinfo: Path) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in cpuinfo.read_text().splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _flags(fields: dict[str, str]) -> set[str]:
    return set((fields.get("flags") or fields.get("Features") or "").split())


@functools.cache
def git_commit() -> str:
    """The commit checked out when this process first asked. A harness asks before it runs
    anything, so its records name the code it loaded, not one committed while it ran."""
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a results file. A line cut short by a kill mid-append is skipped with a
    warning: its cell has no record, so the next run of the harness does it again."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(
                f"{path}:{number} is not a whole record (a run killed while writing it?); skipped", stacklevel=2
            )
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One line, one write; after a line cut short by a kill, start on a fresh line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cut_short = False
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            cut_short = fh.read(1) != b"\n"
    with open(path, "a") as fh:
        fh.write(("\n" if cut_short else "") + json.dumps(record) + "\n")


def has_record(path: Path, key: dict[str, Any]) -> bool:
    return any(all(r.get(k) == v for k, v in key.items()) for r in read_records(path))


def scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's test scores and the val score it was selected on: mAP for a detector (and its
    task, which the tables rank by), top-1 and kappa for a classifier."""
    if metrics.get("task") == "detection":
        test = {k: metrics[k] for k in ("map50", "map", "map_small")}
        return {"task": "detection", **test, "val_map50": metrics["val"]["map50"]}
    return {"top1": metrics["top1"], "kappa": metrics["kappa"], "val_top1": metrics["val"]["top1"]}


# The method label of an unpruned training run's record (a baseline, a suite's parent).
UNPRUNED = "none"


def train_record(run: RunDir, dataset: str, command: str) -> dict[str, Any]:
    """The record of an unpruned (``method: none``) training run."""
    m = run.load_metrics()
    return {
        "dataset": dataset,
        "model": m["model"],
        "method": UNPRUNED,
        "macs": m["macs"],
        "params": m["params"],
        **scores(m),
        "img_size": m["img_size"],
        "epochs": m["epochs"],
        "best_epoch": m["best_epoch"],
        "seed": m["seed"],
        "split": "test",
        "n_test": m["n_images"],
        "train_images_per_second": m["timings"]["train_images_per_second"],
        "device": DEVICE,
        "cpu": cpu_name(),
        "commit": git_commit(),
        "command": command,
    }
