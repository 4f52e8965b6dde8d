"""L1RR (METHODS.md §3, Ran et al. 2024): reweighted, dynamic, self-adaptive L1 sparse
training on BN γ with residual groups shrunk as one and a feature attention loss towards the
dense parent, then one global |γ| ranking to the budget (sparse_training.py has the code)."""

from __future__ import annotations

import dataclasses

from rscompress.pruning.methods.base import Selection
from rscompress.pruning.methods.sparse_training import SparseTrainingMethod, SparsityConfig

# Stages whose attention maps L1RR keeps close to the dense model's (METHODS.md §3).
_ATTENTION_LAYERS = {
    "resnet": ("layer2", "layer3", "layer4"),
    "vgg": ("features.22", "features.32", "features.42"),  # ReLUs ending VGG-16-BN stages 3-5
    # A detector's FPN outputs P3-P5 (the paper's attention on the neck's feature levels).
    "fcos_": ("backbone.fpn.layer_blocks.0", "backbone.fpn.layer_blocks.1", "backbone.fpn.layer_blocks.2"),
}


def attention_layers(model_name: str) -> tuple[str, ...]:
    """The layers of ``model_name``'s family (torchvision/ and timm/ names included); none
    for another family, which then trains without the attention loss."""
    family = model_name.split("/")[-1]
    for prefix, layers in _ATTENTION_LAYERS.items():
        if family.startswith(prefix):
            return layers
    return ()


class L1RR(SparseTrainingMethod):
    name = "l1rr"
    summary = "L1RR: reweighted dynamic L1 on BN γ + feature attention loss, residual groups as one"
    options = SparseTrainingMethod.options | {"attention_weight", "sparse_loss_tolerance", "sparse_hold_scale"}

    def sparsity_config(self, s: Selection, base: SparsityConfig) -> SparsityConfig:
        layers = attention_layers(s.family)
        return dataclasses.replace(
            base,
            reweight=True,
            couple_groups=True,
            dynamic=True,
            self_adaptive=True,
            attention_weight=s.cfg.attention_weight if layers else 0.0,
            attention_layers=layers,
            hold_layer_scale=s.cfg.sparse_hold_scale,
            loss_tolerance=(
                base.loss_tolerance if s.cfg.sparse_loss_tolerance is None else s.cfg.sparse_loss_tolerance
            ),
        )
