"""G-GhostNet on RegNet-X ("G-Ghost RegNet"), the student of the DKD recipe (METHODS.md §4).

Han et al., *GhostNets on Heterogeneous Devices via Cheap Operations*, IJCV 2022.

Architecture
------------
* Stem: 3×3 conv (stride 2, or 1 with ``small_input=True``), 32 channels, BN, ReLU.
* Four stages of RegNet-X bottlenecks (:class:`Bottleneck`: 1×1 → grouped 3×3 with group
  width ``gw`` → 1×1, BN after each, ReLU, residual add; a 1×1 conv + BN shortcut where the
  shape changes; bottleneck ratio 1). Every stage starts with a stride-2 block.
* Stage 1 is always a plain RegNet-X stage, stage 3 always a :class:`GGhostStage`, stages 2
  and 4 are G-Ghost stages only when they have more than 2 blocks.
* Head: global average pool, dropout 0.2, ``fc`` (Linear).

A :class:`GGhostStage` with ``n`` blocks: ``x0 = base(x)`` (the block that changes stride and
width); ``x0[:, :raw]`` goes through ``n - 2`` thin middle blocks (group width
``gw' = int(0.75·gw)``, ``raw = ⌊0.5·C/gw'⌋·gw'``; the first one's shortcut is the identity
of the raw slice); the cheap rest ``x0[:, raw:]`` goes through a 1×1 conv + BN; the mix
operation ``merge(cat[x0, mid_1, ..., mid_{n-2}])`` (GAP → 1×1 conv → BN → ReLU →
1×1 conv → BN, one value per cheap channel) is added to it, then ReLU; finally
``end(cat[raw path, cheap path])``. As in the reference implementation, the mix operation
also sees ``x0`` itself, not only the middle blocks' outputs.

Module and parameter names follow the reference implementation
(huawei-noah/Efficient-AI-Backbones, ``g_ghost_pytorch/g_ghost_regnet.py``): ``conv1``,
``bn1``, ``layer1..4``, ``fc``; inside a G-Ghost stage ``base``, ``layers``, ``cheap``,
``merge``, ``end``. The ``state_dict`` keys and shapes are the same as the reference
module's and, given the same weights, the outputs are identical (checked against it for
002/004/032 while writing this), so its released ImageNet checkpoints should load with
``load_state_dict`` (not tried here: no network; replace ``fc`` for another class count).

Structured pruning (Torch-Pruning) is supported: ``forward`` reads the raw/cheap split point
from the current module shapes, never from numbers stored at construction time, so a model
whose channels were removed still runs.

Registered sizes. Parameter counts with a 1000-class head and MACs at 224 px (Torch-Pruning's
counter); the 8 reference sizes match METHODS.md §4 (counts of the reference
implementation) to the 2 decimals published there:

==========================  ===========  ==================  ===  =========  ===========
name                        depths       widths              gw   params     GMACs@224
==========================  ===========  ==================  ===  =========  ===========
g_ghost_regnetx_002         1,1,4,7      24,56,152,368       8    1,825,440  0.14
g_ghost_regnetx_004         1,2,7,12     32,64,160,384       16   2,884,456  0.23
g_ghost_regnetx_006         1,3,5,7      48,96,240,528       24   4,029,776  0.40
g_ghost_regnetx_008         1,3,7,5      64,128,288,672      16   5,248,328  0.54
g_ghost_regnetx_016         2,4,10,2     72,168,408,912      24   7,109,660  1.04
g_ghost_regnetx_032         2,6,15,2     96,192,432,1008     48   10,511,000 1.83
g_ghost_regnetx_040         2,5,14,2     80,240,560,1360     40   15,726,268 2.26
g_ghost_regnetx_080         2,5,15,1     80,240,720,1920     120  24,586,928 4.18
g_ghost_regnetx_tiny        1,1,3,3      16,32,64,128        8    291,904    0.045
g_ghost_regnetx_small       1,3,4,3      24,48,96,192        8    550,136    0.082
==========================  ===========  ==================  ===  =========  ===========

``tiny`` and ``small`` are ours, for CPU work and tests (not from the paper). ``tiny``
(164,194 params with 10 classes) has G-Ghost stages 3 and 4, stage 4 with 3 blocks so a
stage-4 G-Ghost stage is exercised; ``small`` (359,066 params with 10 classes) has G-Ghost
stages 2, 3 and 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from rscompress.models.registry import register_model

__all__ = [
    "CONFIGS",
    "Bottleneck",
    "GGhostConfig",
    "GGhostRegNet",
    "GGhostStage",
    "g_ghost_regnet",
    "ghost_split",
]

STEM_CHANNELS = 32
CHEAP_RATIO = 0.5  # fraction of a G-Ghost stage's width made by the cheap operation
THIN_GROUP_WIDTH_FACTOR = 0.75  # gw' = int(0.75 * gw) on the middle blocks
DROPOUT = 0.2


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def _groups(width: int, group_width: int) -> int:
    """Number of groups of a width-``width`` 3×3 conv with group width ``group_width``."""
    groups = width // min(width, group_width)
    if width % groups:
        raise ValueError(f"width {width} is not divisible into groups of width {group_width}")
    return groups


class Bottleneck(nn.Module):
    """RegNet-X block: 1×1 → grouped 3×3 (stride) → 1×1, BN after each, residual, ReLU.

    ``downsample`` is the shortcut: ``None`` for identity, else a module (1×1 conv + BN).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        group_width: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        width = out_channels  # bottleneck ratio 1
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width,
            width,
            kernel_size=3,
            stride=stride,
            padding=1,
            groups=_groups(width, group_width),
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _first_block(in_channels: int, out_channels: int, stride: int, group_width: int) -> Bottleneck:
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    return Bottleneck(in_channels, out_channels, stride, group_width, downsample)


