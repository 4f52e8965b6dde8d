"""Small models with non-trivial BN statistics, and hand-written run dirs, for the deploy tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rscompress.artifacts import RunConfig, RunDir
from rscompress.models import create_model
from rscompress.pruning import prune

NUM_CLASSES = 7


def with_bn_stats(model: nn.Module, img_size: int = 32, seed: int = 0) -> nn.Module:
    """Random weights, but BN running stats moved off 0/1 by a few train-mode forwards, so an
    exporter that dropped or mis-folded a BN would change the logits; returned in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, img_size, img_size, generator=generator) * 1.5 + 0.3)
    return model.eval()


def make_model(name: str, img_size: int = 32, seed: int = 0) -> nn.Module:
    """A registered model, or ``pruned_resnet18``: resnet18 with half its channels removed (L1)."""
    torch.manual_seed(seed)
    if name == "pruned_resnet18":
        model = create_model("resnet18", NUM_CLASSES)
        prune(model, "l1", torch.randn(1, 3, img_size, img_size), ratio=0.5)
    else:
        model = create_model(name, NUM_CLASSES)
    return with_bn_stats(model, img_size, seed)


def make_run(path: Path, parent: Path | None = None, img_size: int = 16, seed: int = 0) -> RunDir:
    """A finished-looking resnet18 run dir written by hand (no training, no data)."""
    run = RunDir(path)
    path.mkdir(parents=True)
    run.save_config(
        RunConfig(
            model="resnet18",
            num_classes=NUM_CLASSES,
            class_names=[f"c{i}" for i in range(NUM_CLASSES)],
            img_size=img_size,
            mean=[0.4, 0.4, 0.4],
            std=[0.2, 0.2, 0.2],
            parent=str(parent) if parent is not None else None,
        )
    )
    run.save_weights(make_model("resnet18", img_size, seed))
    return run
