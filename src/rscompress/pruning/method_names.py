"""The names ``--method`` takes, where config.py can read them without importing the methods
(select.py, which runs them, imports config.py)."""

from rscompress.pruning.importance import IMPORTANCES

# Trained sparse on BN γ before pruning (network slimming, L1RR).
SPARSE_METHODS = ("slim", "l1rr")
METHODS = (*IMPORTANCES, *SPARSE_METHODS, "nas")
