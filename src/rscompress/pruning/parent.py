"""A trained parent made ready for any pruning method, the same way for the CLI and the API.

An SE parent (rscompress's ``SEBatchNorm2d`` blocks) is folded for every method: the SE
attention averaged over calibration images goes into the BNs (RemoteTrimmer's step 3), so
every method prunes and ships the same SE-free architecture and budgets are comparable. The
weight criteria then score the weights the SE model learned (``weights_as_trained``), not the
folded γ·s̄: that amplification is RemoteTrimmer's contribution, which a baseline must not get.

Other libraries' SE layers (torchvision ``SqueezeExcitation``, timm ``SEModule`` /
``SqueezeExcite``) are folded for ``remotetrimmer`` by ``fold_foreign_se``: each becomes an
Identity and its averaged attention s̄ moves where the function stays exact. Where the SE reads
a BN through nothing but ReLU-like layers (f(a·x) = a·f(x) for a > 0), s̄ goes into that BN
(γ·s̄, β·s̄) as for our own SE blocks. After a Hardswish or SiLU it cannot, so s̄ scales the
input channels of the convolution the SE feeds, and CAP multiplies the BN's |γ| by s̄ when it
ranks (``importance.CAP_ATTENTION``): the same γ·s̄ score, the same function.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rscompress.config import PruneConfig
from rscompress.errors import UserError
from rscompress.models.se import se_batchnorms, strip_se_blocks
from rscompress.pruning.importance import CAP_ATTENTION
from rscompress.pruning.methods.remotetrimmer import prepare_remotetrimmer

# Class-name words of SE-style layers other libraries build (torchvision SqueezeExcitation,
# timm SEModule / SqueezeExcite / EffectiveSEModule): named when remotetrimmer cannot fold them.
_FOREIGN_SE_WORDS = ("SqueezeExcit", "SEModule", "SELayer", "EffectiveSE")


# Layers that commute with a positive per-channel scale: s̄ may cross them into the BN.
_SCALE_COMMUTING = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout)


def has_se_blocks(model: nn.Module) -> bool:
    return bool(se_batchnorms(model))


def foreign_se_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if any(word in type(m).__name__ for word in _FOREIGN_SE_WORDS)}


@dataclass
class _Call:
    name: str
    module: nn.Module
    input_ptr: int
    output_ptr: int


def _trace(model: nn.Module, se: dict[str, nn.Module], images: Tensor, sums: dict[str, Tensor]) -> list[_Call]:
    """One eval forward on ``images``: every leaf module's and SE layer's call (in order, with
    the storage of its input and output), and each SE's attention summed into ``sums``."""
    calls: list[_Call] = []

    def record(name: str, module: nn.Module):
        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if inputs and isinstance(inputs[0], Tensor) and isinstance(output, Tensor):
                calls.append(_Call(name, module, inputs[0].data_ptr(), output.data_ptr()))
                if name in se:  # y = x·s per image and channel: s from a least-squares fit
                    x, y = inputs[0].double(), output.double()
                    s = (x * y).sum((2, 3)) / (x * x).sum((2, 3)).clamp_min(1e-12)
                    sums[name] += s.sum(0).cpu()

        return hook

    # Leaves, the SE layers, and BatchNorms with children (timm's BatchNormAct2d runs its
    # activation inside): each is one step of the path from a BN to an SE.
    watched = {
        n: m
        for n, m in model.named_modules()
        if n and (n in se or isinstance(m, nn.BatchNorm2d) or not any(True for _ in m.children()))
    }
    handles = [m.register_forward_hook(record(n, m)) for n, m in watched.items()]
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
    return calls


def _producer(calls: list[_Call], index: int) -> int | None:
    """The call before ``index`` that wrote the tensor call ``index`` reads (the latest one:
    a storage freed earlier may have been reused, the live one was written last)."""
    return next((i for i in range(index - 1, -1, -1) if calls[i].output_ptr == calls[index].input_ptr), None)


def _consumer(calls: list[_Call], index: int) -> int | None:
    ptr = calls[index].output_ptr
    return next((i for i in range(index + 1, len(calls)) if calls[i].input_ptr == ptr), None)


@torch.no_grad()
def fold_foreign_se(model: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]]) -> list[str]:
    """Replace every foreign SE layer by an Identity, its averaged attention folded (module
    docstring); in place. Returns their names. UserError naming a layer it cannot fold."""
    se = foreign_se_layers(model)
    sums = {name: torch.zeros(_channels(m), dtype=torch.float64) for name, m in se.items()}
    training = {m: m.training for m in model.modules()}
    param = next(model.parameters())
    model.eval()
    calls: list[_Call] = []
    n_images = 0
    try:
        for images, _ in calibration:
            traced = _trace(model, se, images.to(param.device, param.dtype), sums)
            calls = calls or traced  # the graph is the same for every batch
            n_images += images.shape[0]
    finally:
        for m, flag in training.items():
            m.training = flag
    if n_images == 0:
        raise UserError("cannot average SE attention: the calibration batches hold no images")
    index_of = {c.name: i for i, c in enumerate(calls) if c.name in se}
    for name in se:
        attention = (sums[name] / n_images).to(param.dtype)
        _fold_one(name, se[name], attention, calls, index_of.get(name))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return list(se)


