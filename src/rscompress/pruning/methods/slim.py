"""Network slimming (Liu et al., ICCV 2017): plain L1 on BN γ at a constant strength, every
BN on its own, then one global |γ| ranking to the budget (sparse_training.py has the code)."""

from __future__ import annotations

import dataclasses

from rscompress.pruning.methods.base import Selection
from rscompress.pruning.methods.sparse_training import SparseTrainingMethod, SparsityConfig


class Slim(SparseTrainingMethod):
    name = "slim"
    summary = "network slimming: L1 on BN γ at a constant strength, then global |γ|"
    # Chosen on val (benchmarks/slim_rate.yaml: UC Merced se_resnet18 at 10 % of the MACs)
    # among 0.01, 0.03, 0.1 and 0.3. Held constant, 0.01 (L1RR's starting rate, slim's default
    # before) and 0.03 zeroed almost no γ in 30 epochs, so the global ranking cut live channels;
    # 0.3 zeroed nearly all of them. At 0.1 the phase zeroes a little more than the budget
    # removes, and the ranking takes dead channels first.
    default_rate = 0.1

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
