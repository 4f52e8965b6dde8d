"""``--resume --override KEY=VALUE``: continue a run with a new value of one training setting.

A run that diverged (engine/trainer.py's TrainingDiverged) would only diverge again if resumed
with the settings it was made with, and another ``--lr`` is refused by the settings check. An
override changes how the remaining epochs are trained (their rate, warm-up, decay, count),
never what is trained: those settings are refused by name. Each override is recorded in
config.json's ``overrides`` (setting, old and new value, the 0-based epoch it took effect,
as history rows count) and on that epoch's history row; the settings check then accepts
exactly that difference, the run's original value or the new one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from rscompress.config import FitConfig
from rscompress.errors import UserError

# Setting name -> where it sits in a fit config (config.json's ``train``).
OVERRIDABLE: dict[str, tuple[str, ...]] = {
    "lr": ("optim", "lr"),
    "warmup_epochs": ("optim", "warmup_epochs"),
    "weight_decay": ("optim", "weight_decay"),
    "epochs": ("epochs",),
}
# These change what data or model is trained: a run continued with another would be neither.
WHAT_IS_TRAINED = frozenset(
    {
        "model",
        "data",
        "path",
        "img_size",
        "seed",
        "batch_size",
        "method",
        "budget",
        "target_macs",
        "target_params",
        "ratio",
        "split_seed",
        "parent",
        "teacher",
        "student",
    }
)

FitT = TypeVar("FitT", bound=FitConfig)


def parse_overrides(texts: Sequence[str]) -> dict[str, str]:
    """``["lr=0.01", ...]`` as {setting: value text}; a setting not overridable is refused by name."""
    parsed: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise UserError(f"--override {text!r}: expected KEY=VALUE, e.g. lr=0.01")
        if key in WHAT_IS_TRAINED:
            raise UserError(
                f"--override {key}: it changes what data or model is trained, not how; start anew in another --out"
            )
        if key not in OVERRIDABLE:
            raise UserError(f"--override {key}: not a setting an override can change ({', '.join(OVERRIDABLE)})")
        if key in parsed:
            raise UserError(f"--override {key} is given twice")
        parsed[key] = value.strip()
    return parsed


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = tree
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def as_overridden(settings: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``settings`` (config.json entries, JSON form) with each recorded override applied where
    they still hold its old value: a resume given the run's first options, or the overridden
    ones, matches what the run is now made with, and nothing else does."""
    result = copy.deepcopy(dict(settings))
    for record in records:
        if not isinstance(record, Mapping):  # config.json is validated on load; this reads it raw
            continue
        path = ("train", *OVERRIDABLE.get(record.get("setting", ""), ()))
        if len(path) > 1 and _get(result, path) == record.get("old"):
            _set(result, path, record.get("new"))
    return result


def apply_overrides(
    fit: FitT, records: Sequence[Mapping[str, Any]], given: Mapping[str, str], epoch: int
) -> tuple[FitT, list[dict[str, Any]]]:
    """``fit`` as the run is now made (its ``records`` applied) with the ``given`` overrides
    taking effect at 0-based ``epoch``; returns it and every record, the new ones last (a
    value it already has adds none)."""
    current = as_overridden({"train": fit.model_dump(mode="json")}, records)["train"]
    updated = copy.deepcopy(current)
    for key, value in given.items():
        _set(updated, OVERRIDABLE[key], value)
    try:
        new_fit = type(fit).model_validate(updated)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"--override: {where}: {first['msg'].removeprefix('Value error, ')}") from None
    if new_fit.epochs < epoch:
        raise UserError(f"--override epochs={new_fit.epochs}: {epoch} epochs are trained already")
    typed = new_fit.model_dump(mode="json")
    added = [
        {"setting": key, "old": _get(current, OVERRIDABLE[key]), "new": _get(typed, OVERRIDABLE[key]), "epoch": epoch}
        for key in given
        if _get(current, OVERRIDABLE[key]) != _get(typed, OVERRIDABLE[key])
    ]
    return new_fit, [*map(dict, records), *added]
