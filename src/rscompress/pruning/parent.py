"""A trained parent made ready for any pruning method, the same way for the CLI and the API.

An SE parent (rscompress's ``SEBatchNorm2d`` blocks) is folded for every method: the SE
attention averaged over calibration images goes into the BNs (RemoteTrimmer's step 3), so
every method prunes and ships the same SE-free architecture and budgets are comparable. The
weight criteria then score the weights the SE model learned (``weights_as_trained``), not the
folded γ·s̄: that amplification is RemoteTrimmer's contribution, which a baseline must not get.

Other libraries' SE layers (torchvision ``SqueezeExcitation``, timm ``SEModule`` /
``SqueezeExcite``) are folded for ``remotetrimmer`` by ``fold_foreign_se_layers``: each becomes an
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

from rscompress.errors import UserError
from rscompress.models.se import average_se_attention, fold_se_into_bn, se_batchnorms, strip_se_blocks
from rscompress.pruning.importance import CAP_ATTENTION

# Class-name words of SE-style layers other libraries build (torchvision SqueezeExcitation,
# timm SEModule / SqueezeExcite / EffectiveSEModule): what fold_foreign_se_layers looks for.
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
    input: Tensor  # held, so no later tensor can take its storage while the graph is read
    output: Tensor


def _trace(model: nn.Module, se: dict[str, nn.Module], images: Tensor, sums: dict[str, Tensor]) -> list[_Call]:
    """One eval forward on ``images``: every leaf module's and SE layer's call, in order, with
    its input and output tensors; each SE's gate output (its attention) summed into ``sums``."""
    calls: list[_Call] = []
    gates: dict[str, Tensor] = {}

    def record(name: str, module: nn.Module):
        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if inputs and isinstance(inputs[0], Tensor) and isinstance(output, Tensor):
                calls.append(_Call(name, module, inputs[0], output))
                if name in se:
                    sums[name] += gates[name].double().sum(0).flatten().cpu()

        return hook

    def gate(name: str, channels: int):
        # The SE's last B×C×1×1 output is its gate (sigmoid / hard sigmoid): the attention itself.
        def hook(_m: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(output, Tensor) and output.ndim == 4 and output.shape[1:] == (channels, 1, 1):
                gates[name] = output

        return hook

    # Leaves, the SE layers, and BatchNorms with children (timm's BatchNormAct2d runs its
    # activation inside): each is one step of the path from a BN to an SE.
    watched = {
        n: m
        for n, m in model.named_modules()
        if n and (n in se or isinstance(m, nn.BatchNorm2d) or not any(True for _ in m.children()))
    }
    handles = [m.register_forward_hook(record(n, m)) for n, m in watched.items()]
    handles += [
        sub.register_forward_hook(gate(n, _channels(m))) for n, m in se.items() for sub in m.modules() if sub is not m
    ]
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
    return calls


def _producer(calls: list[_Call], index: int) -> int | None:
    """The latest call before ``index`` whose output is the tensor call ``index`` reads (an
    in-place ReLU returns its input: then the ReLU, and before it what wrote that tensor)."""
    return next((i for i in range(index - 1, -1, -1) if calls[i].output is calls[index].input), None)


def _consumer(calls: list[_Call], index: int) -> int | None:
    output = calls[index].output
    return next((i for i in range(index + 1, len(calls)) if calls[i].input is output), None)


@torch.no_grad()
def fold_foreign_se_layers(model: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]]) -> list[str]:
    """Replace every foreign SE layer by an Identity, its averaged attention folded (module
    docstring); in place. Returns their names. UserError naming a layer it cannot fold, or if
    the folded model does not compute what the SE model computes with its attention fixed."""
    se = foreign_se_layers(model)
    sums = {name: torch.zeros(_channels(m), dtype=torch.float64) for name, m in se.items()}
    training = {m: m.training for m in model.modules()}
    param = next(model.parameters())
    model.eval()
    calls: list[_Call] = []
    first: Tensor | None = None
    n_images = 0
    try:
        for images, _ in calibration:
            images = images.to(param.device, param.dtype)
            traced = _trace(model, se, images, sums)
            if first is None:  # the graph is the same for every batch
                calls, first = traced, images
            n_images += images.shape[0]
        if first is None:
            raise UserError("cannot average SE attention: the calibration batches hold no images")
        attention = {name: (sums[name] / n_images).to(param.dtype) for name in se}
        expected = _with_fixed_attention(model, se, attention, first)
        index_of = {c.name: i for i, c in enumerate(calls) if c.name in se}
        for name in se:
            _fold_one(name, se[name], attention[name], calls, index_of.get(name))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        got = model(first)
    finally:
        for m, flag in training.items():
            m.training = flag
    scale = expected.abs().amax(1, keepdim=True).clamp_min(1.0)
    if (miss := float(((got - expected).abs() / scale).max())) > 1e-4:
        raise UserError(
            f"folding the SE layers {list(se)[:3]} changes what the model computes with their attention "
            f"fixed to its mean ({miss:.2g} of the largest logit): this architecture is not supported"
        )
    return list(se)