def _channels(se: nn.Module) -> int:
    """Channels an SE layer gates: its last 1×1 conv's (or Linear's) outputs."""
    last = [m for m in se.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if not last:
        raise UserError(f"cannot fold {type(se).__name__}: it has no convolution or Linear layer")
    return last[-1].out_channels if isinstance(last[-1], nn.Conv2d) else last[-1].out_features


def _fused_activation(bn: nn.Module) -> nn.Module | None:
    """The activation a BatchNorm subclass applies itself (timm's BatchNormAct2d), if any."""
    return None if type(bn) is nn.BatchNorm2d else getattr(bn, "act", None)


def _fold_one(name: str, se: nn.Module, attention: Tensor, calls: list[_Call], index: int | None) -> None:
    kind = type(se).__name__
    if index is None:
        raise UserError(f"cannot fold {kind} at {name}: it did not run in a forward pass")
    step = _producer(calls, index)
    while step is not None and isinstance(calls[step].module, _SCALE_COMMUTING):
        step = _producer(calls, step)
    producer = calls[step].module if step is not None else None
    act = _fused_activation(producer) if isinstance(producer, nn.BatchNorm2d) else None
    if isinstance(producer, nn.BatchNorm2d) and producer.affine and (act is None or isinstance(act, _SCALE_COMMUTING)):
        producer.weight.mul_(attention)
        producer.bias.mul_(attention)
        return
    # An activation that does not commute with a scale (Hardswish, SiLU) between BN and SE:
    # s̄ scales the consumer's inputs instead, and CAP reads it from the BN.
    if step is not None and not isinstance(producer, nn.BatchNorm2d):
        before = _producer(calls, step)
        producer = calls[before].module if before is not None else None
    consumer_index = _consumer(calls, index)
    consumer = calls[consumer_index].module if consumer_index is not None else None
    if not (isinstance(consumer, nn.Conv2d) and consumer.groups == 1 and isinstance(producer, nn.BatchNorm2d)):
        raise UserError(
            f"cannot fold {kind} at {name}: its input does not come from a BatchNorm through ReLU, "
            "nor does its output feed one convolution after a BatchNorm and activation"
        )
    consumer.weight.mul_(attention.view(1, -1, 1, 1))
    setattr(producer, CAP_ATTENTION, attention.detach().clone())


def no_foldable_se(model: nn.Module) -> str:
    """Why remotetrimmer cannot take ``model``, naming its own SE-style layers if it has any."""
    foreign = [
        (name, type(m).__name__)
        for name, m in model.named_modules()
        if any(word in type(m).__name__ for word in _FOREIGN_SE_WORDS)
    ]
    what = f"this {type(model).__name__}"
    if not foreign:
        return f"method remotetrimmer needs a parent with SE blocks (se_resnet18, ...); {what} has none"
    more = f", and {len(foreign) - 1} more" if len(foreign) > 1 else ""
    return (
        f"method remotetrimmer folds rscompress's SE blocks (SEBatchNorm2d: se_resnet18, se_vgg16_bn, ...); "
        f"{what}'s own ({foreign[0][1]} at {foreign[0][0]}{more}) cannot be folded yet: "
        "use another method, or an se_* model from rsc.create_model"
    )


def budget_reference(parent: nn.Module) -> nn.Module:
    """The model a budget is a share of: the parent as given, except that rscompress's SE
    blocks are stripped (every method folds them; the MACs counter cannot count them)."""
    return strip_se_blocks(copy.deepcopy(parent)) if has_se_blocks(parent) else parent


def budget_on_prepared(cfg: PruneConfig, parent_cost: tuple[int, int], prepared_cost: tuple[int, int]) -> PruneConfig:
    """``cfg`` with its budget as a share of the prepared model: folding another library's SE
    layers away removes their MACs and params, and a budget is a share of the model as given.
    ``*_cost``: (MACs, params) of each. Unchanged where preparing removed nothing."""
    update: dict[str, float] = {}
    for i, field in enumerate(("target_macs", "target_params")):
        target = getattr(cfg, field)
        if target is not None and prepared_cost[i] != parent_cost[i]:
            update[field] = min(1.0, target * parent_cost[i] / prepared_cost[i])
    return cfg.model_copy(update=update) if update else cfg


def rebase_budget(report: dict[str, Any], parent_cost: tuple[int, int]) -> dict[str, Any]:
    """A budget report (BudgetReport.to_dict: shares of the prepared model) as shares of the
    parent as given, whose (MACs, params) are ``parent_cost``; the same where they agree."""
    if (report["parent_macs"], report["parent_params"]) == tuple(parent_cost):
        return report
    return {
        **report,
        "parent_macs": parent_cost[0],
        "parent_params": parent_cost[1],
        "macs_kept": report["macs"] / parent_cost[0],
        "params_kept": report["params"] / parent_cost[1],
        "prepared_macs": report["parent_macs"],
        "prepared_params": report["parent_params"],
    }


def prepare_parent(
    parent: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]], method: str
) -> tuple[nn.Module, nn.Module | None]:
    """``(model to prune, weights_as_trained)``; ``parent`` itself is folded in place.

    ``calibration``: train batches (images, labels) whose SE attention is averaged.
    ``weights_as_trained`` is None for a parent without SE blocks (the model is its own).
    """
    if not has_se_blocks(parent):
        if method == "remotetrimmer":
            if not foreign_se_layers(parent):
                raise UserError(no_foldable_se(parent))
            fold_foreign_se(parent, calibration)
        return parent, None
    weights_as_trained = strip_se_blocks(copy.deepcopy(parent))
    return prepare_remotetrimmer(parent, calibration), weights_as_trained
