"""The one-shot baselines: Torch-Pruning's importance criteria, scored once on the trained
parent (METHODS.md, "Baselines"). Each is one row of methods.METHODS."""

from __future__ import annotations

from rscompress.pruning.importance import Importance, make_importance
from rscompress.pruning.methods.base import Criterion, Selection


class TorchPruningCriterion(Criterion):
    """A criterion of importance.make_importance, under its own name."""

    def __init__(self, name: str, summary: str, *, reads_weights_only: bool) -> None:
        self.name, self.summary, self.reads_weights_only = name, summary, reads_weights_only

    def importance(self, s: Selection) -> Importance:
        return make_importance(self.name)


BASELINES = (
    TorchPruningCriterion("l1", "L1 norm of each channel's weights (group magnitude)", reads_weights_only=True),
    TorchPruningCriterion("l2", "L2 norm of each channel's weights (group magnitude)", reads_weights_only=True),
    TorchPruningCriterion("bn", "|γ| of the channel's BatchNorms (network slimming's score)", reads_weights_only=True),
    # Reads gradients of the function the pruned model computes: the folded one on an SE parent.
    TorchPruningCriterion("taylor", "first-order Taylor |w·∂L/∂w| on calibration batches", reads_weights_only=False),
    TorchPruningCriterion("fpgm", "distance to the layer's geometric median (FPGM)", reads_weights_only=True),
    TorchPruningCriterion("lamp", "layer-adaptive magnitude (LAMP)", reads_weights_only=True),
    TorchPruningCriterion("random", "random scores (a floor for every other method)", reads_weights_only=False),
)
