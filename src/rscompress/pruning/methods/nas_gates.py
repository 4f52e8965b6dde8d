"""Channel gates for the NAS search (METHODS.md §2): one score α per prunable channel.

Where the gates sit
-------------------
Torch-Pruning's dependency groups (graph.build_graph) say which channels must be removed
together: a residual stream (every block's last BN, the downsample BN, the add) is ONE
group, a concat's inputs map onto slices of the layers after it. So a group has one α
vector, and every BatchNorm of the group multiplies its output by the SAME gate
g = sigmoid(α/τ) (channel c of a BN reads the gate of the root position it carries). With
one gate on every summand of a residual add, relu(g·a + g·b) = g·relu(a + b): the stream
stays one set of channels, exactly what pruning the group later removes.

Groups with no BatchNorm (in the registered models only VGG's hidden classifier layers,
Linear → ReLU → Dropout) are not gated by default: they count as fixed channels in E[MACs]
and are not pruned, as with the BN criteria (importance.py). With ``gate_without_bn`` they
are: the gates multiply the outputs of the convs/linears producing their channels,
relu(g·(Wx + b)) = g·relu(Wx + b), and fold into those rows of W and b. On vgg16_bn at 64 px
those layers hold 89 % of the parameters and 9 % of the MACs. Searched too, at 10 % of the
MACs (seed 0) they shrank from 4096 to 410 and 1555 outputs: 2.3 % of the params kept instead
of 21 %, but val top-1 88.6 % instead of 91.0 % (test 87.1 vs 90.7), so the default leaves
them out (benchmarks/results/superseded/README.md).

In a plain chain (conv → BN → depthwise conv → BN, as in MobileNetV2) both BNs belong to
the same group, so a channel is gated twice (g² on that path). That only sharpens the
gate; the ranking by α, which is all the derivation reads, is unchanged.

The classifier's outputs are never gated (the groups are the ones ``score_model`` prunes:
protected layers excluded).

Grouped (not depthwise) convolutions are pruned by *position* (graph.GroupScore): position
p of a group with ``ch_groups`` parts stands for channels p, p + n, p + 2n, … . So α has
one entry per position and those channels share it.

Layout
------
All groups' gates live in one flat vector, with one extra entry fixed at 1 at the end:
``flat = [g_group0, g_group1, …, 1]``. Each gated layer (and, for the cost model, each
conv/linear input and output) holds a LongTensor with, per channel, its index into
``flat``; channels in no gated group point at the trailing 1. A gate is then one gather,
and the layers of one group share α entries by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from rscompress.pruning.graph import ROOT_TYPES, build_graph, channel_groups
from rscompress.pruning.pruner import protected_layers

_NORM = nn.modules.batchnorm._BatchNorm
_CONV = nn.modules.conv._ConvNd

# α/τ at the start: g = sigmoid(3) ≈ 0.95. Close enough to 1 that the trained parent's
# function barely changes (a BN output scaled by 0.95), far enough from saturation that the
# gate still has a usable gradient (g(1−g) ≈ 0.045; at α/τ = 5 it would be 0.0066).
INIT_LOGIT = 3.0


@dataclass(frozen=True)
class GateLayout:
    """Which channels of which layers read which gate (see the module docstring).

    ``roots``/``sizes``: root layer name and number of positions of each gated group, in
    graph order; ``flat`` has ``sum(sizes) + 1`` entries, the last the constant 1.
    ``gated``: name of a layer whose output the gates multiply (the BNs of a group, or the
    producing convs/linears of a group without BN) → per-channel index into ``flat``.
    ``inputs``/``outputs``: conv or linear name → per-channel index of its input/output
    channels (layers or sides that no gated group touches are absent: all their channels
    are fixed).
    """

    roots: tuple[str, ...]
    sizes: tuple[int, ...]
    gated: dict[str, Tensor]
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]

    @property
    def n_gates(self) -> int:
        return sum(self.sizes)

    def offsets(self) -> list[int]:
        """Start of each group's slice of ``flat``."""
        starts, total = [], 0
        for size in self.sizes:
            starts.append(total)
            total += size
        return starts


def _sides(graph: tp.DependencyGraph, layer: nn.Module, handler: Callable) -> tuple[str, ...]:
    """Which channel tables a group member fills: a BN's "norm", a conv/linear's "in"/"out".

    A depthwise conv's pruning function removes its input and output channels at once
    (Torch-Pruning registers it as both), so it fills both sides.
    """
    if isinstance(layer, _NORM):
        return ("norm",)
    if not isinstance(layer, (_CONV, nn.Linear)):
        return ()  # adds, concats, reshapes: no channels of their own
    return tuple(
        side
        for side, member in (("in", graph.is_in_channel_pruning_fn), ("out", graph.is_out_channel_pruning_fn))
        if member(handler)
    )


def _width(layer: nn.Module, side: str) -> int:
    if isinstance(layer, _NORM):
        return layer.num_features
    if isinstance(layer, nn.Linear):
        return layer.in_features if side == "in" else layer.out_features
    if not isinstance(layer, _CONV):
        raise TypeError(f"no channel width on {type(layer).__name__}")  # gate_layout gates no other layer
    return layer.in_channels if side == "in" else layer.out_channels


