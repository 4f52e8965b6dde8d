"""How much of the MAC saving turns into CPU time (issue: deployment).

    python -m benchmarks.speedup [--repeats N] [--profile]

ResNet-18 at 64 px (21 classes), pruned with uniform L1 to 50 / 30 / 10 % of its MACs three
ways: plain Torch-Pruning (``MagnitudePruner``, its ratio bisected to the same MACs), ours
without rounding, and ours with ``--round-to 8`` / ``16``. Every model is exported to ONNX and
timed with ONNX Runtime, batch 1, 1 thread, all interleaved in this one process (so machine
noise hits all alike). ``efficiency = speedup / macs_ratio``; the bar is >= 0.8 for models
keeping >= 25 % of the MACs. Weights are random: latency does not depend on their values.
``--profile`` adds ONNX Runtime's per-operator-type time split of the parent and of the
smallest model, to show where the time of a tiny model goes.

Writes benchmarks/results/speedup.json. Minutes, not hours: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from benchmarks.records import DEVICE, cpu_name, git_commit
from rscompress.deploy.latency import measure
from rscompress.deploy.onnx import export_onnx
from rscompress.deploy.runtime import INPUT_NAME
from rscompress.io_utils import write_json_atomic
from rscompress.models import create_model
from rscompress.models.complexity import count_macs_params
from rscompress.pruning.budget import prune_to_budget

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "speedup.json"
IMG_SIZE = 64
TARGETS = (0.5, 0.3, 0.1)
BAR = 0.8  # efficiency required where >= 25 % of the MACs are kept


def parent_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=21).eval()


def plain_torch_pruning(model: nn.Module, target: float) -> nn.Module:
    """TP's own MagnitudePruner (uniform L1, no rounding), its ratio bisected to ``target`` MACs."""
    example = torch.zeros(1, 3, IMG_SIZE, IMG_SIZE)
    parent_macs = count_macs_params(model, IMG_SIZE)[0]

    def pruned_at(ratio: float) -> nn.Module:
        pruned = parent_model()
        pruned.load_state_dict(model.state_dict())
        pruner = tp.pruner.MagnitudePruner(
            pruned,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[pruned.fc],
        )
        pruner.step()
        return pruned.eval()

    lo, hi = 0.0, 0.99
    best = (float("inf"), model)
    for _ in range(30):
        mid = (lo + hi) / 2
        candidate = pruned_at(mid)
        kept = count_macs_params(candidate, IMG_SIZE)[0] / parent_macs
        best = min(best, (abs(kept / target - 1), candidate), key=lambda b: b[0])
        if best[0] <= 0.01:
            break
        lo, hi = (mid, hi) if kept > target else (lo, mid)
    return best[1]


def variants(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = [("parent", model)]
    for target in TARGETS:
        out.append((f"tp-plain@{target:g}", plain_torch_pruning(model, target)))
        for round_to in (None, 8, 16):
            pruned, _ = prune_to_budget(model, "l1", IMG_SIZE, target_macs=target, round_to=round_to)
            out.append((f"ours{'' if round_to is None else f'-round{round_to}'}@{target:g}", pruned.eval()))
    return out


def op_time_split(model: nn.Module, runs: int = 200) -> dict[str, float]:
    """Share of ONNX Runtime's kernel time per operator type (bs1, 1 thread)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, IMG_SIZE, Path(tmp) / "m.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = torch.randn(1, 3, IMG_SIZE, IMG_SIZE).numpy()
        for _ in range(runs):
            session.run(None, {INPUT_NAME: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {op: round(t / total, 3) for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    models = variants(parent_model())
    results = measure(
        [(name, m, IMG_SIZE) for name, m in models],
        batch_sizes=(1,),
        threads=(1,),
        engines=("onnxruntime",),
        warmup=20,
        repeats=args.repeats,
        peak_rss=False,
    )
    rows: list[dict[str, Any]] = []
    for r in results:
        kept = 1 / r.macs_ratio
        rows.append(
            {
                "model": r.name,
                "macs": r.macs,
                "macs_kept": round(kept, 4),
                "median_ms": round(r.median_ms, 3),
                "p90_ms": round(r.p90_ms, 3),
                "speedup": round(r.speedup, 3),
                "macs_ratio": round(r.macs_ratio, 3),
                "efficiency": round(r.speedup / r.macs_ratio, 3),
                **({"meets_bar": r.speedup / r.macs_ratio >= BAR} if kept >= 0.25 and r.name != "parent" else {}),
            }
        )
    out: dict[str, Any] = {
        "setting": f"resnet18 {IMG_SIZE} px, ONNX Runtime, batch 1, 1 thread, {args.repeats} interleaved repeats",
        "device": DEVICE,
        "cpu": cpu_name(),
        "commit": git_commit(),
        "command": "python -m benchmarks.speedup"
        + (" --profile" if args.profile else "")
        + ("" if args.repeats == 300 else f" --repeats {args.repeats}"),
        "rows": rows,
    }
    if args.profile:
        smallest = min(models[1:], key=lambda nm: count_macs_params(nm[1], IMG_SIZE)[0])
        out["op_time_split"] = {"parent": op_time_split(models[0][1]), smallest[0]: op_time_split(smallest[1])}
    write_json_atomic(RESULTS, out)
    for row in rows:
        print(json.dumps(row))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
