"""Detectors for RS targets, built from torchvision's detection components and trained from
scratch: FCOS (anchor-free, one box per location) on a ResNet-18 or a MobileNetV3-Large
backbone with an FPN whose finest level has stride 8 (NEPU_OWOD's wells are 18-205 px, the
Airbus tanks mostly 8-20 px at 640 px).

Every norm layer is a trainable BatchNorm: the backbones are not ImageNet-pretrained, so
there are no statistics to freeze, and the pruning methods read BN γ (slim, l1rr, nas, bn);
torchvision's FCOS heads use GroupNorm(32), which would also forbid channel counts off a
multiple of 32. The head's convolutions are shared by every FPN level, but each level has
BatchNorms of its own (as EfficientDet's heads do): one BN shared by P3-P7 averages their very
different statistics into running estimates that fit none of them: a fcos_mobilenet_v3 so
built, 22 epochs into training on NEPU_OWOD, scored val mAP@0.5 0.14 in eval mode and 0.59
when its head's BNs used each level's own batch statistics instead. Box distances are a softplus
of the regression, not torchvision's ReLU nor the FCOS paper's exp (``_RegressionHead`` says why).
The model takes float images already normalised as the loader does
(``image_mean`` 0, ``image_std`` 1 inside) at ``img_size``×``img_size``, which the model's
transform then leaves as they are.
"""

from __future__ import annotations

from typing import cast

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from rscompress.errors import UserError
from rscompress.models.registry import register_model

STRIDE = 32  # the input side must be a multiple of the coarsest backbone stride
FPN_CHANNELS = {"fcos_resnet18": 128, "fcos_mobilenet_v3": 96}


LEVELS = 5  # FPN levels the head sees: P3-P5 from the backbone, P6 and P7 added
TOWER_DEPTH = 4  # 3×3 convolutions before each head's predictions, as torchvision's FCOS


class LevelNormTower(nn.Module):
    """A head's tower: ``TOWER_DEPTH`` 3×3 convolutions shared by every FPN level, each followed
    by a BatchNorm of the level's own and a ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(channels, channels, 3, padding=1) for _ in range(TOWER_DEPTH)]
        for conv in convs:  # torchvision's FCOS initialisation
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(cast(Tensor, conv.bias))
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(TOWER_DEPTH)) for _ in range(LEVELS)
        )

    def forward(self, x: Tensor, level: int) -> Tensor:
        for conv, norm in zip(self.convs, cast(nn.ModuleList, self.norms[level]), strict=True):
            x = nn.functional.relu(norm(conv(x)))
        return x


def _per_location(maps: Tensor, values: int) -> Tensor:
    """N×(values)×H×W predictions of one level as N×(H·W)×values, torchvision's FCOS layout."""
    n, _, h, w = maps.shape
    return maps.view(n, values, h, w).permute(0, 2, 3, 1).reshape(n, -1, values)


class _ClassificationHead(FCOSClassificationHead):
    """torchvision's FCOS classification head (its prior-initialised ``cls_logits``) on a
    ``LevelNormTower``."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(channels, 1, num_classes, num_convs=0)
        self.conv = LevelNormTower(channels)

    def forward(self, x: list[Tensor]) -> Tensor:
        maps = [self.cls_logits(self.conv(features, level)) for level, features in enumerate(x)]
        return torch.cat([_per_location(m, self.num_classes) for m in maps], dim=1)


class _RegressionHead(FCOSRegressionHead):
    """torchvision's FCOS box-regression and centerness head on a ``LevelNormTower``, its box
    distances mapped by a softplus.

    torchvision maps them by a ReLU: one bad step can push every output below zero, after which
    no gradient reaches them and every box has zero size for good. A fcos_mobilenet_v3 trained
    so on the Airbus tanks (512 px, peak rate 0.02) had 99.99 % of its outputs ≤ 0 at epoch 10
    and val mAP@0.5 0.00. The FCOS paper's exp has no dead zone but an unbounded gradient: with
    it both parents blew up at the peak rate (NEPU_OWOD's val loss 48,850 in epoch 5, the Airbus
    tanks' val mAP@0.5 0.22 → 0.00 in epoch 13). A softplus has neither: positive, its gradient
    in (0, 1) everywhere."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, 1, num_convs=0)
        self.conv = LevelNormTower(channels)

    def forward(self, x: list[Tensor]) -> tuple[Tensor, Tensor]:
        towers = [self.conv(features, level) for level, features in enumerate(x)]
        boxes = [_per_location(nn.functional.softplus(self.bbox_reg(t)), 4) for t in towers]
        centerness = [_per_location(self.bbox_ctrness(t), 1) for t in towers]
        return torch.cat(boxes, dim=1), torch.cat(centerness, dim=1)


def _head(channels: int, num_classes: int) -> FCOSHead:
    head = FCOSHead(channels, 1, num_classes, num_convs=0)
    head.classification_head = _ClassificationHead(channels, num_classes)
    head.regression_head = _RegressionHead(channels)
    return head


def _with_fpn(body: nn.Module, layers: dict[str, str], in_channels: list[int], channels: int) -> BackboneWithFPN:
    """``body``'s ``layers`` (strides 8, 16, 32) into an FPN of ``channels``, P6-P7 added, BN in it."""
    return BackboneWithFPN(
        body, layers, in_channels, channels, extra_blocks=LastLevelP6P7(channels, channels), norm_layer=nn.BatchNorm2d
    )


def _fcos(backbone: nn.Module, num_classes: int, img_size: int, channels: int) -> FCOS:
    if img_size % STRIDE:
        raise UserError(f"a detector's --img-size must be a multiple of {STRIDE}, got {img_size}")
    return FCOS(
        backbone,
        num_classes,
        min_size=img_size,
        max_size=img_size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        head=_head(channels, num_classes),
    )


@register_model("fcos_resnet18", task="detection")
def fcos_resnet18(num_classes: int, img_size: int = 512) -> FCOS:
    """FCOS, ResNet-18 backbone, FPN P3-P7 (strides 8-128) of 128 channels."""
    body = torchvision.models.resnet18(norm_layer=nn.BatchNorm2d)
    channels = FPN_CHANNELS["fcos_resnet18"]
    backbone = _with_fpn(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], channels)
    return _fcos(backbone, num_classes, img_size, channels)


