"""Expected MACs (or params) of a gated model: differentiable in the gates (METHODS.md §2).

A channel whose gate is g counts as g channels, so a layer's expected MACs are its MACs
with soft channel counts:

* convolution: k² · (Σ g_in) · (Σ g_out) / groups · H_out · W_out. A grouped conv pruned
  by position keeps its ``groups``, so this is exactly its MACs with whole channels;
* depthwise convolution (groups = in = out): k² · (Σ g) · H_out · W_out. Pruning removes
  input, output and groups together, so its cost is linear in the channel count (the
  formula above would make it quadratic);
* linear: (Σ g_in) · (Σ g_out) per output position (1 for a classifier).

Expected params are the same sums without the H_out · W_out factor (a conv's weights are
k² · in · out / groups, wherever it runs), so one class serves both budgets.

Channels in no gated group (image channels, logits, ungated groups) count as 1 each. Only
convolutions and Linear layers are counted: BN, activations, pooling and adds are what
``count_macs_params`` adds on top (a few % of a ResNet's count, more in MobileNetV2; see
tests/prune/test_nas.py), and they are linear in the channels anyway (biases and BN's γ, β
likewise for params). The ratio E[cost] / E[cost at g = 1] is what the cost term steers;
the real count of the derived model is measured afterwards with ``count_macs_params``
(nas.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rscompress.pruning.graph import Metric
from rscompress.pruning.methods.nas_gates import GateLayout

_CONV = nn.modules.conv._ConvNd


def _is_depthwise(layer: nn.Module) -> bool:
    if not isinstance(layer, _CONV):
        return False
    return layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels


@torch.no_grad()
def _output_positions(
    model: nn.Module, layers: dict[str, nn.Linear | nn.modules.conv._ConvNd], example: Tensor
) -> dict[str, int]:
    """Output positions (H_out·W_out; 1 for a classifier) of each layer, from one forward.

    Eval mode (flags restored), so tracing moves no BN statistics. A layer the forward
    does not reach is left out: it costs nothing (as in count_macs_params).
    """
    positions: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Linear | nn.modules.conv._ConvNd, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            positions[name] = positions.get(name, 0) + output.numel() // (output.shape[0] * channels)

        return hook

    handles = [layer.register_forward_hook(record(name)) for name, layer in layers.items()]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        model(example)
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in training.items():
            m.training = flag
    return positions


class ExpectedCost:
    """E[MACs] or E[params] (``metric``) of flat gates for a model and its ``GateLayout``;
    ``full`` is E at g = 1.

    One term per counted layer, evaluated for all layers at once: per layer the soft input
    and output channel counts are sums of gathered gates (index_add over the layout's
    per-channel indices), and E = Σ coef · s_in · s_out (s_in := 1 for depthwise).
    """

    def __init__(self, model: nn.Module, layout: GateLayout, example: Tensor, metric: Metric = "macs") -> None:
        if metric not in ("macs", "params"):
            raise ValueError(f"metric must be 'macs' or 'params', got {metric!r}")
        self.metric = metric
        counted: dict[str, nn.Linear | nn.modules.conv._ConvNd] = {
            name: m
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, _CONV) and not m.transposed)
        }
        positions = _output_positions(model, counted, example)
        constant = layout.n_gates  # index of the trailing 1 in the flat gate vector
        coef: list[float] = []
        depthwise: list[bool] = []
        segments: dict[str, tuple[list[Tensor], list[Tensor]]] = {"in": ([], []), "out": ([], [])}
        for name, layer in counted.items():
            if metric == "macs" and name not in positions:
                continue  # the forward never reaches it: no MACs (its weights are still params)
            term = len(coef)
            per_position: float
            if isinstance(layer, nn.Linear):
                widths, per_position = (layer.in_features, layer.out_features), 1
            else:
                widths = (layer.in_channels, layer.out_channels)
                per_position = math.prod(layer.kernel_size) / (1 if _is_depthwise(layer) else layer.groups)
            coef.append(per_position * (positions[name] if metric == "macs" else 1))
            depthwise.append(_is_depthwise(layer))
            for side, width, table in (("in", widths[0], layout.inputs), ("out", widths[1], layout.outputs)):
                where = table.get(name, torch.full((width,), constant, dtype=torch.long))
                segments[side][0].append(torch.full((width,), term, dtype=torch.long))
                segments[side][1].append(where)
        device = example.device
        self._coef = torch.tensor(coef, dtype=torch.float64, device=device)
        self._depthwise = torch.tensor(depthwise, dtype=torch.bool, device=device)
        self._segment = {side: torch.cat(seg).to(device) for side, (seg, _) in segments.items()}
        self._index = {side: torch.cat(idx).to(device) for side, (_, idx) in segments.items()}
        self.full = float(self(torch.ones(constant + 1, device=device)))

    def __call__(self, flat: Tensor) -> Tensor:
        """E[MACs] or E[params] (float64 scalar) for the flat gate vector of ChannelGates.flat()."""
        flat = flat.double()
        soft = {
            side: flat.new_zeros(len(self._coef)).index_add(0, self._segment[side], flat[self._index[side]])
            for side in ("in", "out")
        }
        s_in = torch.where(self._depthwise, torch.ones_like(soft["in"]), soft["in"])
        return (self._coef * s_in * soft["out"]).sum()

    def ratio(self, flat: Tensor) -> Tensor:
        """E / E at g = 1: the expected fraction of the full model's MACs (params) kept."""
        return self(flat) / self.full


def cost_awareness_loss(ratio: Tensor, target: float) -> Tensor:
    """|E[MACs]/F_full / r* − 1| (or params): the miss relative to the target, not absolute.

    The absolute form |ratio − r*| has a gradient that does not depend on r* while the ratio
    is above it, so searches towards 10 % and 5 % ran identically and both stalled near a
    ratio of 0.23 in 20 epochs on UC Merced (benchmarks/results/superseded/
    pruning-nas-absolute-cost.jsonl), leaving the threshold a one-shot cut from 23 % to the
    target. Relative to r*, a hard target pushes as hard per share of its budget as an easy
    one.
    """
    return (ratio / target - 1).abs()
