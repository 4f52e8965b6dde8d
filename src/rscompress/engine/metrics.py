"""Classification metrics with torchmetrics: OA (top-1), Cohen's kappa, per-class accuracy,
confusion matrix, mean loss."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
)

from rscompress.engine.device import model_device


@dataclass
class EvalResult:
    top1: float
    kappa: float
    loss: float
    n_images: int
    per_class_accuracy: list[float]
    confusion: list[list[int]]

    def summary(self) -> dict[str, float | int]:
        return {"top1": self.top1, "kappa": self.kappa, "loss": self.loss, "n_images": self.n_images}

    @property
    def score(self) -> tuple[float, float]:
        """What the best epoch on val is chosen by (larger is better): top-1, then the loss."""
        return (self.top1, -self.loss)

    def history(self) -> dict[str, float]:
        """The val fields of an epoch's history row."""
        return {"val_loss": self.loss, "val_top1": self.top1, "val_kappa": self.kappa}

    def describe(self) -> str:
        return f"val {self.top1:.3f} (kappa {self.kappa:.3f})"

    def to_dict(self) -> dict:
        return {**self.summary(), "per_class_accuracy": self.per_class_accuracy, "confusion": self.confusion}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    channels_last: bool = False,
) -> EvalResult:
    """Metrics of ``model`` over ``batches`` (CPU tensors), computed on the model's device."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    # Evaluation runs on one rank only: no cross-process sync, or the other ranks would hang.
    top1 = MulticlassAccuracy(num_classes, average="micro", sync_on_compute=False)
    per_class = MulticlassAccuracy(num_classes, average="none", sync_on_compute=False)
    kappa = MulticlassCohenKappa(num_classes, sync_on_compute=False)
    confusion = MulticlassConfusionMatrix(num_classes, sync_on_compute=False)
    loss_sum, n = 0.0, 0
    for x, y in batches:
        x = x.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        logits = model(x).float().cpu()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        n += y.numel()
        for metric in (top1, per_class, kappa, confusion):
            metric.update(logits, y)
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate() got no images")
    return EvalResult(
        top1=top1.compute().item(),
        kappa=kappa.compute().item(),
        loss=loss_sum / n,
        n_images=n,
        per_class_accuracy=[float(v) for v in per_class.compute().tolist()],
        confusion=confusion.compute().tolist(),
    )
