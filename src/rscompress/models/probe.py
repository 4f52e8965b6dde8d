"""What a model can train on, found by running it once rather than from a table of sizes:
the smallest input it takes (its pooling and strides decide), and whether a batch of one image
can train it (BatchNorm on a 1×1 map has one value per channel and cannot)."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from rscompress.config import MAX_IMG_SIZE
from rscompress.errors import UserError


def check_trainable(model: nn.Module, name: str, img_size: int, batch_size: int) -> None:
    """Refuse ``img_size`` when ``model`` cannot take it, naming the smallest size it can, and
    ``batch_size`` 1 when a BatchNorm layer would then normalise one value per channel."""
    try:
        single = _one_value_norms(model, img_size)
    except (RuntimeError, ValueError) as err:
        smallest = _smallest_size(model, img_size)
        if smallest is None:
            raise err  # no size works: not a size problem, so not the user's
        raise UserError(
            f"{name} cannot take {img_size} px images (--img-size): the smallest size it takes is {smallest} px"
        ) from None
    if batch_size == 1 and single:
        raise UserError(
            f"--batch-size 1: {name}'s BatchNorm layer {single[0]} sees one value per channel at {img_size} px "
            "and cannot train on a single image; use --batch-size 2 or more"
        )


def _one_value_norms(model: nn.Module, img_size: int) -> list[str]:
    """Run ``model`` on one blank image (eval mode, no gradients: nothing in it changes); the
    BatchNorm layers that saw one value per channel. What the model raises on a size it cannot
    take goes to the caller."""
    seen: list[str] = []

    def record(layer: str, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        if x.numel() == x.shape[0] * x.shape[1]:
            seen.append(layer)

    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_pre_hook(partial(record, n)) for n, m in norms]
    training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return seen


def _takes(model: nn.Module, img_size: int) -> bool:
    try:
        _one_value_norms(model, img_size)
    except (RuntimeError, ValueError):
        return False
    return True


def _smallest_size(model: nn.Module, too_small: int) -> int | None:
    """The smallest size above ``too_small`` that ``model`` takes (doubling, then bisecting);
    None when none up to the largest --img-size does."""
    too_small, works = too_small, min(2 * too_small, MAX_IMG_SIZE)
    while not _takes(model, works):
        if works >= MAX_IMG_SIZE:
            return None
        too_small, works = works, min(2 * works, MAX_IMG_SIZE)
    while works - too_small > 1:
        middle = (too_small + works) // 2
        too_small, works = (too_small, middle) if _takes(model, middle) else (middle, works)
    return works
