"""Training-step time of a model in fp32, channels_last, bf16 autocast and both, on this CPU.

    python -m benchmarks.train_step [--models vgg16_bn g_ghost_regnetx_004:small] [--rounds 3]
    python -m benchmarks.train_step --models fcos_mobilenet_v3 --img-size 512 --batch-size 8 --out train_step_detection

A model name with ``:small`` is built with ``small_input=True`` (the suite's students are). Each
step trains the task's own objective, as fit does: cross-entropy for a classifier, a detector's
own loss for a detector, on 6 random boxes per image (sides 2-14 % of the image's).

Why: the suite's vgg16_bn parents train under bf16 autocast + channels_last (suite.Parent);
this is the measurement behind that choice. Each round times every variant once, in turn
(A, B, C, D, A, B, ...), so machine noise hits all alike; the median over rounds is kept and
each variant is reported as a ratio to fp32 of the same model. One thread, random batches
of the suite's shape (64 images, 64 px) unless told. Writes benchmarks/results/OUT.json
(``--out``, default train_step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.records import DEVICE, cpu_flags, cpu_name, git_commit
from rscompress.engine.detection import Detection
from rscompress.engine.precision import bf16_autocast
from rscompress.engine.tasks import Classification
from rscompress.engine.trainer import LossFn
from rscompress.models import create_model
from rscompress.models.registry import model_task

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 21  # a classifier's, as UC Merced's; a detector's is one object class
VARIANTS = {  # name: (channels_last, bf16)
    "fp32": (False, False),
    "channels_last": (True, False),
    "bf16": (False, True),
    "bf16+channels_last": (True, True),
}


Targets = torch.Tensor | list[dict[str, torch.Tensor]]


def _random_targets(batch_size: int, img_size: int, detection: bool) -> Targets:
    if not detection:
        return torch.randint(0, CLASSES, (batch_size,))
    targets = []
    for _ in range(batch_size):
        size = img_size * (0.02 + 0.12 * torch.rand(6, 2))
        corner = torch.rand(6, 2) * (img_size - size)
        targets.append({"boxes": torch.cat([corner, corner + size], 1), "labels": torch.zeros(6, dtype=torch.int64)})
    return targets


def step_seconds(
    model: torch.nn.Module, objective: LossFn, x: torch.Tensor, y: Targets, bf16: bool, steps: int
) -> float:
    """Mean seconds per SGD step on ``objective`` (the task's training loss, as fit trains it)
    over ``steps`` steps (after one untimed warm-up step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with bf16_autocast(model, bf16):
            loss, _ = objective(model, x, y, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return statistics.fmean(times[1:])


def measure(spec: str, *, img_size: int, batch_size: int, rounds: int, steps: int) -> dict:
    model_name, _, option = spec.partition(":")
    detection = model_task(model_name) == "detection"
    classes = 1 if detection else CLASSES
    objective = (Detection(("object",)) if detection else Classification(CLASSES)).objective(0.0)
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, img_size, img_size)
    y = _random_targets(batch_size, img_size, detection)
    models = {}
    for name, (channels_last, _) in VARIANTS.items():
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=classes, **({"small_input": True} if option == "small" else {}))
        models[name] = model.to(memory_format=torch.channels_last) if channels_last else model
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, (channels_last, bf16) in VARIANTS.items():
            xs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            seconds[name].append(step_seconds(models[name], objective, xs, y, bf16, steps))
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
    parser.add_argument("--out", default="train_step", help="results file name, without .json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "what": "seconds per training step (forward, backward, SGD), one thread, random batch",
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps": args.steps,
        "out": args.out,
        "models": {
            m: measure(m, img_size=args.img_size, batch_size=args.batch_size, rounds=args.rounds, steps=args.steps)
            for m in args.models
        },
        "device": DEVICE,
        "cpu": cpu_name(),
        "bf16_flags": cpu_flags(("avx512_bf16", "amx_bf16")),  # what bf16 matmuls and convs run on
        "torch": torch.__version__,
        "commit": git_commit(),
    }
    out = ROOT / "benchmarks" / "results" / f"{args.out}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for model, variants in result["models"].items():
        print(model, "  ".join(f"{n} {v['median_s']:.2f}s ({v['speedup_vs_fp32']:.2f}x)" for n, v in variants.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
