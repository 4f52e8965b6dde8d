"""Training-step time of a model in fp32, channels_last, bf16 autocast and both, on this CPU.

    python -m benchmarks.train_step [--models vgg16_bn g_ghost_regnetx_004:small] [--rounds 3]

A model name with ``:small`` is built with ``small_input=True`` (the suite's students are).

Why: the suite's vgg16_bn parents train under bf16 autocast + channels_last (suite.Parent);
this is the measurement behind that choice. Each round times every variant once, in turn
(A, B, C, D, A, B, ...), so machine noise hits all alike; the median over rounds is kept and
each variant is reported as a ratio to fp32 of the same model. One thread, random batches
of the suite's shape (64 images, 64 px). Writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.records import DEVICE, cpu_name, git_commit
from rscompress.models import create_model

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (channels_last, bf16)
    "fp32": (False, False),
    "channels_last": (True, False),
    "bf16": (False, True),
    "bf16+channels_last": (True, True),
}


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, steps: int) -> float:
    """Mean seconds per SGD step over ``steps`` steps (after one untimed warm-up step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return statistics.fmean(times[1:])


def measure(spec: str, *, img_size: int, batch_size: int, rounds: int, steps: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, img_size, img_size)
    y = torch.randint(0, 21, (batch_size,))
    model_name, _, option = spec.partition(":")
    models = {}
    for name, (channels_last, _) in VARIANTS.items():
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=21, small_input=option == "small")
        models[name] = model.to(memory_format=torch.channels_last) if channels_last else model
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, (channels_last, bf16) in VARIANTS.items():
            xs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            seconds[name].append(step_seconds(models[name], xs, y, bf16, steps))
    fp32 = statistics.median(seconds["fp32"])
    return {
        name: {"median_s": statistics.median(s), "speedup_vs_fp32": fp32 / statistics.median(s), "rounds_s": s}
        for name, s in seconds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["vgg16_bn", "se_resnet18", "g_ghost_regnetx_004:small"])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "what": "seconds per training step (forward, backward, SGD), one thread, random batch",
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps": args.steps,
        "models": {
            m: measure(m, img_size=args.img_size, batch_size=args.batch_size, rounds=args.rounds, steps=args.steps)
            for m in args.models
        },
        "device": DEVICE,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "commit": git_commit(),
    }
    out = ROOT / "benchmarks" / "results" / "train_step.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for model, variants in result["models"].items():
        print(model, "  ".join(f"{n} {v['median_s']:.2f}s ({v['speedup_vs_fp32']:.2f}x)" for n, v in variants.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
