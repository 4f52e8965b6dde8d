"""Run directories: the only way steps pass models and results to each other.

A run dir holds ``config.json`` (everything needed to rebuild the model and its inputs),
``model.safetensors`` (weights only), ``metrics.json``, ``split.json``, ``history.jsonl``
and ``checkpoint/``. Loading never unpickles.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import nn

from rscompress import __version__
from rscompress.errors import UserError
from rscompress.io_utils import append_jsonl, write_json_atomic
from rscompress.locking import LOCK_FILE, hold_dir
from rscompress.models.weights import fill_model, read_state_dict, save_weights
from rscompress.overrides import as_overridden

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
SPLIT = "split.json"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint"
PRUNED_WEIGHTS = "pruned.safetensors"  # a prune run's model as pruned, before fine-tuning
PRUNE_RECORD = "prune.json"  # what the pruning did; written after PRUNED_WEIGHTS
# slim / l1rr: the model as sparse training left it (before pruning), kept so that another
# budget can be pruned from it (--sparse-from), and what that training did; written after it.
SPARSE_WEIGHTS = "sparse.safetensors"
SPARSE_RECORD = "sparse.json"
INT8_ONNX = "model.int8.onnx"  # rscompress export RUN --int8
INT8_RECORD = "int8.jsonl"  # one line per INT8 export of the run, written or refused
# Files whose presence means a step was interrupted part way and can be resumed.
# A prune run's training phase before pruning (sparse training, NAS search): a run dir of its own.
PHASE = "prune-phase"
PROGRESS_MARKERS = (f"{CHECKPOINT}/latest.json", PRUNE_RECORD, SPARSE_RECORD, f"{PHASE}/{CHECKPOINT}/latest.json")


class RunConfig(BaseModel):
    """What ``config.json`` holds. Enough to rebuild the model without the code that made it."""

    model_config = ConfigDict(extra="forbid")

    model: str
    num_classes: int
    class_names: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    model_kwargs: dict[str, Any] = {}
    # Pruned models: per-layer shapes (prune.rebuild.architecture_spec) applied to a fresh
    # ``model`` before the weights are loaded. None for unpruned models.
    architecture: dict[str, Any] | None = None
    method: str = "train"
    method_params: dict[str, Any] = {}
    parent: str | None = None
    data: dict[str, Any] = {}
    train: dict[str, Any] = {}
    # `--resume --override`: {setting, old, new, epoch} per override, in order (overrides.py).
    overrides: list[dict[str, Any]] = []
    versions: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_name_per_class(self) -> RunConfig:
        if self.num_classes != len(self.class_names):
            raise ValueError(f"num_classes is {self.num_classes}, but class_names names {len(self.class_names)}")
        return self


def _first_problem(err: ValidationError) -> str:
    """Pydantic's first error as ``key: what is wrong``: its own first line is "1 validation
    error for RunConfig", which names no key."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def library_versions() -> dict[str, str]:
    import torch
    import torch_pruning
    import torchvision

    return {
        "rscompress": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_pruning": torch_pruning.__version__,
        "python": platform.python_version(),
    }


# Settings that change how fast a run goes, not what it computes: a run may resume with others.
_RESUMABLE_WITH_OTHER = frozenset({"train.threads", "train.device", "data.cache_dir"})
# Settings added after run dirs (and NAS search checkpoints) were already being written, with
# the value every run made before then had: a saved setting without the key had that value.
_ADDED_LATER = {
    "method_params.gate_without_bn": False,
    "nas_search.gate_without_bn": False,
    "method_params.sparse_lr": None,
    "method_params.sparse_rate": None,
    "method_params.sparse_loss_tolerance": None,
    "method_params.sparse_hold_scale": False,
    "sparse_training.hold_layer_scale": False,
    # issue 31's recipe options; runs before it trained without nesterov, with one
    # augmentation draw per image and without the ragged last batch.
    "train.optim.nesterov": False,
    "train.optim.pct_start": 0.15,
    "train.optim.cycle_momentum": True,
    "train.drop_last": True,
    "data.augment_draw": "sample",
    "train.new_head": False,
    # issue 35: a run made from a parent whose split.json was gone (--resplit); none before.
    "method_params.resplit": False,
    # Mixup / CutMix: off in every run made before them.
    "train.mixup_alpha": 0.0,
    "train.cutmix_alpha": 0.0,
}
# Settings removed since; a saved one is not compared. sparse_strength (L1RR's starting λ)
# gave way to sparse_rate; a sparse-training phase saved with it has its own settings check
# (l1rr.sparse_train), which refuses to continue it under the new meaning.
_DROPPED = frozenset({"method_params.sparse_strength"})


def setting_differences(stored: Any, given: Any, name: str) -> list[str]:
    """``"name.key: X there, Y now"`` for every leaf where ``given`` differs from ``stored``
    (both JSON values), skipping ``_RESUMABLE_WITH_OTHER``."""
    if name in _RESUMABLE_WITH_OTHER or name in _DROPPED:
        return []
    if isinstance(stored, dict) and isinstance(given, dict):

        def stored_value(key: str) -> Any:
            return stored[key] if key in stored else _ADDED_LATER.get(f"{name}.{key}")

        return [
            d
            for key in sorted(stored.keys() | given.keys())
            for d in setting_differences(stored_value(key), given.get(key), f"{name}.{key}")
        ]
    if stored != given:
        return [f"{name}: {json.dumps(stored)} there, {json.dumps(given)} now"]
    return []


