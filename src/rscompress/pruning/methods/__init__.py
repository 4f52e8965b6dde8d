"""Every pruning method, by the name ``--method`` takes: one module each (the protocol is in
base.py), one row in ``METHODS``. Adding a method is adding its module and its row."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rscompress.errors import UserError
from rscompress.pruning.methods.base import Budget, Criterion, PruningMethod
from rscompress.pruning.methods.criteria import BASELINES
from rscompress.pruning.methods.hrank import HRank
from rscompress.pruning.methods.l1rr import L1RR
from rscompress.pruning.methods.nas import NAS
from rscompress.pruning.methods.remotetrimmer import RemoteTrimmer
from rscompress.pruning.methods.slim import Slim

if TYPE_CHECKING:
    from rscompress.config import PruneConfig

METHODS: dict[str, PruningMethod] = {m.name: m for m in (*BASELINES, RemoteTrimmer(), HRank(), Slim(), L1RR(), NAS())}


def get_method(name: str) -> PruningMethod:
    """The method called ``name``; UserError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def check_config(cfg: PruneConfig) -> PruningMethod:
    """``cfg``'s method, once its options are known to be ones it reads: UserError naming an
    option another method owns that ``cfg`` sets, or what the method itself refuses."""
    method = get_method(cfg.method)
    defaults = type(cfg).model_fields
    for option in sorted({o for m in METHODS.values() for o in m.options} - method.options):
        if getattr(cfg, option) != defaults[option].default:
            owners = [m.name for m in METHODS.values() if option in m.options]
            flag = "--" + option.replace("_", "-")
            raise UserError(f"{flag} is an option of --method {' / '.join(owners)}; --method {cfg.method} has none")
    method.check(cfg)
    if Budget.of(cfg).timed and not isinstance(method, Criterion):
        flag = "--round-to auto"
        if cfg.target_latency_ms is not None or cfg.target_speedup is not None:
            flag = "--target-latency-ms" if cfg.target_latency_ms is not None else "--target-speedup"
        raise UserError(
            f"{flag} prunes candidates and times them, which only a one-shot method can afford; "
            f"--method {cfg.method} trains before it prunes: give it --target-macs and a fixed --round-to"
        )
    return method
