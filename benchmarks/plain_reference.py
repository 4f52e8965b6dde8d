"""A plain PyTorch training loop with no rscompress code: the reference our recipe must match.

    python -m benchmarks.plain_reference --data ../shared/data/ucmerced --seeds 0 1 2
    python -m benchmarks.plain_reference --data ../shared/data/ucmerced --seeds 0 1 2 --variant aug-per-sample

torchvision ``resnet18`` from scratch; images resized once with PIL bilinear and held as uint8;
a seeded stratified 70/10/20 split; per-channel mean/std of the train split; SGD (nesterov,
weight decay on every parameter) under ``OneCycleLR`` stepped every batch; label smoothing
0.1; one flip/flip/quarter-turn draw per batch; the best epoch on val, tested once.

``--variant`` changes one thing of that recipe (``VARIANTS`` lists them) for the ablation of
issue 31. ``--split-json PATTERN`` (``{seed}`` in it) takes each seed's train/val/test lists from
a split file (``python -m benchmarks.recipe_ablation splits`` writes rscompress's) instead of the
loop's own split, so the two are compared on the same images. Each finished (dataset, variant,
split, seed) appends one record to ``--results``; a cell that has a record is skipped, so a
killed run re-run does only what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


@dataclass(frozen=True)
class Recipe:
    schedule: str = "onecycle"  # onecycle | cosine (linear warm-up, then cosine to 0)
    lr: float = 0.1
    pct_start: float = 0.15  # onecycle
    cycle_momentum: bool = True  # onecycle: momentum 0.95 -> 0.85 -> 0.95 against the lr
    warmup_epochs: int = 2  # cosine
    nesterov: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    drop_last: bool = False
    augment: str = "batch"  # batch (one draw moves the whole batch) | sample | none
    normalize: str = "train"  # train (mean/std of the train split) | none (x / 255)
    label_smoothing: float = 0.1
    epochs: int = 60


# One change each from the reference, towards what `rscompress train` did before issue 31.
VARIANTS: dict[str, Recipe] = {
    "reference": Recipe(),
    "cosine-warmup2": Recipe(schedule="cosine"),
    "no-nesterov": Recipe(nesterov=False),
    "no-cycle-momentum": Recipe(cycle_momentum=False),
    "aug-per-sample": Recipe(augment="sample"),
    "no-augment": Recipe(augment="none"),
    "drop-last": Recipe(drop_last=True),
    "no-normalize": Recipe(normalize="none"),
    # Everything rscompress's suite recipe did differently at once (cosine after 2 warm-up
    # epochs, plain momentum, augmentation drawn per sample).
    "rscompress-recipe": Recipe(schedule="cosine", nesterov=False, augment="sample"),
}


def load_images(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Every image of a class-folder tree, resized to size×size (PIL bilinear), as N×S×S×3 uint8,
    with labels, class names and each image's ``class/file`` path."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    pixels, labels, keys = [], [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    pixels.append(np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)))
                labels.append(label)
                keys.append(f"{name}/{path.name}")
    return np.stack(pixels), np.asarray(labels, dtype=np.int64), classes, keys


def split_from_file(path: Path, keys: list[str]) -> tuple[np.ndarray, ...]:
    """Train/val/test rows named by a split file's ``{"train": [{"path": ...}, ...], ...}``."""
    row = {key: i for i, key in enumerate(keys)}
    data = json.loads(path.read_text())
    return tuple(
        np.asarray([row[entry["path"]] for entry in data[part]], dtype=np.int64) for part in ("train", "val", "test")
    )


def stratified_split(labels: np.ndarray, seed: int, fractions=(0.7, 0.1)) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_train, n_val = round(fractions[0] * rows.size), round(fractions[1] * rows.size)
        train += rows[:n_train].tolist()
        val += rows[n_train : n_train + n_val].tolist()
        test += rows[n_train + n_val :].tolist()
    return tuple(np.asarray(s, dtype=np.int64) for s in (train, val, test))


