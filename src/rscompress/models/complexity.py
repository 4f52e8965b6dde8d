"""MACs and parameter counts: the one way the project counts them (DESIGN.md, Conventions).

Every MACs/params figure in a run dir, a benchmark record or a pruning budget comes from
``count_macs_params``, so numbers from different steps can be compared and divided.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from rscompress.errors import UserError


def count_macs_params(model: nn.Module, img_size: int) -> tuple[int, int]:
    """(MACs, params) of one forward pass on a 1×3×img_size×img_size input.

    Torch-Pruning's counter runs the model in eval mode; every module's train/eval flag is
    put back afterwards, so calling this in the middle of training changes nothing.
    Note: for an SE model the BN inside each SEBatchNorm2d is not counted (the counter
    knows only exact nn.BatchNorm2d); its SE layers are. Count folded models, not SE ones.
    """
    if img_size < 1:
        raise UserError(f"img_size must be a positive number of pixels, got {img_size}")
    param = next(model.parameters(), None)
    example = torch.randn(1, 3, img_size, img_size)
    if param is not None:
        example = example.to(param.device, param.dtype)
    training = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example)
    finally:
        for m, flag in training.items():
            m.training = flag
    return int(macs), int(params)
