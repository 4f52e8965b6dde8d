"""Load and save model weights without ever unpickling arbitrary objects.

``.safetensors`` is the project's format (DESIGN.md: run dirs hold ``model.safetensors``).
``.pt``/``.pth`` state dicts are accepted for weights made elsewhere, but only through
``torch.load(weights_only=True)``, which refuses any pickle that would build something other
than tensors and plain containers, so a crafted file cannot run code.

Files from elsewhere are met where they are: a training checkpoint's state dict is found
under ``state_dict`` / ``model`` / ... (``STATE_DICT_KEYS``), a prefix every key shares
(``module.`` from DataParallel, ``_orig_mod.`` from torch.compile) is dropped, the SE blocks
of an ``se_*`` model start fresh when the file is of the plain architecture (a torchvision
resnet18 file into ``se_resnet18``: same names otherwise), and with ``new_head`` a
classifier of another class count is left fresh instead of refused.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rscompress.errors import UserError
from rscompress.io_utils import write_atomic

_SHOWN = 5  # names listed per kind of mismatch in an error message; the rest are counted
# Where training checkpoints keep the model's state dict, most wanted first (an EMA of the
# weights, where saved, is what timm's and most recipes' released weights are).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict", "module", "net")
# Prefixes a wrapper adds to every key: DataParallel/DDP, torch.compile, Lightning.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass(frozen=True)
class LoadReport:
    """What load_weights did: keys loaded, and the keys it could not load and why."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]  # in the model, not in the file
    unexpected: tuple[str, ...]  # in the file, not in the model
    mismatched: tuple[str, ...]  # in both, shapes differ: "name: file (a, b) vs model (c, d)"
    # Left as initialised on purpose: SE blocks the file's architecture has not, a new head.
    fresh: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except SafetensorError as e:
            raise UserError(f"{path} is not a valid safetensors file ({e})") from e
    if suffix in (".pt", ".pth"):
        try:
            # Training scripts (timm's train.py among them) store their argparse settings
            # beside the weights: a plain attribute bag, allowed; nothing else is.
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = _state_dict_in(torch.load(path, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as e:
            raise UserError(
                f"refusing to load {path}: the weights-only unpickler rejected it "
                f"({_unpickler_reason(e)}); nothing in it was run"
            ) from e
        # Anything else torch.load raises here is about the file's content (not a zip
        # archive, truncated, ...): the user's file, not our bug.
        except Exception as e:
            raise UserError(f"cannot read {path} as a PyTorch state dict ({type(e).__name__}: {e})") from e
        if not _is_state_dict(state):
            keys = f" with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict) else ""
            raise UserError(
                f"{path} does not hold a state dict (name -> tensor), at the top or under "
                f"{', '.join(STATE_DICT_KEYS)}; got {type(state).__name__}{keys}"
            )
        return state
    raise UserError(f"unsupported weights file type {path.suffix!r} for {path}; use .safetensors, .pt or .pth")


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())
    )


def _state_dict_in(checkpoint: Any) -> Any:
    """The state dict of a checkpoint: itself, or the first of STATE_DICT_KEYS that holds one."""
    if _is_state_dict(checkpoint) or not isinstance(checkpoint, dict):
        return checkpoint
    for key in STATE_DICT_KEYS:
        if _is_state_dict(checkpoint.get(key)):
            return checkpoint[key]
    return checkpoint


def _without_wrapper_prefix(state: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with a prefix every key shares dropped, when the model's keys lack it."""
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
            return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's last Linear layer: the head ``new_head`` may replace."""
    heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        return set()
    return {f"{heads[-1]}.{k}" for k in ("weight", "bias")}


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    # torch's message is a page of advice (including "use weights_only=False", which we never
    # do); keep the line that says what was refused, e.g. "Unsupported global: GLOBAL io.open".
    for line in str(error).splitlines():
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1]
            return reason.split(" was not an allowed")[0].strip()
    return "rejected by the weights-only unpickler"


def _listing(kind: str, names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:_SHOWN])
    more = f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return f"{len(names)} {kind} ({shown}{more})"


