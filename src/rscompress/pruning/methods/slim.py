"""Network slimming (Liu et al., ICCV 2017): plain L1 on BN γ at a constant strength, every
BN on its own, then one global |γ| ranking to the budget (sparse_training.py has the code)."""

from __future__ import annotations

import dataclasses

from rscompress.pruning.methods.base import Selection
from rscompress.pruning.methods.sparse_training import SparseTrainingMethod, SparsityConfig


class Slim(SparseTrainingMethod):
    name = "slim"
    summary = "network slimming: L1 on BN γ at a constant strength, then global |γ|"

    def sparsity_config(self, s: Selection, base: SparsityConfig) -> SparsityConfig:
        return dataclasses.replace(
            base,
            reweight=False,
            couple_groups=False,
            dynamic=False,
            self_adaptive=False,
            attention_weight=0.0,
            attention_layers=(),
        )
