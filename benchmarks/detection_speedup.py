"""How much of a detector's MAC saving turns into CPU time (issue 33 bar: bs1 speedup ÷ MACs
reduction >= 0.8 at 35 % of the MACs).

    python -m benchmarks.detection_speedup [--img-size 512] [--repeats 30]

Each registry detector (random weights: latency does not depend on their values) pruned with
l1 to 35 % of its MACs, unrounded and with ``--round-to`` 8, 16 and 32, exported as ``RawPredictions``
(deploy: backbone, FPN and head up to the raw outputs) and timed with ONNX Runtime at batch 1,
1 thread, interleaved with its parent in one process. Writes results/detection_speedup.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.records import cpu_name, git_commit
from rscompress.deploy.latency import measure
from rscompress.errors import UserError
from rscompress.io_utils import write_json_atomic
from rscompress.models import create_model, list_models
from rscompress.models.detection import deployable
from rscompress.pruning.budget import prune_to_budget

RESULTS = Path("benchmarks/results/detection_speedup.json")
TARGET = 0.35
ROUND_TO = (None, 8, 16, 32)  # channel multiples: which the CPU's kernels turn into time best


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection_speedup")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile (shown with the table)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in list_models(task="detection"):
        torch.manual_seed(0)
        parent = create_model(name, 1, img_size=args.img_size).eval()
        models = [(name, deployable(parent), args.img_size)]
        for round_to in ROUND_TO:
            label = f"{name} l1 {TARGET:.0%} round_to {round_to}"
            try:
                pruned, _ = prune_to_budget(parent, "l1", args.img_size, target_macs=TARGET, round_to=round_to)
            except UserError as err:  # coarse multiples may not land within ±1 % of the target
                rows.append({"name": label, "unreachable": str(err)})
                print(f"{label}: {err}", flush=True)
                continue
            models.append((label, deployable(pruned.eval()), args.img_size))
        results = measure(
            models, batch_sizes=(1,), threads=(1,), engines=("onnxruntime",), repeats=args.repeats, peak_rss=False
        )
        for r in results:
            rows.append({**r.to_dict(), "efficiency": r.speedup / r.macs_ratio})
            print(f"{r.name}: {r.median_ms:.1f} ms, x{r.speedup:.2f} for x{r.macs_ratio:.2f} fewer MACs", flush=True)
    write_json_atomic(
        RESULTS,
        {
            "img_size": args.img_size,
            "target_macs": TARGET,
            "rows": rows,
            "cpu": cpu_name(),
            "commit": git_commit(),
            **({"note": args.note} if args.note else {}),
        },
    )


if __name__ == "__main__":
    main()
