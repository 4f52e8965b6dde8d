"""INT8 against FP32 on this CPU (issue 34): each run dir given is exported with
``rscompress export RUN --int8`` (its accuracy check recorded in ``RUN/int8.jsonl``), then its
FP32 and INT8 ONNX models and its FP32 parent are timed at batch 1, interleaved, at 1 and 2
threads (deploy/latency.measure).

    python -m benchmarks.int8 RUN [RUN ...] [--threads 1 2] [--repeats 200]

One record per (run, threads) in ``results/int8.jsonl`` with the fields the issue names
(``macs_kept``, ``seed``, ``top1_fp32``, ``top1_int8``, ``latency_ms_bs1_fp32``,
``latency_ms_bs1_int8``, ``cpu``) and the speedups: INT8 over its own FP32 model, and over the
FP32 parent (the whole deployment gain). A cell with a record is skipped, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.records import append_record, cpu_name, git_commit, has_record

RESULTS = Path("benchmarks/results/int8.jsonl")


def _int8_check(run: Path) -> dict[str, Any]:
    """The run's last INT8 accuracy check, exporting it first when it has none."""
    from rscompress.artifacts import INT8_ONNX, INT8_RECORD
    from rscompress.io_utils import read_jsonl

    if not (run / INT8_ONNX).is_file():
        # exit 2: refused past --max-drop, the check still recorded (read below)
        done = subprocess.run(["rscompress", "export", str(run), "--int8", "--json"], stdout=subprocess.DEVNULL)
        if done.returncode not in (0, 2):
            raise RuntimeError(f"rscompress export {run} --int8 failed with exit {done.returncode}")
    return read_jsonl(run / INT8_RECORD)[-1]


def cells(run: Path, threads: list[int], repeats: int) -> list[dict[str, Any]]:
    from rscompress.artifacts import RunDir
    from rscompress.deploy.cpu import cpu_info
    from rscompress.deploy.latency import measure

    check = _int8_check(run)
    metrics = RunDir(run).load_metrics()
    if not check["written"]:  # refused by the accuracy check: its figures are the record
        return [
            {
                "run": str(run),
                "model": RunDir(run).load_config().model,
                "method": metrics.get("method", "none"),
                "seed": metrics.get("seed"),
                "macs_kept": metrics.get("macs_kept", 1.0),
                "refused": True,
                "val_drop_points": check["val_drop_points"],
                "top1_fp32": check["test"]["top1_fp32"],
                "top1_int8": check["test"]["top1_int8"],
                "threads": t,
                "cpu": cpu_name(),
                "commit": git_commit(),
                "command": f"rscompress export {run} --int8",
            }
            for t in threads
        ]
    parent = Path(metrics["parent"]) if metrics.get("parent") else None
    runs = [parent, run] if parent is not None else [run]
    results = measure(runs, batch_sizes=(1,), threads=threads, engines=("onnxruntime",), repeats=repeats, int8=True)
    records = []
    for t in threads:
        at = {(r.run, r.precision): r for r in results if r.threads == t}
        fp32, int8 = at[(str(RunDir(run).path), "fp32")], at[(str(RunDir(run).path), "int8")]
        parent_ms = at[(str(RunDir(parent).path), "fp32")].median_ms if parent is not None else fp32.median_ms
        records.append(
            {
                "run": str(run),
                "model": RunDir(run).load_config().model,
                "method": metrics.get("method", "none"),
                "seed": metrics.get("seed"),
                "macs_kept": metrics.get("macs_kept", 1.0),
                "params_kept": metrics.get("params_kept", 1.0),
                "top1_fp32": check["test"]["top1_fp32"],
                "top1_int8": check["test"]["top1_int8"],
                "val_top1_fp32": check["val"]["top1_fp32"],
                "val_top1_int8": check["val"]["top1_int8"],
                "agreement_test": check["test"]["agreement"],
                "size_mb_fp32": fp32.size_mb,
                "size_mb_int8": int8.size_mb,
                "latency_ms_bs1_fp32": fp32.median_ms,
                "latency_ms_bs1_int8": int8.median_ms,
                "latency_ms_bs1_parent_fp32": parent_ms,
                "speedup_int8_over_fp32": fp32.median_ms / int8.median_ms,
                "speedup_int8_over_parent": parent_ms / int8.median_ms,
                "threads": t,
                "repeats": repeats,
                "cpu": cpu_name(),
                "cpu_flags": cpu_info().to_dict(),
                "commit": git_commit(),
                "command": f"python -m benchmarks.int8 {run} --threads {t} --repeats {repeats}",
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8")
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    git_commit()  # the code this run loaded, asked before anything runs
    for run in args.runs:
        todo = [t for t in args.threads if not has_record(RESULTS, {"run": str(run), "threads": t})]
        if not todo:
            continue
        for record in cells(run, todo, args.repeats):
            append_record(RESULTS, record)
            shown = {k: record[k] for k in ("run", "threads", "top1_fp32", "top1_int8")}
            if record.get("refused"):
                print(f"{json.dumps(shown)} refused: val drop {record['val_drop_points']:.2f} points")
                continue
            gains = f"x{record['speedup_int8_over_fp32']:.2f} over FP32, x{record['speedup_int8_over_parent']:.1f}"
            print(f"{json.dumps(shown)} {gains} over the parent")


if __name__ == "__main__":
    main()
