"""BatchNorm statistics recomputed over plain (un-augmented) train images before a model is
scored on val (``FitConfig.precise_bn_batches``; "PreciseBN" in Detectron2 and pycls, which
use augmented batches).

Why plain images: a model's running statistics average the augmented training batches, and the
images it is evaluated on are not augmented. On NEPU_OWOD's detectors statistics recomputed
over plain train images scored clearly higher on val than the running ones, where statistics
recomputed over augmented images did not; on the Airbus parent all scored alike (benchmarks
README, "Detection"). A likely cause: the quarter turns and flips move the shadows, which in one
scene all fall one way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import torch
from torch import nn

# (model in training mode, images on its device, targets on its device): one forward pass.
Forward = Callable[[nn.Module, torch.Tensor, Any], object]
# Why a fit given no plain batches (a classifier's) refuses --precise-bn-batches N > 0.
NO_PLAIN_BATCHES = (
    "--precise-bn-batches recomputes BatchNorm statistics over plain train images, which this fit is not "
    "given (a detector's run has them; a classifier's does not)"
)


@torch.no_grad()
def recompute_batchnorm_statistics(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, Any]],
    n_batches: int,
    forward: Forward,
    to_device: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]],
) -> None:
    """Replace the running mean and variance of every BatchNorm of ``model`` that tracks them
    by their average over the first ``n_batches`` of ``batches`` (each batch weighs the same),
    run through ``forward`` in training mode without gradients. Nothing else of the model
    changes; its mode and the BatchNorms' momenta are restored. ValueError if no batch came."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen since the reset
    model.train()
    used = 0
    try:
        for x, targets in islice(batches, n_batches):
            forward(model, *to_device(x, targets))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ValueError("the batches for BatchNorm statistics yielded none")
