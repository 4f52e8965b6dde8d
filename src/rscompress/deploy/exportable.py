"""Rewrite what ONNX cannot express into exact equivalents, for one input size.

ONNX has no adaptive average pool: the exporter lowers ``AdaptiveAvgPool2d`` to a plain
AveragePool, which exists only when the output size divides the input size. torchvision's
VGG pools its last feature map to 7×7 whatever the image size, so VGG-16-BN at 64 px (a 2×2
map replicated to 7×7) cannot be exported as it is. Adaptive pooling over a *known* input
size is linear along each axis: ``y = R · x · Cᵀ`` with fixed averaging matrices, which ONNX
expresses as two MatMuls. The exported graph has a fixed image size anyway (only the batch
axis is dynamic), so nothing is lost.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def adaptive_pool_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) averaging weights of PyTorch's adaptive pooling along one axis: output i
    averages inputs floor(i·n_in/n_out) … ceil((i+1)·n_in/n_out) − 1."""
    weights = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, math.ceil((i + 1) * n_in / n_out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d`` for inputs of one spatial size, as ``rows @ x @ colsᵀ``."""

    rows: Tensor  # buffers, registered in __init__
    cols_t: Tensor

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.in_hw = in_hw
        self.register_buffer("rows", adaptive_pool_matrix(in_hw[0], out_hw[0]))
        self.register_buffer("cols_t", adaptive_pool_matrix(in_hw[1], out_hw[1]).T.contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return self.rows.to(x.dtype) @ x @ self.cols_t.to(x.dtype)


def _output_hw(pool: nn.AdaptiveAvgPool2d, in_hw: tuple[int, int]) -> tuple[int, int]:
    size = pool.output_size
    out_h, out_w = (size, size) if isinstance(size, int) or size is None else size
    return (in_hw[0] if out_h is None else out_h, in_hw[1] if out_w is None else out_w)  # None keeps that axis


def exportable_copy(model: nn.Module, example: Tensor) -> nn.Module:
    """``model`` itself when ONNX can express it at ``example``'s size, else a deep copy whose
    adaptive average pools with a non-dividing output size are MatrixAdaptiveAvgPool2d."""
    in_sizes: dict[str, tuple[int, int]] = {}

    def remember(name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            h, w = args[0].shape[-2:]
            in_sizes[name] = (h, w)

        return hook

    pools = {name: m for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    hooks = [m.register_forward_hook(remember(name)) for name, m in pools.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    sizes = {name: (in_hw, _output_hw(pools[name], in_hw)) for name, in_hw in in_sizes.items()}
    rewrite = {name: io for name, io in sizes.items() if any(i % o for i, o in zip(*io, strict=False))}
    if not rewrite:
        return model
    model = copy.deepcopy(model)
    param = next(model.parameters(), None)
    for name, (in_hw, out_hw) in rewrite.items():
        parent_name, _, child = name.rpartition(".")
        pool = MatrixAdaptiveAvgPool2d(in_hw, out_hw)
        if param is not None:
            pool = pool.to(param.device)
        setattr(model.get_submodule(parent_name), child, pool)
    return model
