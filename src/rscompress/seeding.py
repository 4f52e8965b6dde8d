"""Seeds derived from (purpose, seed, epoch): every random stream of a run is a pure function
of the run's seed, so a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import hashlib


def derived_seed(purpose: str, seed: int, epoch: int) -> int:
    # Hashing (instead of seed + epoch) keeps (seed=0, epoch=1) and (seed=1, epoch=0) apart,
    # and ``purpose`` keeps the streams (batch order, dropout, ...) independent of each other.
    digest = hashlib.sha256(f"rscompress-{purpose}:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # manual_seed wants a non-negative int64