def to_input(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 B×H×W×3 -> contiguous float B×3×H×W (a permuted view trains ~10 % slower here)."""
    return (((batch.permute(0, 3, 1, 2).float() / 255.0) - mean) / std).contiguous()


def dihedral(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random horizontal flip, vertical flip and quarter turn of a B×H×W×C batch."""
    if torch.randint(2, (1,), generator=generator):
        batch = batch.flip(2)
    if torch.randint(2, (1,), generator=generator):
        batch = batch.flip(1)
    return torch.rot90(batch, int(torch.randint(4, (1,), generator=generator)), dims=(1, 2))


def augment_batch(batch: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    if mode == "none":
        return batch
    if mode == "batch":
        return dihedral(batch, generator)
    return torch.stack([dihedral(image, generator) for image in batch.unsqueeze(1)]).squeeze(1)


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), 256):
        x = to_input(images[start : start + 256], mean, std)
        correct += (model(x).argmax(1) == labels[start : start + 256]).sum().item()
    return correct / len(labels)


def fit(
    model: torch.nn.Module,
    data: torch.Tensor,
    targets: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    seed: int,
    recipe: Recipe,
) -> tuple[float, int, float]:
    """Train ``model`` with ``recipe``; it ends with its best epoch on val. (val top-1, that
    epoch, seconds)."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )
    n_train = len(train_idx)
    steps = n_train // recipe.batch_size if recipe.drop_last else math.ceil(n_train / recipe.batch_size)
    total = steps * recipe.epochs
    if recipe.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=recipe.lr,
            total_steps=total,
            pct_start=recipe.pct_start,
            cycle_momentum=recipe.cycle_momentum,
        )
    else:
        warm = recipe.warmup_epochs * steps

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    generator = torch.Generator().manual_seed(seed)
    val_x, val_y = data[val_idx], targets[val_idx]
    best_val, best_epoch, best_state = -1.0, -1, None
    t0 = time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(n_train, generator=generator)]
        for step in range(steps):
            rows = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            x = to_input(augment_batch(data[rows], recipe.augment, generator), mean, std)
            loss = F.cross_entropy(model(x), targets[rows], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val = accuracy(model, val_x, val_y, mean, std)
        if val > best_val:
            best_val, best_epoch = val, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return best_val, best_epoch, time.perf_counter() - t0


def prune_l1(model: torch.nn.Module, img_size: int, target_macs: float) -> tuple[torch.nn.Module, float]:
    """A copy of ``model`` pruned by Torch-Pruning's MetaPruner (L1 group magnitude, the same
    ratio in every layer, the classifier kept), its ratio bisected until the MACs kept are
    within 1 % of ``target_macs``; (model, MACs kept)."""
    import copy

    import torch_pruning as tp

    example = torch.randn(1, 3, img_size, img_size)
    base = tp.utils.count_ops_and_params(model, example)[0]
    lo, hi, best = 0.0, 0.99, None
    for _ in range(40):
        ratio = (lo + hi) / 2
        pruned = copy.deepcopy(model).eval()
        tp.pruner.MetaPruner(
            pruned,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[pruned.fc],
        ).step()
        kept = tp.utils.count_ops_and_params(pruned, example)[0] / base
        if best is None or abs(kept / target_macs - 1) < abs(best[1] / target_macs - 1):
            best = (pruned, kept)
        if abs(kept / target_macs - 1) <= 0.01:
            break
        lo, hi = (ratio, hi) if kept > target_macs else (lo, ratio)
    assert best is not None
    return best


def train_one(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int,
    recipe: Recipe,
    split: tuple[np.ndarray, ...] | None = None,
    prune: tuple[float, Recipe] | None = None,
) -> dict:
    """The recipe's parent, tested once; with ``prune`` = (MACs share, fine-tuning recipe), that
    parent pruned by ``prune_l1`` and fine-tuned, tested once too."""
    torch.manual_seed(seed)
    train_idx, val_idx, test_idx = split if split is not None else stratified_split(labels, seed)
    data = torch.from_numpy(images)
    targets = torch.from_numpy(labels)
    if recipe.normalize == "train":
        pixels = data[train_idx].reshape(-1, 3).double() / 255.0
        mean, std = pixels.mean(0), pixels.std(0)
    else:
        mean, std = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    mean, std = mean.float().view(1, 3, 1, 1), std.float().view(1, 3, 1, 1)

    model = torchvision.models.resnet18(num_classes=num_classes)
    best_val, best_epoch, seconds = fit(model, data, targets, train_idx, val_idx, mean, std, seed, recipe)
    result = {
        "val_top1": best_val,
        "top1": accuracy(model, data[test_idx], targets[test_idx], mean, std),
        "best_epoch": best_epoch,
        "train_seconds": seconds,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(test_idx),
    }
    if prune is None:
        return result
    target, finetune = prune
    pruned, macs_kept = prune_l1(model, images.shape[1], target)
    val, epoch, seconds = fit(pruned, data, targets, train_idx, val_idx, mean, std, seed, finetune)
    return {
        **result,
        "method": "tp-l1",
        "target_macs": target,
        "macs_kept": macs_kept,
        "parent_val_top1": result["val_top1"],
        "parent_top1": result["top1"],
        "val_top1": val,
        "top1": accuracy(pruned, data[test_idx], targets[test_idx], mean, std),
        "best_epoch": epoch,
        "finetune_seconds": seconds,
        "finetune": asdict(finetune),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plain_reference", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="class-folder dataset root")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="reference")
    parser.add_argument("--epochs", type=int, help="override the recipe's 60 epochs")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--split-json", help="split file per seed, a pattern with {seed}; default: the loop's own split"
    )
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/plain_reference.jsonl"))
    parser.add_argument(
        "--prune-macs",
        type=float,
        help="then prune the parent with Torch-Pruning (L1, uniform) to this share of its MACs and fine-tune it",
    )
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--finetune-lr", type=float, default=0.02, help="OneCycle peak of the fine-tuning")
    args = parser.parse_args()
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    torch.set_num_threads(args.threads)
    recipe = VARIANTS[args.variant]
    if args.epochs:
        recipe = replace(recipe, epochs=args.epochs)
    dataset = args.data.resolve().name
    split_source = "rscompress" if args.split_json else "plain"
    key = lambda r: (  # noqa: E731
        r["dataset"], r["variant"], r.get("split", "plain"), r["seed"], r["epochs"], r["img_size"], r.get("target_macs")
    )  # fmt: skip
    done = set()
    if args.results.is_file():
        done = {key(json.loads(line)) for line in args.results.read_text().splitlines() if line.strip()}
    cell = (dataset, args.variant, split_source, recipe.epochs, args.img_size, args.prune_macs)
    todo = [s for s in args.seeds if (*cell[:3], s, *cell[3:]) not in done]
    prune = None
    if args.prune_macs is not None:
        prune = (args.prune_macs, replace(recipe, lr=args.finetune_lr, epochs=args.finetune_epochs))
    if not todo:
        print("every cell has a record")
        return
    images, labels, classes, keys = load_images(args.data, args.img_size)
    commit = git_commit()
    for seed in todo:
        split = split_from_file(Path(args.split_json.format(seed=seed)), keys) if args.split_json else None
        result = train_one(images, labels, len(classes), seed, recipe, split, prune)
        record = {
            "source": "plain-reference",
            "dataset": dataset,
            "model": "resnet18",
            "variant": args.variant,
            "split": split_source,
            "seed": seed,
            "split_seed": seed,
            "img_size": args.img_size,
            "epochs": recipe.epochs,
            **result,
            "recipe": asdict(recipe),
            "threads": args.threads,
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "commit": commit,
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        pruned = f" tp-l1 {result['macs_kept']:.1%} MACs (parent test {result['parent_top1']:.4f})" if prune else ""
        print(
            f"{dataset} {args.variant}{pruned} seed {seed}: val {result['val_top1']:.4f} test {result['top1']:.4f} "
            f"(best epoch {result['best_epoch'] + 1}, {result['train_seconds']:.0f} s)"
        )


if __name__ == "__main__":
    main()
