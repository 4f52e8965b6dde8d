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


@pytest.mark.parametrize("name", DETECTORS)
def test_the_head_is_shared_by_the_fpn_levels_but_each_level_keeps_its_own_bn_statistics(name):
    # One BN shared by P3-P7 would average their statistics into estimates that fit none of them.
    torch.manual_seed(0)
    head = create_model(name, 1, img_size=64).head.train()
    channels = head.classification_head.cls_logits.in_channels
    scales = [100.0, 1.0, 1.0, 1.0, 1.0]  # P3 far louder than the coarser levels
    features = [s * torch.randn(2, channels, 8 // 2**i or 1, 8 // 2**i or 1) for i, s in enumerate(scales)]
    head(features)
    for tower in (head.classification_head.conv, head.regression_head.conv):
        assert len(tower.convs) == 4 and len(tower.norms) == len(scales)  # convs shared, BNs per level
        first = [norms[0].running_var.mean().item() for norms in tower.norms]
        assert first[0] > 10 * max(first[1:])  # P3's loudness reached its own BNs only


@pytest.mark.parametrize("name", DETECTORS)
def test_box_distances_stay_positive_and_trainable_however_negative_the_regression(name):
    # Under torchvision's ReLU, outputs pushed below zero get no gradient and every box has zero size;
    # under exp, a large output has a gradient as large.
    head = create_model(name, 1, img_size=64).head.train()
    channels = head.classification_head.cls_logits.in_channels
    features = [torch.randn(2, channels, max(8 // 2**i, 1), max(8 // 2**i, 1)) for i in range(5)]
    regression = head.regression_head
    nn.init.constant_(regression.bbox_reg.bias, -20.0)
    distances, _ = regression(features)
    assert (distances > 0).all()
    distances.sum().backward()
    assert (regression.bbox_reg.bias.grad != 0).all()
    # However large, the gradient stays at most 1 per output (exp's would be e^5 here).
    regression.bbox_reg.bias.grad = None
    nn.init.constant_(regression.bbox_reg.bias, 5.0)
    distances, _ = regression(features)
    distances.mean().backward()
    assert (regression.bbox_reg.bias.grad.abs() <= 1).all()
