"""MobileNetV2 (torchvision).

Default: the unmodified torchvision architecture (total stride 32). ``small_input=True`` sets
the first conv's stride to 1 (total stride 16), so a 32 px image ends at 2×2, not 1×1.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tv

from rscompress.models.registry import register_model


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int, small_input: bool = False) -> nn.Module:
    model = tv.mobilenet_v2(weights=None, num_classes=num_classes)
    if small_input:
        stem_conv = model.features[0][0]
        assert isinstance(stem_conv, nn.Conv2d) and stem_conv.stride == (2, 2)
        stem_conv.stride = (1, 1)
    return model
