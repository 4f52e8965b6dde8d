"""Structured pruning: importance criteria, one-shot pruning, budgets, pickle-free rebuild.

``prune`` removes a ratio of channels in place; ``prune_to_budget`` searches the ratio that
keeps a target share of MACs or params; ``architecture_spec``/``apply_architecture`` store and
rebuild a pruned model's shapes; ``methods.remotetrimmer`` is RemoteTrimmer's CAP.
"""

from rscompress.pruning.budget import BudgetReport, prune_to_budget
from rscompress.pruning.importance import (
    IMPORTANCES,
    accumulate_gradients,
    make_importance,
)
from rscompress.pruning.plan import MAX_PRUNING_RATIO
from rscompress.pruning.pruner import find_classifier, prune
from rscompress.pruning.rebuild import apply_architecture, architecture_spec

__all__ = [
    "IMPORTANCES",
    "MAX_PRUNING_RATIO",
    "BudgetReport",
    "accumulate_gradients",
    "apply_architecture",
    "architecture_spec",
    "find_classifier",
    "make_importance",
    "prune",
    "prune_to_budget",
]
