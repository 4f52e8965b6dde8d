"""The registry's detectors: FCOS on ResNet-18 and MobileNetV3 with trainable BatchNorm
everywhere, a stride-8 finest level, and one class allowed."""

import pytest
import torch
from torch import nn

from rscompress.errors import UserError
from rscompress.models import create_model, list_models
from rscompress.models.registry import model_task

DETECTORS = ["fcos_mobilenet_v3", "fcos_resnet18"]


def test_detectors_are_registered_apart_from_the_classifiers():
    assert list_models(task="detection") == DETECTORS
    assert not set(DETECTORS) & set(list_models(task="classification"))
    assert all(model_task(name) == "detection" for name in DETECTORS) and model_task("resnet18") == "classification"


@pytest.mark.parametrize("name", DETECTORS)
def test_a_detector_trains_on_boxes_and_detects_at_stride_8_with_bn_only(name):
    torch.manual_seed(0)
    model = create_model(name, 1, img_size=64)  # one class: oil wells
    assert not any(isinstance(m, nn.GroupNorm | torchvision_frozen_bn()) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 64, 64)
    features = model.backbone(x)
    assert min(64 // f.shape[-1] for f in features.values()) == 8
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 28.0]]), "labels": torch.tensor([0])}] * 2
    model.train()
    losses = model(list(x), targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (detections,) = model([x[0]])
    assert set(detections) == {"boxes", "scores", "labels"}


def torchvision_frozen_bn():
    from torchvision.ops.misc import FrozenBatchNorm2d

    return FrozenBatchNorm2d


def test_a_detector_size_must_be_a_multiple_of_32():
    with pytest.raises(UserError, match="multiple of 32, got 500"):
        create_model("fcos_resnet18", 1, img_size=500)
