"""Detection as a task of the fit loop (engine/tasks.py): the detector's own loss, targets as
lists of box dicts, val scored by COCO mAP@0.5 (then mAP@0.5:0.95) with torchmetrics'
``MeanAveragePrecision`` (pycocotools backend: COCO-exact, no mAP written here)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from rscompress.config import DETECTION_CLIP_GRAD_NORM, DETECTION_PRECISE_BN_BATCHES
from rscompress.engine.device import model_device
from rscompress.engine.tasks import LossFn


@dataclass
class DetectionEval:
    map50: float
    map: float  # mAP@0.5:0.95
    map_small: float  # COCO's small objects (< 32² px); -1 when there are none
    per_class_ap: dict[str, float]  # AP@0.5:0.95 per class
    n_images: int
    loss: float  # the detector's own loss on these images, BN statistics as they stand

    @property
    def score(self) -> tuple[float, float]:
        return (self.map50, self.map)

    def history(self) -> dict[str, float]:
        return {"val_loss": self.loss, "val_map50": self.map50, "val_map": self.map}

    def describe(self) -> str:
        return f"val mAP@0.5 {self.map50:.3f} (0.5:0.95 {self.map:.3f})"

    def summary(self) -> dict[str, Any]:
        return {"map50": self.map50, "map": self.map, "map_small": self.map_small, "n_images": self.n_images}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "per_class_ap": self.per_class_ap}


def _loss(model: nn.Module, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The detector's training loss on a batch without training anything: torchvision's
    detectors compute losses in train mode only, so the BatchNorms are held in eval mode (their
    statistics neither used from the batch nor updated) while the rest runs as in training."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        return sum(model(images, targets).values())
    finally:
        model.eval()


@torch.no_grad()
def evaluate_detection(model: nn.Module, batches: Iterable, class_names: tuple[str, ...]) -> DetectionEval:
    device = model_device(model)
    was_training = model.training
    model.eval()
    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, backend="pycocotools", sync_on_compute=False)
    n, loss_sum = 0, 0.0
    for x, targets in batches:
        images = list(x.to(device))
        detections = model(images)
        metric.update([{k: v.cpu() for k, v in d.items()} for d in detections], targets)
        on_device = [{k: v.to(device) for k, v in t.items()} for t in targets]
        loss_sum += float(_loss(model, images, on_device)) * len(targets)
        n += len(targets)
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate_detection() got no images")
    result = metric.compute()
    classes = result["classes"].reshape(-1).tolist()
    per_class = result["map_per_class"].reshape(-1).tolist()
    return DetectionEval(
        map50=float(result["map_50"]),
        map=float(result["map"]),
        map_small=float(result["map_small"]),
        per_class_ap={class_names[int(c)]: float(ap) for c, ap in zip(classes, per_class, strict=True)},
        n_images=n,
        loss=loss_sum / n,
    )


class Detection:
    """Targets are lists of ``{"boxes", "labels"}``; the loss is the detector's own (torchvision
    detectors return their loss terms in train mode: their sum is trained)."""

    default_clip_grad_norm: float | None = DETECTION_CLIP_GRAD_NORM
    default_precise_bn_batches = DETECTION_PRECISE_BN_BATCHES

    def __init__(self, class_names: tuple[str, ...], statistics_batches: Iterable | None = None) -> None:
        """``statistics_batches``: plain train batches (Task.statistics_batches)."""
        self.class_names = class_names
        self.statistics_batches = statistics_batches

    def objective(self, label_smoothing: float) -> LossFn:
        def loss_fn(model, x, targets, epoch):
            losses = model(list(x), targets)
            return sum(losses.values()), None

        return loss_fn

    def to_device(self, targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
        return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]

    def count(self, targets: list[dict[str, torch.Tensor]]) -> int:
        return len(targets)

    def correct(self, outputs: Any, targets: Any) -> None:
        return None

    def evaluate(self, model: nn.Module, batches: Iterable, channels_last: bool) -> DetectionEval:
        return evaluate_detection(model, batches, self.class_names)

    def forward(self, model: nn.Module, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> object:
        return model(list(x), targets)  # torchvision's detectors take targets in training mode

    def score_loss(self, model: nn.Module, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        try:
            return _loss(model, list(x), targets)
        finally:
            model.train()
