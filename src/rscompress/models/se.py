"""Squeeze-excitation blocks tied to BatchNorm layers, for RemoteTrimmer's channel attention.

RemoteTrimmer (METHODS.md §1) trains a network with an SE block after each conv+BN, averages
every SE's sigmoid output over the training data, then removes the SE blocks and folds the
averaged attention s̄ into the BN before them (γ' = γ·s̄, β' = β·s̄). ``SEBatchNorm2d`` is a
BatchNorm2d that owns its SE block, so "which BN does this SE fold into" is never guessed
from module order: it is the module itself.

Placement note: the published code puts the SE after the ReLU for the stem and for the first
conv of each block (bn → relu → se) and directly after the BN elsewhere. Here the SE always
sees the BN output (bn → se → relu). With the averaged attention fixed the two are the same
function, since a positive per-channel scale commutes with ReLU; only what the SE squeezes
while training differs (pre-ReLU values, including negatives).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class SqueezeExcite(nn.Module):
    """SE block (Hu et al.): x · sigmoid(W2 · relu(W1 · GAP(x))).

    The hidden width is ``max(channels // reduction, 1)`` with biases on both Linear layers,
    as in RemoteTrimmer's published SELayer (hidden 4 for 64 channels at reduction 16); the
    floor of 1 only matters below 16 channels, which no registered backbone has.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)
        # A module (not torch.sigmoid) so hooks can read the attention: see average_se_attention.
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = self.gate(self.fc2(self.relu(self.fc1(torch.flatten(self.pool(x), 1)))))
        return x * s[:, :, None, None]


class SEBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d followed by its own SqueezeExcite: returns ``se(bn(x))``.

    Its BN parameters and buffers keep BatchNorm2d's names (``weight``, ``bias``,
    ``running_mean``...), so the BN part of an SE model's state dict lines up with the plain
    model's; the SE adds ``<bn>.se.fc1.*`` and ``<bn>.se.fc2.*``.
    """

    def __init__(self, num_features: int, reduction: int = 16, **bn_kwargs) -> None:
        super().__init__(num_features, **bn_kwargs)
        self.se = SqueezeExcite(num_features, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return self.se(super().forward(x))

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d, reduction: int = 16) -> SEBatchNorm2d:
        """An SEBatchNorm2d with ``bn``'s settings, parameters and statistics, and a fresh SE.

        ``bn`` must be affine: the attention is later folded into its γ and β.
        """
        if not bn.affine:
            raise ValueError("an SE block needs an affine BatchNorm2d to fold into")
        se_bn = cls(
            bn.num_features,
            reduction,
            eps=bn.eps,
            momentum=bn.momentum,
            track_running_stats=bn.track_running_stats,
        )
        missing, unexpected = se_bn.load_state_dict(bn.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("se.") for k in missing), (missing, unexpected)
        se_bn.train(bn.training)
        # SE layers included; .to(dtype) leaves the integer num_batches_tracked alone.
        return se_bn.to(bn.weight.device, bn.weight.dtype)


def _is_downsample_path(name: str) -> bool:
    # torchvision ResNets name their shortcut conv+BN ``downsample``; RemoteTrimmer leaves it.
    return "downsample" in name.split(".")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def add_se_blocks(model: nn.Module, reduction: int = 16) -> nn.Module:
    """Turn every BatchNorm2d outside a ResNet downsample path into an SEBatchNorm2d, in place.

    For torchvision ResNets this is the stem BN and every BN of the blocks' main path; for
    VGG-BN it is the BN after each conv of ``features``. BNs that already carry an SE are left
    as they are. Returns ``model`` for chaining.
    """
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and not isinstance(m, SEBatchNorm2d) and not _is_downsample_path(name)
    ]
    for name, bn in targets:
        _set_submodule(model, name, SEBatchNorm2d.from_bn(bn, reduction))
    return model


def se_batchnorms(model: nn.Module) -> dict[str, SEBatchNorm2d]:
    """The model's SEBatchNorm2d modules by qualified name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SEBatchNorm2d)}


