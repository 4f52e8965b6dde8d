"""Training throughput of the recipe before and after issue 31, and with CutMix, interleaved in one process.

    python -m benchmarks.recipe_speed [--img-size 64] [--rounds 5] [--steps 8] [--threads 2]

"before": the suite's parent recipe until then (cosine with warm-up, plain momentum, one
augmentation draw per image, the ragged last batch dropped); "after": the defaults (OneCycle
with cycled momentum, nesterov, one draw per batch, the ragged batch kept); "cutmix": "after"
with each batch CutMixed (α 1, ``mix_batch``), as `train` does a classifier's by default. All
run the fit loop's own pieces (``BatchLoader``, ``build_optimizer``, ``apply_schedule``) on the
bundled sample with the same model; they alternate in rounds so machine noise hits all alike.
Writes benchmarks/results/recipe_speed.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.records import DEVICE, cpu_name, git_commit
from rscompress.config import CLASSIFIER_TRAIN_CUTMIX_ALPHA, DataConfig, OptimConfig
from rscompress.data.loader import BatchLoader
from rscompress.data.prepare import prepare_data
from rscompress.engine.mixing import mix_batch
from rscompress.engine.schedule import apply_schedule, build_optimizer
from rscompress.models import create_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {  # optimiser, augmentation draw, drop_last, CutMix's α (0: none)
    "before": (OptimConfig(schedule="cosine", warmup_epochs=2, nesterov=False), "sample", True, 0.0),
    "after": (OptimConfig(), "batch", False, 0.0),
    "cutmix": (OptimConfig(), "batch", False, CLASSIFIER_TRAIN_CUTMIX_ALPHA),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe_speed")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = prepare_data(DataConfig(path=ROOT / "sample" / "ucmerced128", img_size=args.img_size))

    def feed(loader: BatchLoader):
        """(progress in epochs, batch) forever, as the fit loop walks its epochs."""
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for i, batch in enumerate(loader):
                yield epoch + i / len(loader), batch
            epoch += 1

    state = {}
    mix_rng = random.Random(0)
    for name, (optim_cfg, draw, drop_last, _) in RECIPES.items():
        torch.manual_seed(0)
        model = create_model(args.model, len(data.class_names))
        loader = BatchLoader(
            data.images,
            data.labels,
            data.train_indices,
            batch_size=args.batch_size,
            shuffle=True,
            augment=True,
            augment_draw=draw,
            mean=data.mean,
            std=data.std,
            seed=0,
            drop_last=drop_last,
        )
        state[name] = (model, build_optimizer(model.parameters(), optim_cfg), optim_cfg, feed(loader))

    def steps(name: str, n: int) -> float:
        """Images per second over ``n`` steps of recipe ``name``."""
        model, optimizer, optim_cfg, batches = state[name]
        cutmix = RECIPES[name][3]
        seen, t0 = 0, time.perf_counter()
        for _, (progress, (x, y)) in zip(range(n), batches, strict=False):
            apply_schedule(optimizer, progress, 60, optim_cfg)
            x, y = mix_batch(x, y, len(data.class_names), 0.0, cutmix, mix_rng) if cutmix else (x, y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += y.numel()
        return seen / (time.perf_counter() - t0)

    for name in RECIPES:
        steps(name, 2)  # warm-up: allocator, kernels
    rates: dict[str, list[float]] = {name: [] for name in RECIPES}
    for _ in range(args.rounds):
        for name in RECIPES:
            rates[name].append(steps(name, args.steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "model": args.model,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "images_per_second": rates,
        "median_images_per_second": med,
        "after_over_before": med["after"] / med["before"],
        "cutmix_over_after": med["cutmix"] / med["after"],
        "device": DEVICE,
        "cpu": cpu_name(),
        "commit": git_commit(),
    }
    out = ROOT / "benchmarks" / "results" / "recipe_speed.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