class RunDir:
    def __init__(self, path: Path | str):
        self.path = Path(path)

    # -- paths -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def split_path(self) -> Path:
        return self.path / SPLIT

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def phase_dir(self) -> Path:
        """The run dir of the training phase before pruning (its checkpoints, per epoch)."""
        return self.path / PHASE

    @property
    def pruned_weights_path(self) -> Path:
        return self.path / PRUNED_WEIGHTS

    @property
    def prune_record_path(self) -> Path:
        return self.path / PRUNE_RECORD

    @property
    def sparse_weights_path(self) -> Path:
        return self.path / SPARSE_WEIGHTS

    @property
    def sparse_record_path(self) -> Path:
        return self.path / SPARSE_RECORD

    def holds_sparse_model(self) -> bool:
        """A slim / l1rr prune run past its sparse training: the model it left and its report."""
        return self.sparse_weights_path.is_file() and self.sparse_record_path.is_file()

    def holds_pruned_model(self) -> bool:
        """A prune run past its pruning: the pruned model and what was done to it are saved."""
        return self.pruned_weights_path.is_file() and self.prune_record_path.is_file()

    def is_complete(self) -> bool:
        """A finished run: weights and final metrics are written last, so both exist."""
        return self.weights_path.is_file() and self.metrics_path.is_file()

    def is_started(self) -> bool:
        """Interrupted part way: something ``--resume`` continues from is on disk."""
        return any((self.path / marker).is_file() for marker in PROGRESS_MARKERS)

    def split_for(self, resplit: bool) -> Path | None:
        """The split file to read this run's data by; None, for a new split from its config.json,
        only when ``resplit`` asks for one because the file is gone.

        The run (or its parent) was trained and tested on the split the file held: made anew,
        its images may change parts, and a pruned or distilled child, or an evaluation, would
        test on images the run trained on. So a missing file is an error naming it.
        """
        if self.split_path.is_file():
            if resplit:
                raise UserError(f"--resplit: {self.split_path} is there; leave --resplit out to use it")
            return self.split_path
        if not resplit:
            raise UserError(
                f"{self.split_path} is missing: {self.path} was trained and tested on the split it held, and a new "
                "one may put its training images in val or test; put it back, or pass --resplit to split anew "
                "from its config.json (recorded)"
            )
        return None

    def is_run_dir(self) -> bool:
        """Whether this folder holds a run: finished, started, being written, or configured
        (config.json beside its weights or split; a config.json alone may be anyone's)."""
        configured = self.config_path.is_file() and (self.weights_path.is_file() or self.split_path.is_file())
        return self.is_complete() or self.is_started() or (self.path / LOCK_FILE).is_file() or configured

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to continue or reuse a run its ``config.json`` says was made with other settings.

        ``settings``: the config.json entries this call would write, in JSON form. Without
        this a changed recipe (lr, epochs, loss, ...) would silently continue the old run.
        """
        if not self.config_path.is_file():
            return  # nothing made yet to differ from (prune writes it before a training phase starts)
        stored = json.loads(self.config_path.read_text())
        # A setting overridden on a resume (overrides.py) may be given as it was or as it is now.
        settings = as_overridden(settings, stored.get("overrides") or [])
        differences = [d for key, value in settings.items() for d in setting_differences(stored.get(key), value, key)]
        if differences:
            shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
            raise UserError(
                f"{self.path} was made with other settings ({shown}); "
                f"use the same options, or another --out to start anew"
            )

    # -- writing -----------------------------------------------------------------------
    @contextmanager
    def owned(self) -> Iterator[RunDir]:
        """This run dir (made if missing), held by this process until the block ends: every
        step that writes a run dir writes it inside one (locking.hold_dir says how and why)."""
        with hold_dir(self.path):
            yield self

    def save_config(self, config: RunConfig) -> None:
        write_json_atomic(self.config_path, config.model_dump(mode="json"))

    def save_weights(self, model: nn.Module) -> None:
        save_weights(model, self.weights_path)

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.metrics_path, metrics)

    def append_history(self, row: dict[str, Any]) -> None:
        append_jsonl(self.history_path, row)

    # -- reading -----------------------------------------------------------------------
    def require(self) -> RunDir:
        """Fail with one clear line unless this looks like a finished run dir."""
        if not self.path.is_dir():
            raise UserError(f"run dir {self.path} does not exist")
        for name in (CONFIG, WEIGHTS):
            if not (self.path / name).is_file():
                raise UserError(f"run dir {self.path} is incomplete: {name} is missing")
        return self

    def load_config(self) -> RunConfig:
        try:
            return RunConfig.model_validate_json(self.config_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.config_path} is missing") from None
        except ValidationError as err:
            raise UserError(f"{self.config_path} is not a valid rscompress config: {_first_problem(err)}") from None
        except (OSError, UnicodeDecodeError) as err:  # a folder, unreadable, not text
            raise UserError(f"cannot read {self.config_path}: {getattr(err, 'strerror', None) or err}") from None

    def load_metrics(self) -> dict[str, Any]:
        try:
            return json.loads(self.metrics_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.metrics_path} is missing: the run did not finish") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{self.metrics_path} is not valid JSON: {err}") from None

    def load_state_dict(self) -> dict[str, Any]:
        return read_state_dict(self.weights_path)

    def load_model(self, weights: Path | None = None) -> tuple[nn.Module, RunConfig]:
        """Rebuild the model from config.json and fill it (strictly) from model.safetensors,
        or from ``weights`` (another safetensors file of the same run)."""
        from rscompress.models import create_model

        if weights is None:
            self.require()
        config = self.load_config()
        try:
            model = create_model(config.model, config.num_classes, **config.model_kwargs)
        except UserError as err:  # a config.json edited by hand, or from another version
            raise UserError(f"{self.config_path}: {err}") from None
        if config.architecture is not None:
            from rscompress.pruning.rebuild import apply_architecture

            apply_architecture(model, config.architecture)
        fill_model(model, weights or self.weights_path, f"the model in {self.config_path}")
        model.eval()
        return model, config
