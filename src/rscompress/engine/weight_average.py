"""An exponential moving average of a model's weights (``--ema-decay``), the fit loop's option
that timm's training recipes use: the average, not the last step's weights, is what val scores,
what "best epoch" keeps and what the run ends with. BatchNorm statistics are averaged alike.

Early updates use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average is not
held near the random initial weights for the first ~1/(1 - decay) steps.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.updates)
        decay = min(self.decay, (1 + n) / (10 + n))
        for average, current in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if average.dtype.is_floating_point:
                average.lerp_(current.detach(), 1.0 - decay)
            else:  # BatchNorm's num_batches_tracked
                average.copy_(current)
        self.updates += 1

    def tensors(self) -> dict[str, torch.Tensor]:
        """Its state as live tensors, for the checkpoint to save and to restore in place."""
        return {"ema_updates": self.updates, **{f"ema.{k}": v for k, v in self.module.state_dict().items()}}