def gate_layout(model: nn.Module, example_inputs: Tensor, *, gate_without_bn: bool = False) -> GateLayout:
    """The gate layout of ``model``: the groups ``prune_to_budget`` will prune, gated.
    ``gate_without_bn``: gate the groups with no BN too (see the module docstring).

    Groups come from the same call as ``pruner.score_model`` (same graph, same protected
    layers, same root types), so the derivation step scores exactly these groups.
    """
    graph = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    protected = protected_layers(model, example_inputs)
    roots: list[str] = []
    sizes: list[int] = []
    tables: dict[str, dict[str, Tensor]] = {"in": {}, "out": {}, "gated": {}}
    for group in graph.get_all_groups(ignored_layers=protected, root_module_types=ROOT_TYPES):
        # the BNs carry the gates; without any, the layers producing the channels may
        members = [item.dep.target.module for item in group]
        if any(isinstance(m, _NORM) for m in members):
            gated_side = "norm"
        elif gate_without_bn and not any(isinstance(m, _CONV) and m.transposed for m in members):
            gated_side = "out"
        else:
            continue  # ungated, never pruned (a transposed conv's W keeps its outputs in dim 1)
        positions = len(group[0].idxs) // channel_groups(graph, group)
        offset = sum(sizes)
        for item in group:
            if not item.root_idxs or any(r is None for r in item.root_idxs):
                continue  # Torch-Pruning's marker for a member with no root channel
            layer = item.dep.target.module
            src = torch.tensor([offset + r % positions for r in item.root_idxs], dtype=torch.long)
            for side in _sides(graph, layer, item.dep.handler):
                tables_of_side = [side] if side != "norm" else []  # the cost model reads in/out
                if side == gated_side:
                    tables_of_side.append("gated")
                for table in tables_of_side:
                    # -1 until the end: "fixed channel", replaced by the trailing 1's index
                    where = tables[table].setdefault(names[layer], torch.full((_width(layer, side),), -1))
                    where[torch.tensor(item.idxs, dtype=torch.long)] = src
        roots.append(names[group[0].dep.target.module])
        sizes.append(positions)
    for indices in tables.values():
        for where in indices.values():
            where[where < 0] = sum(sizes)
    return GateLayout(tuple(roots), tuple(sizes), tables["gated"], tables["in"], tables["out"])


class ChannelGates(nn.Module):
    """The α's of a ``GateLayout`` and the forward hooks that gate a model's channels.

    Lives outside the model: ``attach`` adds one forward hook per gated layer, ``remove``
    takes them all off again, after which the model is exactly what it was (no modules,
    no hooks, no parameters added).
    """

    def __init__(self, layout: GateLayout, tau: float) -> None:
        super().__init__()
        self.layout = layout
        self.tau = tau
        self.alpha = nn.Parameter(torch.full((layout.n_gates,), INIT_LOGIT * tau))
        self._handles: list[RemovableHandle] = []

    def flat(self) -> Tensor:
        """``[sigmoid(α/τ) of every position…, 1]``: the vector the layout indexes into."""
        return torch.cat([torch.sigmoid(self.alpha / self.tau), self.alpha.new_ones(1)])

    def group_alphas(self) -> dict[str, Tensor]:
        """Root layer name → that group's α (one per position), detached, on the CPU."""
        alpha = self.alpha.detach().cpu()
        layout = self.layout
        return {
            root: alpha[start : start + size].clone()
            for root, start, size in zip(layout.roots, layout.offsets(), layout.sizes, strict=True)
        }

    def attach(self, model: nn.Module) -> None:
        """Gate every layer of the layout in ``model`` (a model with the layout's module names)."""
        if self._handles:
            raise RuntimeError("gates are attached already; remove() them first")
        for _, module, index in self._gated_layers(model):
            self._handles.append(module.register_forward_hook(self._hook(index)))

    @torch.no_grad()
    def fold_into(self, model: nn.Module) -> None:
        """Scale each gated BN's γ and β by its gates, g·(γx̂ + β) = (gγ)x̂ + gβ, and each gated
        conv/linear's output rows of W and b, g·(Wx + b) = (gW)x + gb; so without the hooks
        ``model`` computes what the gated model computed.

        Dropping the gates instead rescales every kept channel by 1/g relative to what the
        search trained the next layers on; on vgg16_bn at 10 % of the MACs (kept gates down to
        ~0.5, no residual path) fine-tuning never recovered from that (README, pruning).
        """
        flat = self.flat()
        for name, module, index in self._gated_layers(model):
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if not isinstance(weight, Tensor):  # a BN without affine γ/β
                raise ValueError(f"cannot fold gates into {name}: it has no affine γ/β")
            g = flat[index]
            # weight: γ (C,), or output channels first (C, in, k…) for conv and linear
            weight.mul_(g.view(-1, *([1] * (weight.dim() - 1))))
            if isinstance(bias, Tensor):
                bias.mul_(g)

    def _gated_layers(self, model: nn.Module) -> Iterator[tuple[str, nn.Module, Tensor]]:
        """Each gated layer of the layout in ``model``, by name, with its per-channel index into
        ``flat()``, moved to the gates' device once (not per forward)."""
        for name, module in model.named_modules():
            if name in self.layout.gated:
                yield name, module, self.layout.gated[name].to(self.alpha.device)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: Tensor) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
        def gate(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            g = self.flat()[index]  # layers of one group gather the same entries: same gates
            return output * g.view(1, -1, *([1] * (output.dim() - 2)))

        return gate
