"""Mixup and CutMix for classifier training: each batch is blended with itself in reverse order
and its labels become the same blend of one-hot targets, which cross-entropy takes as class
probabilities. The blend weight λ is drawn from Beta(α, α) once per batch (timm's batch mode);
with both kinds on, each batch is one or the other at even odds (timm's switch_prob 0.5).
"""

from __future__ import annotations

import math
import random

import torch.nn.functional as F
from torch import Tensor


def cutmix_box(height: int, width: int, lam: float, rng: random.Random) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of about (1 - lam) of the image, centred at a uniform
    random pixel and cut off at the borders (so it may cover less)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randrange(height), rng.randrange(width)
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def mix_batch(
    x: Tensor, y: Tensor, num_classes: int, mixup_alpha: float, cutmix_alpha: float, rng: random.Random
) -> tuple[Tensor, Tensor]:
    """(images, soft targets (N, num_classes)) of one batch mixed with itself reversed. CutMix's
    λ is the share of each image left uncovered once its box is cut off at the borders."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_batch needs mixup_alpha or cutmix_alpha > 0")
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = rng.betavariate(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.betavariate(mixup_alpha, mixup_alpha)
    partner = x.flip(0)
    if use_cutmix:
        height, width = x.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        x = x.clone()
        x[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        x = x * lam + partner * (1.0 - lam)
    one_hot = F.one_hot(y, num_classes).float()
    return x, one_hot * lam + one_hot.flip(0) * (1.0 - lam)
