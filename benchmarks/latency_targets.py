"""Latency budgets hit on this machine (issue 34): ``rscompress prune --target-speedup S`` at 1/3,
1/5 and 1/10 of a parent's batch-1 latency, each result re-measured against the parent in
three fresh processes.

    python -m benchmarks.latency_targets run PARENT_RUN [--speedups 3 5 10] [--threads 1] [--int8]
    python -m benchmarks.latency_targets remeasure PARENT_RUN PRUNED_RUN [--threads 1] [--int8]

The pruned models are fine-tuned for one epoch only: latency does not depend on weights, and
the accuracy at a budget is what the suite measures. ``achieved``: the median of the three
re-measurements, each a ratio of interleaved medians (deploy/latency_probe.py); the bar is
within ±10 % of the target. One record per (parent, speedup, threads, precision) in
``results/latency_targets.jsonl``; a finished cell is skipped, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.records import append_record, cpu_name, git_commit, has_record

RESULTS = Path("benchmarks/results/latency_targets.jsonl")
WORK = Path("benchmarks/work/latency_targets")
REMEASUREMENTS = 3
BAR = 0.10


def remeasure(parent: Path, pruned: Path, threads: int, int8: bool) -> dict[str, float]:
    """One interleaved measurement of ``pruned`` against ``parent`` in this process."""
    import torch

    import rscompress as rsc
    from rscompress.artifacts import RunDir
    from rscompress.deploy.latency_probe import LatencyProbe

    torch.set_num_threads(threads)
    img_size = RunDir(parent).load_config().img_size
    calibration = torch.randn(64, 3, img_size, img_size).numpy() if int8 else None
    probe = LatencyProbe(rsc.load(parent), img_size, threads=threads, int8_calibration=calibration)
    m = probe(rsc.load(pruned))
    probe.close()
    return {"ratio": m.ratio, "spread": m.spread, "ms": m.candidate_ms, "parent_ms": m.parent_ms}


def _fresh_measurements(parent: Path, pruned: Path, threads: int, int8: bool) -> list[dict[str, float]]:
    command = [sys.executable, "-m", "benchmarks.latency_targets", "remeasure", str(parent), str(pruned)]
    command += ["--threads", str(threads), *(["--int8"] if int8 else [])]
    return [
        json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        for _ in range(REMEASUREMENTS)
    ]


def run_cell(parent: Path, speedup: float, threads: int, int8: bool) -> dict[str, Any]:
    from rscompress.artifacts import RunDir

    precision = "int8" if int8 else "fp32"
    out = WORK / f"{parent.name}-x{speedup:g}-t{threads}-{precision}"
    command = [
        "rscompress", "prune", str(parent), "--method", "l1", "--target-speedup", f"{speedup:g}",
        "--latency-threads", str(threads), *(["--latency-int8"] if int8 else []),
        "--finetune-epochs", "1", "--threads", str(threads), "--out", str(out), "--quiet", "--json",
    ]  # fmt: skip
    if not RunDir(out).is_complete():
        subprocess.run(command + (["--resume"] if RunDir(out).is_started() else []), check=True, capture_output=True)
    metrics = RunDir(out).load_metrics()
    search = metrics["latency_budget"]
    again = _fresh_measurements(parent, out, threads, int8)
    ratio = statistics.median(m["ratio"] for m in again)
    parent_ms = statistics.median(m["parent_ms"] for m in again)
    return {
        "parent": str(parent),
        "model": RunDir(parent).load_config().model,
        "method": "l1",
        "target_speedup": speedup,
        "target_latency_ms": parent_ms / speedup,  # the parent's latency in the re-measurements, / S
        "latency_ms_achieved": ratio * parent_ms,
        "parent_latency_ms": parent_ms,
        "speedup_achieved": 1 / ratio,
        "error": ratio * speedup - 1,  # achieved latency / target latency − 1
        "spread": max(m["ratio"] for m in again) / min(m["ratio"] for m in again) - 1,
        "within_bar": abs(ratio * speedup - 1) <= BAR,
        "remeasurements": again,
        "search": {k: search[k] for k in ("ratio", "spread", "macs_share", "trials", "seconds")},
        "macs_kept": metrics["macs_kept"],
        "params_kept": metrics["params_kept"],
        "threads": threads,
        "precision": precision,
        "cpu": cpu_name(),
        "commit": git_commit(),
        "command": " ".join(command),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency_targets")
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run")
    run.add_argument("parent", type=Path)
    run.add_argument("--speedups", type=float, nargs="+", default=[3.0, 5.0, 10.0])
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--int8", action="store_true")
    again = sub.add_parser("remeasure")
    again.add_argument("parent", type=Path)
    again.add_argument("pruned", type=Path)
    again.add_argument("--threads", type=int, default=1)
    again.add_argument("--int8", action="store_true")
    args = parser.parse_args()
    if args.verb == "remeasure":
        print(json.dumps(remeasure(args.parent, args.pruned, args.threads, args.int8)))
        return
    git_commit()  # the code this run loaded, asked before anything runs
    precision = "int8" if args.int8 else "fp32"
    for speedup in args.speedups:
        key = {"parent": str(args.parent), "target_speedup": speedup, "threads": args.threads, "precision": precision}
        if has_record(RESULTS, key):
            continue
        record = run_cell(args.parent, speedup, args.threads, args.int8)
        append_record(RESULTS, record)
        print(
            f"x{speedup:g}: achieved x{record['speedup_achieved']:.2f} "
            f"({record['error']:+.1%} of the target latency), MACs kept {record['macs_kept']:.1%}"
        )


if __name__ == "__main__":
    main()
