"""How many train images INT8 calibration needs, judged on val (issue 34; never on test).

    python -m benchmarks.int8_calibration RUN [RUN ...] [--images 16 32 64 128 256 512] [--draws 3]

For each count, the run is quantized as ``rscompress export RUN --int8`` does (deploy/int8.py),
calibrated once on the class-spread selection the export uses and ``--draws - 1`` times more on
seeded random train images, and checked on the run's val and test splits; with and without
``reduce_range`` (7-bit weights) on the export's selection. The INT8 file itself is thrown
away. Writes benchmarks/results/int8_calibration.json: per run, one row per count, draw and
setting, and a summary per count; with the CPU. config.Int8Config's calib_images default and
quantize.REDUCE_RANGE cite it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.records import git_commit
from rscompress.artifacts import RunDir
from rscompress.config import DataConfig, Int8Config
from rscompress.data.loader import BatchLoader
from rscompress.data.prepare import PreparedData, prepare_data
from rscompress.deploy.cpu import cpu_info
from rscompress.deploy.int8 import export_int8
from rscompress.deploy.onnx import export_onnx, run_metadata, spread_rows
from rscompress.deploy.quantize import REDUCE_RANGE
from rscompress.io_utils import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "int8_calibration.json"


def _loader(data: PreparedData, rows: np.ndarray) -> BatchLoader:
    return BatchLoader(
        data.images, data.labels, rows, batch_size=128, shuffle=False, augment=False, mean=data.mean, std=data.std
    )


def _images(data: PreparedData, rows: np.ndarray) -> np.ndarray:
    return np.concatenate([x.numpy() for x, _ in _loader(data, rows)])


def measure(run_path: Path, counts: list[int], draws: int, repeats: int) -> dict[str, Any]:
    run = RunDir(run_path).require()
    model, config = run.load_model()
    data = prepare_data(DataConfig.model_validate(config.data), run.split_path).with_normalisation(
        config.mean, config.std
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="int8-calibration-") as tmp:
        fp32 = export_onnx(model, config.img_size, Path(tmp) / "fp32.onnx", metadata=run_metadata(config))
        for n in counts:
            spread = spread_rows(data.train_indices, n)
            selections = [("spread", spread, REDUCE_RANGE), ("spread", spread, not REDUCE_RANGE)]
            for draw in range(1, draws):
                chosen = np.random.default_rng(draw).choice(data.train_indices, size=n, replace=False)
                selections.append((f"random seed {draw}", np.sort(chosen), REDUCE_RANGE))
            for selection, picked, reduce_range in selections:
                report = export_int8(
                    fp32,
                    Path(tmp) / "int8.onnx",
                    _images(data, picked),
                    _loader(data, data.val_indices),
                    _loader(data, data.test_indices),
                    Path(tmp) / "record.jsonl",
                    Int8Config(max_drop=100.0, repeats=repeats),
                    img_size=config.img_size,
                    calib_source=selection,
                    reduce_range=reduce_range,
                )
                row = {
                    "calib_images": n,
                    "selection": selection,
                    "reduce_range": reduce_range,
                    "val": report.val.to_dict(),
                    "test": report.test.to_dict() if report.test is not None else None,
                    "quantize_seconds": report.quantize_seconds,
                    "latency_ms_bs1_fp32": report.latency.fp32_median_ms,
                    "latency_ms_bs1_int8": report.latency.int8_median_ms,
                }
                rows.append(row)
                print(
                    f"{n:4d} {selection:14s} reduce_range={reduce_range!s:5s} "
                    f"val {report.val.top1_fp32:.4f} -> {report.val.top1_int8:.4f} "
                    f"(drop {report.val.drop_points:+.2f}, agree {report.val.agreement:.3f})  "
                    f"test drop {report.test.drop_points if report.test else float('nan'):+.2f}  "
                    f"bs1 {report.latency.fp32_median_ms:.2f} / {report.latency.int8_median_ms:.2f} ms  "
                    f"quantized in {report.quantize_seconds:.1f} s",
                    flush=True,
                )
    return {
        "summary": summarise(rows),
        "run": str(run_path),
        "model": config.model,
        "img_size": config.img_size,
        "n_train": int(data.train_indices.size),
        "n_val": int(data.val_indices.size),
        "val_top1_fp32": rows[0]["val"]["top1_fp32"],
        "rows": rows,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per count, over the draws at the default reduce_range: mean and worst val drop (points),
    mean agreement with FP32 on val, mean quantization time."""
    out = []
    for n in sorted({r["calib_images"] for r in rows}):
        own = [r for r in rows if r["calib_images"] == n and r["reduce_range"] == REDUCE_RANGE]
        drops = [r["val"]["drop_points"] for r in own]
        out.append(
            {
                "calib_images": n,
                "draws": len(own),
                "val_drop_mean": float(np.mean(drops)),
                "val_drop_worst": float(np.max(drops)),
                "val_agreement_mean": float(np.mean([r["val"]["agreement"] for r in own])),
                "quantize_seconds_mean": float(np.mean([r["quantize_seconds"] for r in own])),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_calibration")
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--images", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--draws", type=int, default=3, help="selections per count: the export's, then random")
    parser.add_argument("--repeats", type=int, default=20, help="bs1 latency repeats per model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (evaluation sessions follow it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "cpu": cpu_info().to_dict(),
        "commit": git_commit(),
        "runs": [measure(run, args.images, args.draws, args.repeats) for run in args.runs],
    }
    write_json_atomic(args.out, result)
    for run in result["runs"]:
        for row in run["summary"]:
            print(
                f"{run['model']} {row['calib_images']:4d} images: val drop mean {row['val_drop_mean']:+.2f}, "
                f"worst {row['val_drop_worst']:+.2f} points; agreement {row['val_agreement_mean']:.3f}; "
                f"quantized in {row['quantize_seconds_mean']:.1f} s"
            )
    print(json.dumps({"wrote": str(args.out), "runs": len(result["runs"])}))


if __name__ == "__main__":
    main()