@torch.no_grad()
def average_se_attention(
    model: nn.Module, batches: Iterable[Tensor | tuple[Tensor, ...] | list[Tensor]]
) -> dict[str, Tensor]:
    """Mean sigmoid attention per channel over every image in ``batches``, per SEBatchNorm2d.

    Runs in eval mode (BN uses its running statistics, as after folding) and without grad;
    the model's train/eval flags are restored afterwards. ``batches`` yields image tensors
    (B, 3, H, W) or DataLoader-style tuples whose first element is the images. Returns
    ``{name of SEBatchNorm2d: tensor (C,)}`` (float32, on CPU), the input of fold_se_into_bn.
    """
    targets = se_batchnorms(model)
    if not targets:
        raise ValueError("model has no SEBatchNorm2d modules (build it with add_se_blocks)")
    sums = {name: torch.zeros(m.num_features, dtype=torch.float64) for name, m in targets.items()}

    def accumulate(name: str):
        def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], s: Tensor) -> None:
            sums[name] += s.detach().to("cpu", torch.float64).sum(dim=0)

        return hook

    handles = [m.se.gate.register_forward_hook(accumulate(n)) for n, m in targets.items()]
    training = {m: m.training for m in model.modules()}
    param = next(model.parameters())
    n_images = 0
    try:
        model.eval()
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(images.to(param.device, param.dtype))
            n_images += images.shape[0]
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
    if n_images == 0:
        raise ValueError("no images to average SE attention over (empty batches)")
    return {name: (total / n_images).float() for name, total in sums.items()}


@torch.no_grad()
def fold_se_into_bn(model: nn.Module, attention: dict[str, Tensor]) -> nn.Module:
    """Replace each SEBatchNorm2d by a plain BatchNorm2d with γ' = γ·s̄, β' = β·s̄, in place.

    ``attention`` maps every SEBatchNorm2d's name to its averaged attention s̄ (C,), as
    returned by average_se_attention. In eval mode the result computes exactly what the SE
    model computes with each SE's attention fixed to s̄. Returns ``model`` for chaining.
    """
    targets = se_batchnorms(model)
    if set(attention) != set(targets):
        missing = sorted(set(targets) - set(attention))
        extra = sorted(set(attention) - set(targets))
        raise ValueError(f"attention keys do not match the SE layers: missing {missing}, extra {extra}")
    for name, se_bn in targets.items():
        if attention[name].shape != (se_bn.num_features,):
            raise ValueError(
                f"cannot fold attention of shape {tuple(attention[name].shape)} into {name} "
                f"({se_bn.num_features} channels)"
            )
        s = attention[name].to(se_bn.weight.device, se_bn.weight.dtype)
        bn = nn.BatchNorm2d(
            se_bn.num_features,
            eps=se_bn.eps,
            momentum=se_bn.momentum,
            affine=True,
            track_running_stats=se_bn.track_running_stats,
            device=se_bn.weight.device,
            dtype=se_bn.weight.dtype,
        )
        bn.load_state_dict({k: v for k, v in se_bn.state_dict().items() if not k.startswith("se.")})
        bn.weight.mul_(s)
        bn.bias.mul_(s)
        bn.train(se_bn.training)
        _set_submodule(model, name, bn)
    return model


def strip_se_blocks(model: nn.Module) -> nn.Module:
    """Replace each SEBatchNorm2d by its plain BatchNorm2d with γ, β as trained, in place.

    The SE-free architecture of fold_se_into_bn without the attention (s̄ = 1): it does not
    compute what the SE model computes, but it holds the weights the SE model learned, which
    is what a weight-ranking criterion (network slimming's |γ|, filter norms) must read on an
    SE parent. Folded weights would already carry RemoteTrimmer's attention amplification.
    """
    ones = {name: torch.ones(bn.num_features) for name, bn in se_batchnorms(model).items()}
    return fold_se_into_bn(model, ones)
