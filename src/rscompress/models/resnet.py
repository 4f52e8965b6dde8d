"""ResNet-18/34/50 (torchvision) and their RemoteTrimmer SE variants.

Default: the unmodified torchvision architecture (7×7 stride-2 stem + max-pool), randomly
initialised. ``small_input=True`` is the CIFAR-style stem for 32–64 px images: a 3×3 stride-1
stem conv and no max-pool, so a 64 px image still reaches layer4 at 8×8 instead of 2×2.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models as tv
from torchvision.models.resnet import ResNet

from rscompress.models.registry import register_model
from rscompress.models.se import add_se_blocks


def _small_input_stem(model: ResNet) -> ResNet:
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    # Same init torchvision gives every ResNet conv.
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def _build(constructor: Callable[..., ResNet], num_classes: int, small_input: bool) -> ResNet:
    model = constructor(weights=None, num_classes=num_classes)
    return _small_input_stem(model) if small_input else model


@register_model("resnet18")
def resnet18(num_classes: int, small_input: bool = False) -> nn.Module:
    return _build(tv.resnet18, num_classes, small_input)


@register_model("resnet34")
def resnet34(num_classes: int, small_input: bool = False) -> nn.Module:
    return _build(tv.resnet34, num_classes, small_input)


@register_model("resnet50")
def resnet50(num_classes: int, small_input: bool = False) -> nn.Module:
    return _build(tv.resnet50, num_classes, small_input)


# SE variants: an SE after the stem BN and after every BN of the blocks' main path
# (the downsample BNs are skipped, as in RemoteTrimmer). See models/se.py.


@register_model("se_resnet18")
def se_resnet18(num_classes: int, small_input: bool = False) -> nn.Module:
    return add_se_blocks(resnet18(num_classes, small_input))


@register_model("se_resnet34")
def se_resnet34(num_classes: int, small_input: bool = False) -> nn.Module:
    return add_se_blocks(resnet34(num_classes, small_input))


@register_model("se_resnet50")
def se_resnet50(num_classes: int, small_input: bool = False) -> nn.Module:
    return add_se_blocks(resnet50(num_classes, small_input))
