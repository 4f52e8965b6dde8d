"""bfloat16 autocast for training forwards, minus the one case PyTorch's CPU kernel gets wrong.

torch 2.14's CPU bfloat16 convolution returns garbage weight gradients (values up to 1e37,
sometimes NaN) for a strided, ungrouped conv whose input is smaller than its stride along an
axis, e.g. ResNet's ``layer4.0.conv1`` (stride 2) on the 1×1 map of a 16 px image; the
affected kernel taps only ever see zero padding, and 1 or 2 threads, either memory format,
make no difference. PyTorch's own forward skips those taps, so training looks fine, but the
weights are corrupt and ONNX Runtime (which multiplies them by the padding) returns NaN.
Such a conv costs next to nothing, so ``bf16_autocast`` runs exactly those in float32 (on
the CPU only: the bug is in the CPU kernel).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType

import torch
from torch import Tensor, nn

from rscompress.engine.device import model_device


def bf16_conv_gradient_is_wrong(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv`` on ``x`` is the shape whose bfloat16 weight gradient PyTorch gets wrong."""
    return conv.groups == 1 and any(s > n for s, n in zip(conv.stride, x.shape[-2:], strict=False))


def _float32_where_bf16_is_wrong(self: nn.Conv2d, x: Tensor) -> Tensor:
    if bf16_conv_gradient_is_wrong(self, x):
        with torch.autocast("cpu", enabled=False):
            return self._conv_forward(x.float(), self.weight, self.bias)
    return type(self).forward(self, x)


@contextmanager
def bf16_autocast(model: nn.Module, enabled: bool) -> Iterator[None]:
    """``torch.autocast(<model's device type>, bfloat16)`` around a forward pass of ``model``
    when ``enabled``.

    On the CPU, strided convs of ``model`` check their input size meanwhile and fall back to
    float32 where bfloat16 is wrong (module docstring). The backward pass may run outside the
    context: it follows whichever kernel the forward chose.
    """
    if not enabled:
        yield
        return
    device_type = model_device(model).type
    if device_type != "cpu":
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
        return
    # Which of them fall back is bf16_conv_gradient_is_wrong's call, per input size.
    strided = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and "forward" not in vars(m)
    ]
    for conv in strided:
        # The instance's own forward (in its __dict__, where the filter above looks) shadows the
        # class's until the del below; written there directly, as mypy rejects assigning a method.
        vars(conv)["forward"] = MethodType(_float32_where_bf16_is_wrong, conv)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    finally:
        for conv in strided:
            del conv.forward