@register_model("fcos_mobilenet_v3", task="detection")
def fcos_mobilenet_v3(num_classes: int, img_size: int = 512) -> FCOS:
    """FCOS, MobileNetV3-Large backbone (features at strides 8, 16, 32), FPN of 96 channels."""
    body = torchvision.models.mobilenet_v3_large(norm_layer=nn.BatchNorm2d).features
    channels = FPN_CHANNELS["fcos_mobilenet_v3"]
    # The last block of each stage: 6 ends stride 8 (40 ch), 12 stride 16 (112), 16 stride 32 (960).
    backbone = _with_fpn(body, {"6": "0", "12": "1", "16": "2"}, [40, 112, 960], channels)
    return _fcos(backbone, num_classes, img_size, channels)


class RawPredictions(nn.Module):
    """A detector as it is exported and timed: the network up to its head's raw outputs, one
    N×(L·(C + 5)) tensor, for each of the L locations of every FPN level (P3 first, row-major)
    its C class logits, 4 box distances (in anchor sizes) and 1 centerness logit. Box decoding
    and NMS are left to the runtime (torchvision's ``FCOS.postprocess_detections`` does both)."""

    def __init__(self, detector: FCOS) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Tensor:
        features = list(self.detector.backbone(images).values())
        out = self.detector.head(features)
        return torch.cat([out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]], dim=-1).flatten(1)


@torch.no_grad()
def detections_from_raw(detector: FCOS, raw: Tensor, img_size: int) -> list[dict[str, Tensor]]:
    """Boxes, scores and labels per image from ``RawPredictions``' output (e.g. an ONNX Runtime
    run of the exported file) for ``img_size``×``img_size`` inputs: split back per FPN level,
    decoded against the detector's anchors and NMSed by its own ``postprocess_detections``, so
    a deployed file is scored exactly as the PyTorch model would be."""
    was_training = detector.training
    detector.eval()
    try:
        probe = torch.zeros(1, 3, img_size, img_size, device=raw.device)
        features = list(detector.backbone(probe).values())
        per_level = [f.shape[-2] * f.shape[-1] for f in features]
        n = raw.shape[0]
        images = ImageList(probe.expand(n, -1, -1, -1), [(img_size, img_size)] * n)
        anchors = [list(a.split(per_level)) for a in detector.anchor_generator(images, features)]
        classes = detector.head.classification_head.num_classes
        locations = raw.reshape(n, sum(per_level), classes + 5)
        parts = {
            "cls_logits": locations[..., :classes],
            "bbox_regression": locations[..., classes : classes + 4],
            "bbox_ctrness": locations[..., classes + 4 :],
        }
        split = {k: list(v.split(per_level, dim=1)) for k, v in parts.items()}
        return detector.postprocess_detections(split, anchors, images.image_sizes)
    finally:
        detector.train(was_training)


def deployable(model: nn.Module) -> nn.Module:
    """What is exported and timed of ``model``: a detector's ``RawPredictions``, else itself."""
    return RawPredictions(model) if isinstance(model, FCOS) else model


def detector_classes(model: nn.Module) -> int | None:
    """The object classes a torchvision FCOS / RetinaNet detector predicts; None for any other model."""
    from torchvision.models.detection import RetinaNet

    if isinstance(model, FCOS | RetinaNet):
        return int(model.head.classification_head.num_classes)
    return None
