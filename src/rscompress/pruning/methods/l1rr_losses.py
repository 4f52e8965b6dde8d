"""L1RR's training terms as pure functions (METHODS.md §3): the reweighted L1 penalty on BN γ,
its weights, its proximal step, the sparsity it is measured by, and Zagoruyko & Komodakis
attention transfer.

The penalty is on coupled channels: a (k, n) stack holds n channels, each the same channel in
k BNs that are pruned together (a residual stream: every block's last BN and the downsample
BN). Each column is penalised by its norm, so a stream channel shrinks in all k BNs at once
and reaches zero as one (l1rr.sparse_train says why). A BN channel pruned alone is a column of
a k = 1 stack, where all of it is the plain reweighted L1 of network slimming.

Nothing here touches a model: every function maps tensors to tensors (or numbers), so each
rule can be tested on hand-made values and ``l1rr.sparse_train`` only wires them together.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def reweighted_l1(stacks: Sequence[Tensor], weights: Sequence[Tensor]) -> Tensor:
    """Σ_stacks Σ_c w_c·√k·‖γ_·c‖₂: the sparsity penalty, differentiable in the stacks.

    For k = 1 the term is w_c·|γ_c|. A sum over channels, not a mean, as in network slimming:
    the strength λ that multiplies it is then a per-channel push whatever the width of the
    net. √k·‖·‖₂ equals the sum of the k |γ| when they are equal, so a stream channel costs
    what its k BN channels would cost apart, but its proximal step keeps them together. With
    all weights 1 and k = 1 it is network slimming's plain L1. Training minimises it through
    its proximal step (group_soft_threshold); this value is what the report logs.
    """
    if len(stacks) != len(weights):
        raise ValueError(f"{len(stacks)} gamma stacks but {len(weights)} weight tensors")
    if not stacks:
        raise ValueError("no gammas to penalise")
    return torch.stack(
        [(w * s.norm(dim=0)).sum() * s.shape[0] ** 0.5 for s, w in zip(stacks, weights, strict=True)]
    ).sum()


def group_soft_threshold(stack: Tensor, threshold: Tensor | float) -> Tensor:
    """Proximal step of t·√k·‖v‖₂ on every column v of a (k, n) stack: v·max(0, 1 − t√k/‖v‖).

    For k = 1 this is the soft threshold sign(γ)·max(|γ| − t, 0). A column shrinks along its
    own direction, so its k entries reach zero in the same step.

    Why a proximal step and not the subgradient t·sign(γ) in the loss: near zero the
    reweighted push is up to 1/eps times λ, so subgradient steps jump across zero by more
    than eps and γ oscillates around it instead of settling; sparsity (|γ| < eps) then stays
    low whatever λ, and a controller that raises λ while sparsity lags makes it worse. The
    proximal step lands on exactly 0 and stays there while the task gradient is weaker than
    the push.
    """
    norms = stack.norm(dim=0)
    kept = (1 - threshold * stack.shape[0] ** 0.5 / norms.clamp(min=torch.finfo(stack.dtype).tiny)).clamp(min=0)
    return stack * kept


def coupled_magnitudes(stacks: Sequence[Tensor]) -> list[Tensor]:
    """Each coupled channel's size: the RMS of its γ over the k BNs, (k, n) → (n,), detached.

    What the Candès weights and the strength's scale read: for k = 1 it is |γ|.
    """
    return [s.detach().pow(2).mean(dim=0).sqrt() for s in stacks]


def candes_weights(magnitudes: Sequence[Tensor], eps: float) -> list[Tensor]:
    """Candès–Wakin–Boyd reweighting: w_c = 1 / (|γ_c| + eps), detached (``magnitudes``: |γ|
    per channel, or coupled_magnitudes).

    Re-estimated once per epoch from the current γ: small channels get a large push and reach
    zero fast, large ones are barely touched, so the penalty approximates counting non-zero
    channels (what pruning removes) rather than shrinking every channel alike. ``eps`` bounds
    the weight at 1/eps for a channel already at zero.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return [1.0 / (m.detach().abs() + eps) for m in magnitudes]


