"""Epoch time of the NAS search and of L1RR sparse training in fp32 vs bf16 + channels_last.

    python -m benchmarks.phase_step [--models vgg16_bn] [--rounds 2] [--batches 3]

Why: with a bf16 parent the suite now runs these phases under the fine-tuning recipe's
precision (select.py); this measures what that buys through the real code path
(``nas_search``, ``sparse_train``), not a bare training step (train_step.py does that).
Each phase runs 2 epochs of ``batches`` random train batches (64 images, 64 px) and as many
val batches; the second epoch is timed (the first pays one-off costs). Rounds interleave the
variants (fp32, bf16, fp32, ...) so machine noise hits both; medians are kept. One thread.
A sparse-training epoch includes its float32 validation pass, so its ratio is the one a run
sees. Writes benchmarks/results/phase_step.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.records import DEVICE, cpu_name, git_commit
from rscompress.models import create_model
from rscompress.pruning.methods.l1rr import attention_layers
from rscompress.pruning.methods.nas import nas_search
from rscompress.pruning.methods.sparse_training import SparsityConfig, sparse_train

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"fp32": False, "bf16+channels_last": True}  # name: bf16 and channels_last both on


class RandomBatches:
    """``n`` fixed random (images, labels) batches; ``set_epoch`` as the suite's loader has."""

    def __init__(self, n: int, batch_size: int, img_size: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.batches = [
            (
                torch.randn(batch_size, 3, img_size, img_size, generator=gen),
                torch.randint(0, 21, (batch_size,), generator=gen),
            )
            for _ in range(n)
        ]

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:  # sparse training reads the epoch's step count
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def nas_epoch_seconds(model_name: str, mixed: bool, batches: int, img_size: int) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=21)
    stamps: list[float] = []
    nas_search(
        model,
        RandomBatches(batches, 64, img_size, 0),
        RandomBatches(batches, 64, img_size, 1),
        img_size=img_size,
        target_macs=0.35,
        search_epochs=2,
        warmup_epochs=0,
        progress=lambda *_: stamps.append(time.perf_counter()),
        bf16=mixed,
        channels_last=mixed,
    )
    return stamps[1] - stamps[0]


def sparse_epoch_seconds(model_name: str, mixed: bool, batches: int, img_size: int) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=21)
    cfg = SparsityConfig(epochs=2, attention_layers=attention_layers(model_name), bf16=mixed, channels_last=mixed)
    _, report = sparse_train(
        model, RandomBatches(batches, 64, img_size, 0), RandomBatches(batches, 64, img_size, 1), cfg
    )
    return report.history[1]["seconds"]


PHASES = {"nas_search": nas_epoch_seconds, "l1rr_sparse_training": sparse_epoch_seconds}


def measure(model_name: str, *, rounds: int, batches: int, img_size: int) -> dict:
    result = {}
    for phase, epoch_seconds in PHASES.items():
        seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(rounds):
            for name, mixed in VARIANTS.items():
                seconds[name].append(epoch_seconds(model_name, mixed, batches, img_size))
        fp32 = statistics.median(seconds["fp32"])
        result[phase] = {
            name: {"median_s": statistics.median(s), "speedup_vs_fp32": fp32 / statistics.median(s), "rounds_s": s}
            for name, s in seconds.items()
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    # Plain models: a suite SE parent is pruned (and sparse-trained) with its SE blocks folded.
    parser.add_argument("--models", nargs="+", default=["vgg16_bn", "resnet18"])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "what": "seconds per epoch (second of two) of the NAS search and of L1RR sparse training, one thread, "
        "random batches of 64 images",
        "img_size": args.img_size,
        "batches": args.batches,
        "rounds": args.rounds,
        "models": {},
        "device": DEVICE,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "commit": git_commit(),
    }
    out = ROOT / "benchmarks" / "results" / "phase_step.json"
    for model in args.models:
        result["models"][model] = measure(model, rounds=args.rounds, batches=args.batches, img_size=args.img_size)
        out.write_text(json.dumps(result, indent=2) + "\n")  # after each model: a later failure keeps it
        for phase, variants in result["models"][model].items():
            print(
                model,
                phase,
                "  ".join(f"{n} {v['median_s']:.1f}s ({v['speedup_vs_fp32']:.2f}x)" for n, v in variants.items()),
                flush=True,
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