def _problems(expected: dict[str, Tensor], state: dict[str, Tensor], fresh: list[str]) -> LoadReport:
    """How ``state`` fills a model whose state dict is ``expected``, ``fresh`` keys left as they are."""
    missing = tuple(k for k in expected if k not in state and k not in fresh)
    unexpected = tuple(k for k in state if k not in expected)
    mismatched = tuple(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and k not in fresh and state[k].shape != expected[k].shape
    )
    # Reported in the model's order (safetensors files list their keys sorted).
    loadable = tuple(k for k in expected if k in state and k not in fresh and state[k].shape == expected[k].shape)
    return LoadReport(loadable, missing, unexpected, mismatched, tuple(fresh))


def _describe(report: LoadReport) -> str:
    return "; ".join(
        _listing(kind, names)
        for kind, names in (
            ("missing", report.missing),
            ("unexpected", report.unexpected),
            ("shape mismatches", report.mismatched),
        )
        if names
    )


def load_weights(model: nn.Module, path: Path, allow_partial: bool = False, new_head: bool = False) -> LoadReport:
    """Fill ``model`` from a ``.safetensors`` (or ``.pt``/``.pth``) file; what was loaded.

    Keys must match the model's state dict, shapes included, after the adaptations the module
    docstring lists; otherwise a UserError names the missing, unexpected and mismatched keys
    and nothing is loaded. ``new_head``: a classifier (the last Linear) whose shape differs
    stays as initialised (another class count). With ``allow_partial`` the matching keys are
    loaded and the report lists the rest.
    """
    path = Path(path)
    expected = model.state_dict()
    state = _without_wrapper_prefix(read_state_dict(path), expected)
    fresh = []
    if not any(".se." in k for k in state):  # a plain file into an SE model: SE blocks start fresh
        fresh += [k for k in expected if ".se." in k and k not in state]
    if new_head:
        head = _classifier_keys(model)
        fresh += [k for k in expected if k in head and (k not in state or state[k].shape != expected[k].shape)]
    report = _problems(expected, state, fresh)
    if not report.complete and not allow_partial:
        head = _classifier_keys(model)
        hint = (
            " (another class count? new_head / --new-head starts the classifier fresh)"
            if any(m.split(":")[0] in head for m in report.mismatched) and not new_head
            else ""
        )
        raise UserError(f"weights in {path} do not match the model: {_describe(report)}{hint}")
    _refuse_non_finite({k: state[k] for k in report.loaded}, path)
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


def _refuse_non_finite(state: dict[str, Tensor], path: Path) -> None:
    """Weights holding NaN or inf train to NaN from the first step: refuse them by name."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"weights in {path}: tensor {name} holds NaN or inf values")


def matching_state(model: nn.Module, path: Path, what: str) -> dict[str, Tensor]:
    """The tensors of ``path`` when they fill ``model`` exactly (every key, every shape), or a
    UserError naming the differences; ``what`` names the model (the one a run's config.json builds)."""
    state = read_state_dict(path)
    report = _problems(model.state_dict(), state, [])
    if not report.complete:
        raise UserError(f"{path} does not match {what}: {_describe(report)}")
    return state


def fill_model(model: nn.Module, path: Path, what: str) -> None:
    """Fill ``model`` from ``path`` exactly (``matching_state``)."""
    model.load_state_dict(matching_state(model, path, what))


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the model's state dict to a ``.safetensors`` file (atomically: temp + rename).

    safetensors refuses tensors that share memory (tied weights) and non-contiguous ones, so
    every tensor whose storage was already written is cloned and every tensor is made
    contiguous; loading gives each name its own copy.
    """
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    seen_storages: set[tuple[torch.device, int]] = set()
    for name, tensor in model.state_dict().items():
        t = tensor.detach()
        storage = (t.device, t.untyped_storage().data_ptr())
        t = t.clone() if storage in seen_storages else t
        seen_storages.add(storage)
        tensors[name] = t.contiguous().cpu()
    write_atomic(path, lambda tmp: write_safetensors(tensors, tmp, metadata={"format": "pt"}))


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def write_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, a failed write raised as the OSError it was: safetensors
    raises a SafetensorError for it, the OS error number only in its message."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as err:
        if match := _OS_ERROR.search(str(err)):
            code = int(match.group(1))
            raise OSError(code, os.strerror(code), str(path)) from None
        raise