def strength_per_rate(median_gamma: float, eps: float, reweight: bool, lr: float, momentum: float, steps: int) -> float:
    """λ that makes the penalty alone take a share 1 of ``median_gamma`` off a channel at that
    median in one epoch; λ for a rate ρ is ρ times this.

    Per SGD step the proximal threshold is lr·λ·w/(1 − μ) (sparse_train says why), so one
    epoch of ``steps`` steps moves a median channel by steps·lr·λ·w_med/(1 − μ), where
    w_med = 1/(median + eps) with Candès reweighting and 1 without. Setting that to
    ρ·median gives λ = ρ·median·(1 − μ)/(lr·steps·w_med).

    Why a rate and not λ itself: the λ that moves γ at all depends on the lr, the epoch length
    and the scale of the parent's γ. The old cap λ = 1e-2 is ρ ≈ 0.16 on our SE-folded
    se_resnet18 parents (median |γ| 0.36, lr 0.01, 22 steps) and sparsified them; on vgg16_bn
    (median 0.97, lr 0.001) it is ρ ≈ 0.002 and moved γ by 0.2 % in 30 epochs (README). A rate
    means the same on both. ``median_gamma`` is floored at ``eps``: below it the net is
    already mostly "zero" by the sparsity's measure.
    """
    if lr <= 0 or steps <= 0 or not 0 <= momentum < 1:
        raise ValueError(f"need lr > 0, steps > 0 and 0 <= momentum < 1, got {lr}, {steps}, {momentum}")
    scale = max(median_gamma, eps)
    weight = 1.0 / (scale + eps) if reweight else 1.0
    return scale * (1 - momentum) / (lr * steps * weight)


def sparsity(gammas: Sequence[Tensor], eps: float) -> float:
    """Share of channels with |γ| < eps over all the given BNs (0 when there are none)."""
    total = sum(g.numel() for g in gammas)
    if total == 0:
        return 0.0
    return sum(int((g.detach().abs() < eps).sum()) for g in gammas) / total


def layer_spread(gammas: Sequence[Tensor]) -> float:
    """The median over BNs (of more than one channel) of std(|γ|) / mean(|γ|) within the BN: how
    far |γ| tells a layer's channels apart. 0 when no BN has two channels, or all are at 0.

    A parent whose γ hardly moved in training has them all near one value in every layer (the
    fcos_mobilenet_v3 detectors here: 0.0014, all at weight decay's 0.955), and a |γ| ranking
    of its channels is then close to arbitrary until sparse training makes them differ.
    """
    spreads = [
        (a.std() / a.mean()).item() for g in gammas if g.numel() > 1 and (a := g.detach().abs().float()).mean() > 0
    ]
    return statistics.median(spreads) if spreads else 0.0


def layer_multipliers(gammas: Sequence[Tensor], eps: float, max_ratio: float) -> list[float]:
    """Self-adaptive per-layer factor: m_l = max(0, 1 − z_l / max_ratio), z_l = layer's sparsity.

    A layer whose γ are already concentrated near zero gets less push: pruning never removes
    more than ``max_ratio`` of a layer (plan.MAX_PRUNING_RATIO), so zeroing more of its
    channels gains nothing and only destroys the few it must keep. At z_l >= max_ratio the
    layer is left to the task loss; if its zeros regrow, z_l drops and the push comes back.
    Layers with nothing near zero keep the full push (m_l = 1), so at the start of sparse
    training the penalty is exactly the reweighted L1.

    (Normalising by each layer's median |γ| was the alternative; the Candès weights already
    make the push scale-aware per channel, while nothing else stops a layer from collapsing.)
    """
    if not 0 < max_ratio <= 1:
        raise ValueError(f"max_ratio must be in (0, 1], got {max_ratio}")
    return [max(0.0, 1.0 - sparsity([g], eps) / max_ratio) for g in gammas]


def attention_map(features: Tensor) -> Tensor:
    """Spatial attention of an (N, C, H, W) feature map: mean_c F², flattened, L2-normalised.

    Returns (N, H·W). Independent of the channel count, so a sparse (or pruned) student is
    compared with its dense teacher channel for channel-free.
    """
    if features.dim() != 4:
        raise ValueError(f"attention_map needs (N, C, H, W) features, got shape {tuple(features.shape)}")
    return F.normalize(features.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Σ_layers mean_batch ‖a(F_student) − a(F_teacher)‖₂², each term in [0, 4].

    Teacher features are detached: the dense parent is a fixed reference.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            f"need the same non-zero number of student and teacher maps, got "
            f"{len(student_feats)} and {len(teacher_feats)}"
        )
    terms = [
        (attention_map(s) - attention_map(t.detach())).pow(2).sum(dim=1).mean()
        for s, t in zip(student_feats, teacher_feats, strict=True)
    ]
    return torch.stack(terms).sum()
