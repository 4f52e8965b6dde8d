"""Training throughput of the real data pipeline vs random tensors already in memory.

    python -m benchmarks.pipeline_throughput [--img-size 64] [--rounds 3] [--steps 8]

Both feed the same model/optimizer; the two feeds alternate in rounds (A, B, A, B, ...) so
machine noise hits both alike. The pipeline is measured after its cache is built (the
"after the first epoch" state). Writes benchmarks/results/pipeline_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.records import DEVICE, git_commit
from rscompress.config import DataConfig
from rscompress.data.loader import BatchLoader
from rscompress.data.prepare import prepare_data
from rscompress.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def train_steps(model, optimizer, batches, steps: int) -> float:
    """Images per second over ``steps`` optimizer steps fed from ``batches``."""
    seen, t0 = 0, time.perf_counter()
    for _, (x, y) in zip(range(steps), batches, strict=False):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += y.numel()
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()

    data = prepare_data(DataConfig(path=ROOT / "sample" / "ucmerced128", img_size=args.img_size))
    loader = BatchLoader(
        data.images,
        data.labels,
        data.train_indices,
        batch_size=args.batch_size,
        shuffle=True,
        augment=True,
        mean=data.mean,
        std=data.std,
        seed=0,
        drop_last=True,
    )
    x_mem = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y_mem = torch.randint(0, len(data.class_names), (args.batch_size,))

    def in_memory():
        while True:
            yield x_mem, y_mem

    def pipeline():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    torch.manual_seed(0)
    model = create_model(args.model, len(data.class_names))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    feeds = {"in_memory": in_memory(), "pipeline": pipeline()}
    train_steps(model, optimizer, feeds["in_memory"], 2)  # warm-up: allocator, kernels
    rates: dict[str, list[float]] = {k: [] for k in feeds}
    for _ in range(args.rounds):
        for name, feed in feeds.items():
            rates[name].append(train_steps(model, optimizer, feed, args.steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "model": args.model,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "images_per_second": rates,
        "median_images_per_second": med,
        "pipeline_cost": 1 - med["pipeline"] / med["in_memory"],
        "device": DEVICE,
        "commit": git_commit(),
    }
    out = ROOT / "benchmarks" / "results" / "pipeline_throughput.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
