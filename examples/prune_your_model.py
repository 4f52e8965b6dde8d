"""Prune your own model with rscompress's Python API: a torchvision ResNet-18 trained on the
bundled UC Merced sample through a plain DataLoader, pruned by L1RR to 35 % of its MACs,
saved without pickle, reloaded, exported to ONNX and timed.

    .venv/bin/python examples/prune_your_model.py [--out runs/example] [--epochs 6]

About 2.5 minutes on 2 CPU cores at the default 6 epochs. Swap in your own model, loaders and numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchvision import transforms

import rscompress as rsc

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "ucmerced128"
IMG_SIZE = 64


def load_sample(root: Path) -> TensorDataset:
    """Every image of a class-folder tree, decoded once at IMG_SIZE px and normalised."""
    to_tensor = transforms.Compose(
        [
            transforms.Resize((IMG_SIZE, IMG_SIZE)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    folder = torchvision.datasets.ImageFolder(str(root), transform=to_tensor)
    images, labels = zip(*folder, strict=True)
    return TensorDataset(torch.stack(images), torch.tensor(labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example"), help="folder for the run dirs")
    parser.add_argument(
        "--epochs", type=int, default=6, help="parent training epochs; L1RR's sparse phase and fine-tuning take half"
    )
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out {args.out} exists: choose another folder (the example starts from scratch)")
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: give at least 1")
    phase_epochs = max(1, args.epochs // 2)
    torch.manual_seed(0)

    data = load_sample(SAMPLE)
    train_set, val_set = random_split(data, [0.8, 0.2], generator=torch.Generator().manual_seed(0))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=128)
    example = torch.zeros(1, 3, IMG_SIZE, IMG_SIZE)

    # 1. Your model, trained as you like; here with rscompress's recommended recipe.
    model = torchvision.models.resnet18(num_classes=21)
    # No CutMix (the default for a classifier): it pays over long runs, not a few epochs (docs/training.md).
    trained = rsc.train(model, train_loader, val_loader, epochs=args.epochs, cutmix_alpha=0, out=args.out / "parent")
    print(f"parent: val top-1 {trained.val.top1:.3f}")

    # 2. L1RR to 35 % of the MACs: reweighted L1 sparse training, pruning, fine-tuning.
    result = rsc.prune(
        model,
        train_loader,
        val_loader,
        example_input=example,
        method="l1rr",
        target_macs=0.35,
        finetune_epochs=phase_epochs,
        method_options={"sparse_epochs": phase_epochs},
        out=args.out / "l1rr",  # killed? run the same call again with resume=True
    )
    print(
        f"pruned: {result.macs_kept:.1%} of the MACs, {result.params_kept:.1%} of the params, "
        f"val top-1 {result.val.top1:.3f}"
    )

    # 3. A pickle-free file (config.json + model.safetensors), loaded back as a fresh model.
    saved = rsc.save(result.model, args.out / "l1rr-model", example_input=example, class_names=data_classes())
    reloaded = rsc.load(saved)
    x = next(iter(val_loader))[0][:8]
    result.model.eval()
    print(f"reloaded: max |difference| {(reloaded(x) - result.model(x)).abs().max().item():.2e}")

    # 4. ONNX for deployment, checked against PyTorch, and its latency next to the parent's.
    parity = rsc.export_onnx(result.model, args.out / "l1rr.onnx", example_input=example, images=x)
    print(
        f"onnx: {args.out / 'l1rr.onnx'} (parity {parity.max_scaled_diff:.1e}, top-1 agreement {parity.top1_agree:.0%})"
    )
    for row in rsc.bench(model, result.model, example_input=example, engines=("onnxruntime",), repeats=30):
        print(f"{row['name']}: {row['median_ms']:.2f} ms bs1, speedup {row['speedup']:.2f}x")


def data_classes() -> list[str]:
    return sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())


if __name__ == "__main__":
    main()
