"""VGG-16-BN (torchvision) and its RemoteTrimmer SE variant.

Default: the unmodified torchvision architecture: 7×7 adaptive pool and the
25088 → 4096 → 4096 → num_classes classifier (134,391,902 parameters with 30 classes, the
figure METHODS.md §4 compares students against).

``small_input=True`` (32–64 px images): the same ``features``, but the 512-channel map (1×1
at 32 px, 2×2 at 64 px) is averaged to 1×1 instead of being replicated to 7×7, and the
classifier keeps torchvision's layout at width 512:
``Linear(512, 512) → ReLU → Dropout(0.5) → Linear(512, 512) → ReLU → Dropout(0.5) →
Linear(512, num_classes)`` (about 15.2 M parameters). Same layout means the final Linear
is still ``classifier[6]`` in both variants.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tv
from torchvision.models.vgg import VGG

from rscompress.models.registry import register_model
from rscompress.models.se import add_se_blocks

_SMALL_WIDTH = 512  # channels of VGG's last conv stage, hence of the pooled feature


def _init_like_torchvision(model: nn.Module) -> None:
    # torchvision's VGG.__init__ init, applied to every layer; BN statistics reset too, since
    # the layers come out of to_empty() holding uninitialised memory.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:  # as torchvision's (VGG's convs all have one)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _small_input_vgg16_bn(num_classes: int) -> VGG:
    # torchvision's constructor allocates and initialises the 25088 -> 4096 layer (102 M
    # parameters, seconds on a small CPU) that this variant replaces; so build on the meta
    # device (no memory, no init), swap the head, then materialise and initialise once.
    with torch.device("meta"):
        model = tv.vgg16_bn(weights=None, num_classes=num_classes)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(
            nn.Linear(_SMALL_WIDTH, _SMALL_WIDTH),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(_SMALL_WIDTH, _SMALL_WIDTH),
            nn.ReLU(True),
            nn.Dropout(0.5),
            nn.Linear(_SMALL_WIDTH, num_classes),
        )
    model.to_empty(device="cpu")
    with torch.no_grad():
        _init_like_torchvision(model)
    return model


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int, small_input: bool = False) -> nn.Module:
    if small_input:
        return _small_input_vgg16_bn(num_classes)
    return tv.vgg16_bn(weights=None, num_classes=num_classes)


@register_model("se_vgg16_bn")
def se_vgg16_bn(num_classes: int, small_input: bool = False) -> nn.Module:
    """VGG-16-BN with an SE block after each of the 13 conv+BN pairs of ``features``."""
    return add_se_blocks(vgg16_bn(num_classes, small_input))
