"""What the fit loop needs to know about a task: how its targets travel, what its default loss
is, how a batch counts and how val is scored. Classification is one; detection
(engine/detection.py) another, so both train through the same loop with the same schedule,
checkpoints, resume and divergence checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from rscompress.engine.metrics import evaluate

# (model, inputs, targets, epoch) -> (loss, outputs). Methods add their terms here.
LossFn = Callable[[nn.Module, torch.Tensor, Any, int], tuple[torch.Tensor, Any]]


class Evaluation(Protocol):
    """A model's metrics on one split, as the loop reads them."""

    loss: float  # must be finite for the epoch to be kept

    @property
    def score(self) -> tuple[float, float]: ...  # the best epoch on val has the largest

    def history(self) -> dict[str, float]: ...  # val_* fields of the history row

    def describe(self) -> str: ...  # the console's view of it

    def summary(self) -> dict[str, Any]: ...  # for metrics.json


class Task(Protocol):
    # The gradient-norm clip of a fit whose config leaves it to the task (None: never).
    default_clip_grad_norm: float | None
    # Plain (un-augmented) train batches to recompute BatchNorm statistics over before val
    # (FitConfig.precise_bn_batches), and how many of them a fit whose config leaves it to the
    # task takes; None: the task was given none.
    statistics_batches: Iterable | None
    default_precise_bn_batches: int

    def objective(self, label_smoothing: float) -> LossFn: ...

    def to_device(self, targets: Any, device: torch.device) -> Any: ...

    def count(self, targets: Any) -> int: ...  # images in the batch

    def correct(self, outputs: Any, targets: Any) -> int | None: ...  # None: no train accuracy

    def evaluate(self, model: nn.Module, batches: Iterable, channels_last: bool) -> Evaluation: ...

    # A forward pass in training mode whose outputs are not used (BatchNorm statistics).
    def forward(self, model: nn.Module, x: torch.Tensor, targets: Any) -> object: ...

    # The loss on a held-out batch with the weights' statistics fixed (eval-mode BatchNorm);
    # gradients flow to whatever requires them (the NAS search's channel gates).
    def score_loss(self, model: nn.Module, x: torch.Tensor, targets: Any) -> torch.Tensor: ...


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss_fn(model, x, y, epoch):
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits

    return loss_fn


class Classification:
    """Labels are an int64 tensor, or class probabilities (N, classes) where training batches
    are mixed (engine/mixing.py); val is scored by top-1 (then loss)."""

    default_clip_grad_norm: float | None = None
    # Its fits are given no plain batches: classifiers keep their running statistics.
    statistics_batches: Iterable | None = None
    default_precise_bn_batches = 0

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def objective(self, label_smoothing: float) -> LossFn:
        return cross_entropy_loss(label_smoothing)

    def to_device(self, targets: torch.Tensor, device: torch.device) -> torch.Tensor:
        return targets.to(device, non_blocking=True)

    def count(self, targets: torch.Tensor) -> int:
        return targets.shape[0]

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> int:
        labels = targets.argmax(1) if targets.ndim == 2 else targets  # a mixed batch: its larger share
        return int((outputs.argmax(1) == labels).sum().item())  # a count: item() gives an int

    def evaluate(self, model: nn.Module, batches: Iterable, channels_last: bool) -> Evaluation:
        return evaluate(model, batches, self.num_classes, channels_last)

    def forward(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> object:
        return model(x)

    def score_loss(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        model.eval()
        try:
            return F.cross_entropy(model(x).float(), targets)
        finally:
            model.train()
