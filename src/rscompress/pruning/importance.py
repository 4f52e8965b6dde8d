"""Channel importance criteria, looked up by name (METHODS.md: §1 CAP and "Baselines").

Each criterion is a Torch-Pruning ``Importance``: a callable that takes one dependency group
(every layer whose channels must be removed together) and returns one score per channel of
the group's root layer; higher means keep. Criteria know nothing about pruning ratios or
budgets, so any of them can drive ``prune`` or ``prune_to_budget``.

Normalisation: the magnitude/gradient baselines keep Torch-Pruning's default (each group's
scores divided by their mean), since an L1 norm over a 3×3×512 kernel and one over a 1×1×64
kernel live on different scales and a global ranking must compare them. The two BN criteria
(``bn``, ``remotetrimmer``) are NOT normalised: network slimming and CAP rank raw |γ| across
the whole network, and dividing each group by its mean would flatten exactly the
between-layer differences they rely on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.pruner import function
from torch_pruning.pruner.importance import Importance

from rscompress.errors import UserError

# (model, images, targets) -> the loss whose gradients a gradient criterion reads.
CalibrationLoss = Callable[[nn.Module, Tensor, Any], Tensor]
# A BN attribute holding the SE attention s̄ of its channels when it could not be folded into
# the BN itself (pruning.parent.fold_foreign_se_layers): CAP ranks |γ|·s̄ all the same. Set on a
# parent before scoring; ``forget_cap_attention`` removes it once the model is pruned.
CAP_ATTENTION = "_cap_attention"


def forget_cap_attention(model: nn.Module) -> None:
    for module in model.modules():
        module.__dict__.pop(CAP_ATTENTION, None)


class ChannelAttentionImportance(Importance):
    """RemoteTrimmer's CAP score: |γ'| averaged over the BatchNorms of the group.

    Run it on a model whose SE attention was folded into its BNs (γ' = γ·s̄, see
    ``parent.fold_se_blocks``); on a plain model it is network
    slimming's |γ| averaged per group. A channel's score averages only the BNs that actually
    carry that channel (in a residual stream: every block's last BN and the downsample BN).

    Groups without any BN return ``None``, so they are not pruned, exactly like Torch-Pruning's
    BNScaleImportance (the ``bn`` baseline): CAP's signal lives in γ·s̄, and a stand-in score
    on another scale (a weight norm) would be meaningless inside a global |γ| ranking. In the
    registered models the only such groups are VGG's hidden classifier Linear layers, which
    then shrink only at their inputs (as the last conv stage loses channels).
    """

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> Tensor | None:
        n_channels = len(group[0].idxs)  # the root layer's channels: the group's full index set
        total = torch.zeros(n_channels, dtype=torch.float64)
        count = torch.zeros(n_channels, dtype=torch.float64)
        for item in group:
            layer, idxs, root_idxs = item.dep.target.module, item.idxs, item.root_idxs
            if item.dep.handler != function.prune_batchnorm_out_channels or not layer.affine:
                continue
            if any(r is None for r in root_idxs):  # Torch-Pruning's marker for "no root channel"
                continue
            where = torch.tensor(root_idxs, dtype=torch.long)
            gamma = layer.weight.detach()[idxs].abs().to("cpu", torch.float64)
            if (attention := getattr(layer, CAP_ATTENTION, None)) is not None:
                gamma = gamma * attention[idxs].to(gamma)
            total.scatter_add_(0, where, gamma)
            count.scatter_add_(0, where, torch.ones_like(gamma))
        covered = count > 0
        if not covered.any():
            return None
        scores = total / count.clamp(min=1)
        # A channel no BN of the group carries (none in the registered models) gets the group's
        # mean: neutral, neither protected nor sacrificed.
        scores[~covered] = scores[covered].mean()
        return scores.float()


class GroupedConvSafeFPGM(tp.importance.FPGMImportance):
    """Torch-Pruning's FPGM, skipping the input side of grouped (not depthwise) convolutions.

    Torch-Pruning 1.6's FPGM repeats a 2-D distance matrix with a 1-D ``repeat`` there and
    crashes (RegNet's group convs). Those inputs follow their producer's output channels,
    which FPGM still scores from the producer's filters, as the paper ranks filters.
    """

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group, **kwargs) -> Tensor | None:
        def grouped_input(item) -> bool:
            layer = item.dep.layer
            return item.dep.pruning_fn == function.prune_conv_in_channels and layer.groups not in (1, layer.in_channels)

        if not any(grouped_input(item) for item in group):
            return super().__call__(group, **kwargs)
        kept = tp.dependency.Group()
        kept._group = [item for item in group if not grouped_input(item)]
        kept._DG = group._DG
        return super().__call__(kept, **kwargs)


_FACTORIES: dict[str, Callable[[], Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(normalizer=None),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "fpgm": GroupedConvSafeFPGM,
    "lamp": lambda: tp.importance.LAMPImportance(),
    "random": lambda: tp.importance.RandomImportance(),
    "remotetrimmer": ChannelAttentionImportance,
}

IMPORTANCES: tuple[str, ...] = tuple(_FACTORIES)


def make_importance(name: str) -> Importance:
    """A fresh importance criterion by name (one of ``IMPORTANCES``)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise UserError(f"unknown importance criterion {name!r}; known: {', '.join(IMPORTANCES)}") from None
    return factory()


def needs_gradients(importance: Importance) -> bool:
    """True for criteria that read ``param.grad`` (Taylor): call accumulate_gradients first."""
    return isinstance(importance, tp.importance.GroupTaylorImportance)


def accumulate_gradients(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Any] | list[Any]],
    loss: CalibrationLoss | None = None,
) -> int:
    """Sum the gradients of ``loss(model, images, targets)`` over ``batches`` (default: the
    cross-entropy of ``model(images)`` on the labels); returns #images.

    Old gradients are cleared first, so the result depends only on these batches. The model
    runs in eval mode (flags restored afterwards): calibration must not move the BN running
    statistics or drop units, it only measures. Taylor scores are |w·∂L/∂w| normalised per
    group, so summing (rather than averaging) over batches changes no ranking. A detector's
    ``loss`` is its task's ``score_loss`` (engine/detection.py), which keeps the BNs in eval.
    """
    param = next(model.parameters())
    training = {m: m.training for m in model.modules()}
    model.zero_grad(set_to_none=True)
    n_images = 0
    try:
        model.eval()
        with torch.enable_grad():
            for images, targets in batches:
                images = images.to(param.device, param.dtype)
                if loss is None:
                    nn.functional.cross_entropy(model(images), targets.to(param.device)).backward()
                else:
                    loss(model, images, targets).backward()
                n_images += images.shape[0]
    finally:
        for m, flag in training.items():
            m.training = flag
    if n_images == 0:
        raise UserError("no calibration images: the gradient-based criterion needs >= 1 batch")
    return n_images
