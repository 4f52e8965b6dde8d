"""Load and save model weights without ever unpickling arbitrary objects.

``.safetensors`` is the project's format (DESIGN.md: run dirs hold ``model.safetensors``).
``.pt``/``.pth`` state dicts are accepted for weights made elsewhere, but only through
``torch.load(weights_only=True)``, which refuses any pickle that would build something other
than tensors and plain containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rscompress.errors import UserError
from rscompress.io_utils import write_atomic

_SHOWN = 5  # names listed per kind of mismatch in an error message; the rest are counted


@dataclass(frozen=True)
class LoadReport:
    """What load_weights did: keys loaded, and the keys it could not load and why."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]  # in the model, not in the file
    unexpected: tuple[str, ...]  # in the file, not in the model
    mismatched: tuple[str, ...]  # in both, shapes differ: "name: file (a, b) vs model (c, d)"

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
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(
                f"refusing to load {path}: the weights-only unpickler rejected it "
                f"({_unpickler_reason(e)}); nothing in it was run"
            ) from e
        # Anything else torch.load raises here is about the file's content (not a zip
        # archive, truncated, ...): the user's file, not our bug.
        except Exception as e:
            raise UserError(
                f"cannot read {path} as a PyTorch state dict ({type(e).__name__}: {e})"
            ) from e
        if not (isinstance(state, dict) and all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        )):
            raise UserError(
                f"{path} does not hold a flat state dict (name -> tensor); "
                f"got {type(state).__name__}"
            )
        return state
    raise UserError(
        f"unsupported weights file type {path.suffix!r} for {path}; "
        "use .safetensors, .pt or .pth"
    )


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


def load_weights(model: nn.Module, path: Path, allow_partial: bool = False) -> LoadReport:
    """Fill ``model`` from a ``.safetensors`` (or ``.pt``/``.pth`` state dict) file.

    Keys must match the model's state dict exactly, shapes included; otherwise a UserError
    names the missing, unexpected and mismatched keys and nothing is loaded. With
    ``allow_partial`` the matching keys are loaded and the report lists the rest.
    """
    path = Path(path)
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = tuple(k for k in expected if k not in state)
    unexpected = tuple(k for k in state if k not in expected)
    mismatched = tuple(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    )
    # Reported in the model's order (safetensors files list their keys sorted).
    loadable = {
        k: state[k] for k in expected if k in state and state[k].shape == expected[k].shape
    }
    report = LoadReport(tuple(loadable), missing, unexpected, mismatched)
    if not report.complete and not allow_partial:
        problems = [
            _listing(kind, names)
            for kind, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatches", mismatched),
            )
            if names
        ]
        raise UserError(f"weights in {path} do not match the model: {'; '.join(problems)}")
    model.load_state_dict(loadable, strict=False)
    return report


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
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