def _plain_stage(in_channels: int, out_channels: int, depth: int, stride: int, group_width: int) -> nn.Sequential:
    blocks = [_first_block(in_channels, out_channels, stride, group_width)]
    blocks += [Bottleneck(out_channels, out_channels, 1, group_width) for _ in range(1, depth)]
    return nn.Sequential(*blocks)


def ghost_split(channels: int, group_width: int, cheap_ratio: float = CHEAP_RATIO) -> tuple[int, int, int]:
    """``(raw, cheap, thin_group_width)`` of a G-Ghost stage of width ``channels``."""
    thin_gw = int(group_width * THIN_GROUP_WIDTH_FACTOR)
    if thin_gw < 1:
        raise ValueError(f"group width {group_width} is too small for a G-Ghost stage")
    raw = int(channels * (1 - cheap_ratio) / thin_gw) * thin_gw
    if not 0 < raw < channels:
        raise ValueError(
            f"G-Ghost stage of width {channels} with group width {group_width} has no raw/cheap split (raw = {raw})"
        )
    return raw, channels - raw, thin_gw


class GGhostStage(nn.Module):
    """A G-Ghost stage of ``depth`` (>= 2) blocks; see the module docstring."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int,
        stride: int,
        group_width: int,
        cheap_ratio: float = CHEAP_RATIO,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"a G-Ghost stage needs >= 2 blocks, got {depth}")
        raw, cheap, thin_gw = ghost_split(out_channels, group_width, cheap_ratio)
        self.base = _first_block(in_channels, out_channels, stride, group_width)
        # depth - 2 thin blocks on the raw slice; identity shortcuts throughout
        self.layers = nn.Sequential(*[Bottleneck(raw, raw, 1, thin_gw) for _ in range(depth - 2)])
        self.merge = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            _conv1x1(out_channels + raw * (depth - 2), cheap),
            nn.BatchNorm2d(cheap),
            nn.ReLU(inplace=True),
            _conv1x1(cheap, cheap),
            nn.BatchNorm2d(cheap),
        )
        self.cheap = nn.Sequential(_conv1x1(cheap, cheap), nn.BatchNorm2d(cheap))
        self.cheap_relu = nn.ReLU(inplace=True)
        self.end = Bottleneck(out_channels, out_channels, 1, group_width)

    @property
    def raw_channels(self) -> int:
        """Current width of the raw path (follows structured pruning)."""
        return self.base.bn3.num_features - self.cheap_channels

    @property
    def cheap_channels(self) -> int:
        """Current width of the cheap path (follows structured pruning)."""
        conv = cast(nn.Conv2d, self.cheap[0])  # built by _conv1x1 in __init__, resized in place
        return conv.in_channels

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.base(x)
        # Written for Torch-Pruning 1.6's graph tracer (see tests/models/test_ghostnet.py):
        # * torch.split, not x0[:, :raw] / x0[:, raw:]: TP infers wrong channel counts through
        #   a slice that feeds a residual add, and then drops the concat index mappings;
        # * the split sizes come from the current module shapes, so a pruned model runs;
        # * TP gives a split's outputs their offsets in the order it meets their consumers
        #   (it ignores which output a consumer reads), so every split output has exactly one
        #   consumer (``clone`` below) and the code order makes the raw consumer met first:
        #   keep ``self.cheap(c) + m`` (not ``m + ...``) and ``cat((e, c))`` in this order.
        cheap = self.cheap_channels
        e, c = torch.split(x0, [x0.shape[1] - cheap, cheap], dim=1)
        mixed = [x0]
        if len(self.layers) > 0:
            e = e.clone()  # one consumer for the split's raw output (conv1 + shortcut use it)
            for block in self.layers:
                e = block(e)
                mixed.append(e)
        m = self.merge(torch.cat(mixed, dim=1) if len(mixed) > 1 else x0)
        c = self.cheap_relu(self.cheap(c) + m)
        return self.end(torch.cat((e, c), dim=1))


@dataclass(frozen=True)
class GGhostConfig:
    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    group_width: int


class GGhostRegNet(nn.Module):
    """G-Ghost RegNet-X classifier. ``small_input=True`` makes the stem stride 1."""

    def __init__(
        self,
        depths: tuple[int, ...] | list[int],
        widths: tuple[int, ...] | list[int],
        group_width: int,
        num_classes: int = 1000,
        small_input: bool = False,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError(f"need 4 depths and 4 widths, got {depths} and {widths}")
        if min(depths) < 1:
            raise ValueError(f"every stage needs >= 1 block, got depths {depths}")
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=1 if small_input else 2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        cin = STEM_CHANNELS
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            ghost = i == 2 or (i in (1, 3) and depth > 2)
            if ghost:
                stages.append(GGhostStage(cin, width, depth, 2, group_width))
            else:
                stages.append(_plain_stage(cin, width, depth, 2, group_width))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(self.dropout(x))


# depths, widths, group width; parameter counts in the module docstring
CONFIGS: dict[str, GGhostConfig] = {
    "g_ghost_regnetx_002": GGhostConfig((1, 1, 4, 7), (24, 56, 152, 368), 8),
    "g_ghost_regnetx_004": GGhostConfig((1, 2, 7, 12), (32, 64, 160, 384), 16),
    "g_ghost_regnetx_006": GGhostConfig((1, 3, 5, 7), (48, 96, 240, 528), 24),
    "g_ghost_regnetx_008": GGhostConfig((1, 3, 7, 5), (64, 128, 288, 672), 16),
    "g_ghost_regnetx_016": GGhostConfig((2, 4, 10, 2), (72, 168, 408, 912), 24),
    "g_ghost_regnetx_032": GGhostConfig((2, 6, 15, 2), (96, 192, 432, 1008), 48),
    "g_ghost_regnetx_040": GGhostConfig((2, 5, 14, 2), (80, 240, 560, 1360), 40),
    "g_ghost_regnetx_080": GGhostConfig((2, 5, 15, 1), (80, 240, 720, 1920), 120),
    "g_ghost_regnetx_tiny": GGhostConfig((1, 1, 3, 3), (16, 32, 64, 128), 8),
    "g_ghost_regnetx_small": GGhostConfig((1, 3, 4, 3), (24, 48, 96, 192), 8),
}


def g_ghost_regnet(name: str, num_classes: int, small_input: bool = False) -> GGhostRegNet:
    """Build the registered size ``name`` (a key of :data:`CONFIGS`)."""
    cfg = CONFIGS[name]
    return GGhostRegNet(cfg.depths, cfg.widths, cfg.group_width, num_classes=num_classes, small_input=small_input)


def _register(name: str) -> None:
    def builder(num_classes: int, small_input: bool = False) -> nn.Module:
        return g_ghost_regnet(name, num_classes, small_input)

    builder.__name__ = name
    builder.__doc__ = f"G-Ghost RegNet-X {name.removeprefix('g_ghost_regnetx_')}: {CONFIGS[name]}"
    register_model(name)(builder)


for _name in CONFIGS:
    _register(_name)
