"""Detectors train through the same fit loop as classifiers (engine/detection.py): their own
loss, box targets, val scored by COCO mAP, checkpoints and resume."""

import math

import pytest
import torch
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.config import FitConfig, OptimConfig
from rscompress.data.detection_loader import DetectionBatches
from rscompress.data.detection_prepare import prepare_detection
from rscompress.engine.detection import Detection, evaluate_detection
from rscompress.engine.trainer import fit
from rscompress.models import create_model
from tests.detection_fakes import make_detection_dataset
from tests.fakes import Killed, kill_at_epoch


class _Oracle(nn.Module):
    """Returns the boxes it is told, with full confidence: what a perfect detector outputs."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.weight = answers, nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        if targets is not None:  # asked for its loss, as torchvision's detectors are in train mode
            return {"loss": self.weight.sum()}
        return [self.answers.pop(0) for _ in images]


def _prepared(tmp_path, size=64):
    root, _ = make_detection_dataset(tmp_path, "voc", size=size)
    return prepare_detection(root, size, cache_dir=tmp_path / "cache")


def test_map_is_one_for_the_true_boxes_and_zero_for_none(tmp_path):
    data = _prepared(tmp_path)
    batches = DetectionBatches(data, data.split["train"], batch_size=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    truth = [t for _, targets in batches for t in targets]
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in truth]
    assert evaluate_detection(_Oracle(perfect), batches, data.class_names).map50 == 1.0
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * 4
    result = evaluate_detection(_Oracle(empty), batches, data.class_names)
    assert result.map50 == 0.0 and result.n_images == 4 and set(result.per_class_ap) <= set(data.class_names)


def _overlapped(box, others):
    """Whether another box reaches within 2 px of ``box``'s centre (it may be drawn over it)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return any(o[0] - 2 < cx < o[2] + 2 and o[1] - 2 < cy < o[3] + 2 for o in others)


def test_augmented_batches_keep_every_box_on_its_object(tmp_path):
    data = _prepared(tmp_path)
    batches = DetectionBatches(data, data.split["train"], batch_size=4, mean=(0,) * 3, std=(1 / 255,) * 3,
                               shuffle=True, augment=True, seed=1)  # fmt: skip
    checked = 0
    for epoch in range(4):
        batches.set_epoch(epoch)
        for x, targets in batches:
            for image, target in zip(x, targets, strict=True):
                boxes = target["boxes"].tolist()
                for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, target["labels"].tolist(), strict=True)):
                    if _overlapped(boxes[k], boxes[:k] + boxes[k + 1 :]):
                        continue
                    red, _, blue = image[:, int((y1 + y2) / 2), int((x1 + x2) / 2)].tolist()
                    assert (blue > 180 and red < 100) == (label == data.class_names.index("tank"))
                    checked += 1
    assert checked >= 16


def _fit(data, run, epochs, resume=False, hooks=None):
    torch.manual_seed(0)
    model = create_model("fcos_mobilenet_v3", len(data.class_names), img_size=64)
    train = DetectionBatches(data, data.split["train"], batch_size=2, mean=(0.45,) * 3, std=(0.25,) * 3,
                             shuffle=True, augment=True)  # fmt: skip
    val = DetectionBatches(data, data.split["val"], batch_size=2, mean=(0.45,) * 3, std=(0.25,) * 3)
    plain = DetectionBatches(data, data.split["train"], batch_size=2, mean=(0.45,) * 3, std=(0.25,) * 3, shuffle=True)
    cfg = FitConfig(epochs=epochs, batch_size=2, optim=OptimConfig(lr=0.01))
    task = Detection(data.class_names, statistics_batches=plain)  # BatchNorm statistics recomputed by default
    result = fit(model, train, val, cfg, RunDir(run), task, resume=resume, quiet=True, hooks=hooks)
    return model, result


def test_a_detector_trains_checkpoints_and_resumes_to_the_uninterrupted_weights(tmp_path):
    data = _prepared(tmp_path)
    whole, result = _fit(data, tmp_path / "whole", 2)
    # clipped_steps: a detector's gradients are clipped by default
    assert sorted(result.history[0]) == sorted(
        [
            "epoch",
            "lr",
            "train_loss",
            "val_loss",
            "val_map50",
            "val_map",
            "images_per_second",
            "seconds",
            "clipped_steps",
        ]
    )
    assert result.val.map50 == max(r["val_map50"] for r in result.history)
    assert all(math.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in result.history)
    with pytest.raises(Killed):  # killed once the first epoch is checkpointed
        _fit(data, tmp_path / "cut", 2, hooks=kill_at_epoch(1))
    resumed, _ = _fit(data, tmp_path / "cut", 2, resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