def _with_fixed_attention(
    model: nn.Module, se: dict[str, nn.Module], attention: dict[str, Tensor], images: Tensor
) -> Tensor:
    """The model's output with every SE layer's attention fixed to ``attention``: what folding
    must reproduce."""

    def fixed(name: str):
        return lambda _m, inputs, _output: inputs[0] * attention[name].view(1, -1, 1, 1)

    handles = [m.register_forward_hook(fixed(n)) for n, m in se.items()]
    try:
        return model(images)
    finally:
        for h in handles:
            h.remove()


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
    """Why remotetrimmer cannot take ``model``: it has no SE layers at all."""
    what = type(model).__name__
    return f"method remotetrimmer needs a parent with SE blocks (se_resnet18, ...); this {what} has none"


def budget_reference(parent: nn.Module) -> nn.Module:
    """The model a budget is a share of: the parent as given, except that rscompress's SE
    blocks are stripped (every method folds them; the MACs counter cannot count them)."""
    return strip_se_blocks(copy.deepcopy(parent)) if has_se_blocks(parent) else parent


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
    parent: nn.Module, calibration: Iterable[tuple[Tensor, Tensor]], *, fold_foreign_se: bool
) -> tuple[nn.Module, nn.Module | None]:
    """``(model to prune, weights_as_trained)``; ``parent`` itself is folded in place.

    ``calibration``: train batches (images, labels) whose SE attention is averaged.
    ``weights_as_trained`` is None for a parent without SE blocks (the model is its own).
    ``fold_foreign_se``: fold other libraries' SE layers too (RemoteTrimmer); UserError if
    the parent has none.
    """
    if not has_se_blocks(parent):
        if fold_foreign_se:
            if not foreign_se_layers(parent):
                raise UserError(no_foldable_se(parent))
            fold_foreign_se_layers(parent, calibration)
        return parent, None
    weights_as_trained = strip_se_blocks(copy.deepcopy(parent))
    return fold_se_blocks(parent, calibration), weights_as_trained


def fold_se_blocks(
    se_model: nn.Module, attention_batches: Iterable[Tensor | tuple[Tensor, ...] | list[Tensor]]
) -> nn.Module:
    """Fold the SE attention averaged over ``attention_batches`` into the BNs, in place.

    ``se_model`` is a trained ``se_*`` registry model; ``attention_batches`` yields image
    batches (or DataLoader (images, labels) tuples) of the training split. Returns the same
    model object, now without SE blocks, ready for any method (RemoteTrimmer's step 1).
    """
    if not se_batchnorms(se_model):
        raise UserError(
            "remotetrimmer needs a parent model trained with SE blocks (an se_* model, e.g. "
            f"se_resnet18); this {type(se_model).__name__} has none"
        )
    try:
        attention = average_se_attention(se_model, attention_batches)
    except ValueError as e:  # no images: the user's data, not our bug
        raise UserError(f"cannot average SE attention: {e}") from e
    return fold_se_into_bn(se_model, attention)
