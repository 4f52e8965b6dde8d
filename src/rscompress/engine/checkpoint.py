"""Resumable training state, written atomically and read without unpickling.

Layout under ``RUN/checkpoint/``::

    epoch-0007/model.safetensors   weights after epoch 7
    epoch-0007/optim.safetensors   optimizer tensors (momentum buffers, Adam moments, steps)
    epoch-0007/state.json          epoch, optimizer param groups, best-so-far bookkeeping
    epoch-0007/tensors.safetensors a training phase's own tensors (the NAS gates' α), if any
    epoch-0007/optim-NAME.safetensors  its own optimizers' tensors, if any
    best.safetensors               weights of the best epoch on the validation split
    latest.json                    {"epoch_dir": "epoch-0007"}: the commit point

Every file is written to a temp name, fsynced and renamed; ``latest.json`` is replaced last,
so a kill at any moment leaves the previous complete checkpoint in force.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field, ValidationError
from torch import nn

from rscompress.errors import UserError
from rscompress.io_utils import write_atomic, write_json_atomic
from rscompress.models.weights import fill_model, matching_state, read_state_dict, write_safetensors

LATEST = "latest.json"
BEST = "best.safetensors"
_EPOCH_DIR = re.compile(r"epoch-\d{4,}")  # what save_checkpoint names them


@dataclass
class TrainingState:
    """What the loop needs to continue after ``epoch`` (0-based, finished)."""

    epoch: int
    best_epoch: int
    best_score: tuple[float, float]  # (val top-1, -val loss): higher is better
    extra: dict[str, Any]
    # Optimizer steps per epoch (per process): another batch size, ragged-batch rule or data
    # changes them, and the run. None in checkpoints written before it was kept.
    steps_per_epoch: int | None = None


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _commit(directory: Path, epoch_dir: Path) -> None:
    write_json_atomic(directory / LATEST, {"epoch_dir": epoch_dir.name})
    # Older epoch dirs are garbage once latest.json points past them.
    for old in directory.glob("epoch-*"):
        if old.is_dir() and old.name != epoch_dir.name:
            shutil.rmtree(old, ignore_errors=True)


def _safetensors_writer(tensors: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    """A ``write_atomic`` writer of ``tensors``, bound now (not to a loop variable that moves on)."""
    return lambda tmp: write_safetensors(tensors, tmp)


def _epoch_dir(directory: Path, name: object) -> Path:
    """The epoch dir ``latest.json`` names, confined to ``directory``: a name such as
    ``../../..`` or an absolute path would have a resume read state from anywhere."""
    if not isinstance(name, str) or not _EPOCH_DIR.fullmatch(name):
        raise UserError(f"checkpoint in {directory} is unreadable: {LATEST} names {name!r}, not an epoch-NNNN dir")
    epoch_dir = directory / name
    # A link named epoch-NNNN could still lead out of the checkpoint dir.
    if epoch_dir.resolve().parent != directory.resolve():
        raise UserError(f"checkpoint in {directory} is unreadable: {epoch_dir} leads outside it")
    return epoch_dir


class _SavedState(BaseModel):
    """What ``state.json`` holds (save_checkpoint writes it): checked before anything is restored."""

    epoch: int = Field(ge=0)
    best_epoch: int
    best_score: tuple[float, float]
    extra: dict[str, Any]
    steps_per_epoch: int | None = None
    optimizer: dict[str, Any]
    optimizers: dict[str, Any] = {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:  # missing, a folder, not JSON, not text
        raise UserError(f"checkpoint file {path} is unreadable ({getattr(err, 'strerror', None) or err})") from None


def _latest(directory: Path) -> tuple[Path, _SavedState] | None:
    latest = directory / LATEST
    if not latest.is_file():
        return None
    pointer = _read_json(latest)
    epoch_dir = _epoch_dir(directory, pointer.get("epoch_dir") if isinstance(pointer, dict) else pointer)
    state_path = epoch_dir / "state.json"
    try:
        return epoch_dir, _SavedState.model_validate(_read_json(state_path))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "its top level"
        raise UserError(f"checkpoint file {state_path} is malformed: {where}: {first['msg']}") from None


def next_epoch(directory: Path) -> int:
    """The 0-based epoch a resume from the checkpoint in ``directory`` starts at (0 without one)."""
    latest = _latest(directory)
    return latest[1].epoch + 1 if latest else 0


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainingState,
    is_best: bool,
    *,
    tensors: dict[str, torch.Tensor] | None = None,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    best: nn.Module | None = None,
) -> None:
    """Commit the state after ``state.epoch``. ``tensors``/``optimizers``: a training phase's
    own (trainer.TrainingHooks), kept beside the model's. ``best``: the model whose weights
    ``is_best`` keeps (default ``model``; with a weight average, the average)."""
    epoch_dir = directory / f"epoch-{state.epoch:04d}"
    epoch_dir.mkdir(parents=True, exist_ok=True)
    weights = _weights(model)
    optim_tensors, optim_meta = _flatten_optimizer(optimizer)
    write_atomic(epoch_dir / "model.safetensors", _safetensors_writer(weights))
    write_atomic(epoch_dir / "optim.safetensors", _safetensors_writer(optim_tensors))
    if tensors:
        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        write_atomic(epoch_dir / "tensors.safetensors", _safetensors_writer(flat))
    phase_meta = {}
    for name, phase_optimizer in (optimizers or {}).items():
        phase_tensors, phase_meta[name] = _flatten_optimizer(phase_optimizer)
        write_atomic(epoch_dir / f"optim-{name}.safetensors", _safetensors_writer(phase_tensors))
    write_json_atomic(
        epoch_dir / "state.json",
        {
            "epoch": state.epoch,
            "best_epoch": state.best_epoch,
            "best_score": list(state.best_score),
            "extra": state.extra,
            "steps_per_epoch": state.steps_per_epoch,
            "optimizer": optim_meta,
            "optimizers": phase_meta,
        },
    )
    if is_best:
        write_atomic(directory / BEST, _safetensors_writer(weights if best is None else _weights(best)))
    _commit(directory, epoch_dir)


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    tensors: dict[str, torch.Tensor] | None = None,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> TrainingState | None:
    """Restore model, optimizer and a phase's own ``tensors`` and ``optimizers`` in place;
    None when there is nothing to resume."""
    found = _latest(directory)
    if found is None:
        return None
    epoch_dir, meta = found
    what = "the model this run trains (a checkpoint of another model, or edited)"
    fill_model(model, epoch_dir / "model.safetensors", what)
    if (directory / BEST).is_file():  # read when the epochs are done: refused now, not after them
        matching_state(model, directory / BEST, what)
    try:
        _restore_optimizer(optimizer, read_state_dict(epoch_dir / "optim.safetensors"), meta.optimizer)
        if tensors:
            stored = read_state_dict(epoch_dir / "tensors.safetensors")
            with torch.no_grad():
                for name, tensor in tensors.items():
                    tensor.copy_(stored[name])
        for name, phase_optimizer in (optimizers or {}).items():
            phase_tensors = read_state_dict(epoch_dir / f"optim-{name}.safetensors")
            _restore_optimizer(phase_optimizer, phase_tensors, meta.optimizers[name])
    # What torch and the lookups raise on state of another shape or layout: the files', not a bug.
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
        raise UserError(
            f"checkpoint {epoch_dir} does not fit this run ({type(err).__name__}: {err}); start anew in another --out"
        ) from None
    return TrainingState(
        epoch=meta.epoch,
        best_epoch=meta.best_epoch,
        best_score=meta.best_score,
        extra=meta.extra,
        steps_per_epoch=meta.steps_per_epoch,
    )


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Load an optimizer's saved state; each parameter's buffers must have its shape, or the
    first step after the resume fails on them."""
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"{key} of shape {tuple(value.shape)} for a parameter of {tuple(param.shape)}")


def load_best_weights(directory: Path, model: nn.Module) -> None:
    fill_model(model, directory / BEST, "the model this run trains")
