"""The fit loop: train on the train split, pick the best epoch on val, checkpoint every epoch.

Everything that varies between methods comes in through ``loss_fn`` (plain CE, AML + CE,
distillation, attention transfer) and ``hooks`` (what a training phase does around the
optimizer step: sparse training's proximal step on BN γ and its rate controller, the NAS
search's gate step); the loop itself stays the same, so every method and phase gets the
same schedule, checkpoints, resume and metrics.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, overload

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from torch import nn

from rscompress.artifacts import RunDir
from rscompress.config import FitConfig
from rscompress.engine.batchnorm_statistics import NO_PLAIN_BATCHES, recompute_batchnorm_statistics
from rscompress.engine.checkpoint import (
    TrainingState,
    load_best_weights,
    load_checkpoint,
    save_checkpoint,
)
from rscompress.engine.device import resolve_device
from rscompress.engine.distributed import DistInfo, all_mean, all_true, barrier
from rscompress.engine.metrics import EvalResult
from rscompress.engine.mixing import mix_batch
from rscompress.engine.precision import bf16_autocast
from rscompress.engine.schedule import apply_schedule, build_optimizer
from rscompress.engine.tasks import Classification, Evaluation, LossFn, Task
from rscompress.engine.weight_average import WeightAverage
from rscompress.errors import UserError
from rscompress.io_utils import write_atomic
from rscompress.seeding import derived_seed


class Batches(Protocol):
    """What the loop needs of a training loader (``rscompress.data.loader.BatchLoader``): batches
    of (images, targets), targets as the task has them (engine/tasks.py)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


class SizedBatches(Protocol):
    """Re-iterable (images, labels) batches that know how many they are."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def __len__(self) -> int: ...


class EpochBatches:
    """Any re-iterable sized batches as the loop takes them: ``set_epoch`` is passed on to the
    batches or their sampler where one has it (rscompress's own loader reshuffling per epoch,
    ``DistributedSampler.set_epoch``), a no-op elsewhere. A plain shuffling DataLoader draws its
    order from torch's global generator, which the loop seeds per epoch, so a resumed run sees
    the batches the uninterrupted one would have."""

    def __init__(self, batches: SizedBatches) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        for owner in (self.batches, getattr(self.batches, "sampler", None)):
            if owner is not None and hasattr(owner, "set_epoch"):
                owner.set_epoch(epoch)
                return


class TrainingDiverged(UserError):
    """The loss became NaN/Inf; the last good checkpoint is left as it was. ``cause``: what went
    non-finite and where the last good checkpoint is, for a caller that gives its own advice."""

    def __init__(self, cause: str, advice: str) -> None:
        super().__init__(f"{cause} {advice}")
        self.cause = cause


def _diverged(what: str, epoch: int, lr: float, run: RunDir) -> TrainingDiverged:
    """The error for ``what`` went non-finite in 0-based ``epoch``: where to resume, what to try."""
    last = f"after epoch {epoch}" if epoch > 0 else "none yet"
    return TrainingDiverged(
        f"{what} (lr {lr:.3g}); last good checkpoint: {last} in {run.checkpoint_dir}.",
        "Continue from it at a lower rate: --resume --override lr=LOWER (or warmup_epochs=N off onecycle).",
    )


def aml_ce_objective(r1: float = 1.0, r2: float = 1.0) -> LossFn:
    """RemoteTrimmer's fine-tuning loss r1·AML + r2·CE (losses.aml_ce_loss) as a loop objective."""
    from rscompress.losses import aml_ce_loss

    def loss_fn(model, x, y, epoch):
        logits = model(x)
        return aml_ce_loss(logits.float(), y, r1, r2), logits

    return loss_fn


class TrainingHooks:
    """What a training phase adds to the one loop; every hook does nothing here.

    ``keep``: the weights ``fit`` ends with: the best epoch on val (training, fine-tuning) or
    the last one (a phase whose result is the state it reaches, e.g. sparsity). The hooks run
    on the main rank only (no phase trains distributed).
    """

    keep: Literal["best", "last"] = "best"

    def start_epoch(self, epoch: int) -> None:
        """Before the epoch's first step (0-based ``epoch``)."""

    def after_step(self, epoch: int) -> None:
        """After each optimizer step."""

    def end_epoch(self, epoch: int, val: Evaluation) -> dict[str, Any]:
        """After the epoch's validation, before its checkpoint; returns fields for its history row."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON-ready state the checkpoint keeps (``load_state`` gets it back on resume)."""
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The phase's own tensors the checkpoint keeps; restored in place on resume."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The phase's own optimizers the checkpoint keeps; restored in place on resume."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` as the checkpoint of the last finished epoch kept it."""


E = TypeVar("E", bound=Evaluation)


@dataclass
class FitResult(Generic[E]):
    best_epoch: int
    best_val: E | None  # None on the other ranks: only the main one evaluates
    epochs_run: int
    train_seconds: float
    images_per_second: float  # mean over epochs after the first (the first may fill caches)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def val(self) -> E:
        """``best_val`` on the main rank, the only one that has it."""
        assert self.best_val is not None, "only the main rank evaluates: no best_val on this rank"
        return self.best_val


def _read_history(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """History rows of finished (checkpointed) epochs; later rows died with the killed run,
    the last one perhaps half written. Any other line that is no epoch's row is refused by
    number: the file is rewritten from these rows, and it would be lost."""
    if not path.is_file():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and type(row.get("epoch")) is int):
            if n == lines[-1][0]:
                break  # cut short by the kill
            raise UserError(
                f"{path} line {n} is not a history row (JSON with an epoch): {line[:40]!r}; "
                "remove or mend it, then --resume"
            )
        rows.append(row)
    return [r for r in rows if r["epoch"] <= upto_epoch]


def _check_steps(state: TrainingState, steps_per_epoch: int, run: RunDir) -> None:
    """Refuse to continue a checkpoint made with another number of batches per epoch: another
    batch size (or ragged-batch rule, or data) trains another model. A backstop under the
    settings checks of the run dirs (RunDir.check_settings), and the only one where the
    batches are a caller's own loader (the Python API)."""
    if state.steps_per_epoch is not None and state.steps_per_epoch != steps_per_epoch:
        raise UserError(
            f"the checkpoint in {run.checkpoint_dir} was trained on {state.steps_per_epoch} batches per epoch, "
            f"this run has {steps_per_epoch} (another batch size, drop_last or data): resume with the ones "
            "it was made with, or start anew"
        )


def check_fit_options(cfg: FitConfig, *, classifier: bool, plain_batches: bool) -> None:
    """UserError naming an option of ``cfg`` that a fit of this kind cannot honour. ``fit`` checks
    it, and each step checks it first, so that a refused option leaves nothing written."""
    if cfg.mixes and not classifier:
        raise UserError("--mixup-alpha / --cutmix-alpha blend class labels: they are for classifiers only")
    if cfg.precise_bn_batches and not plain_batches:
        raise UserError(NO_PLAIN_BATCHES)


def check_task_fit_options(cfg: FitConfig, task: int | Task) -> None:
    """``check_fit_options`` for a fit of ``task`` (an int: classification into that many classes)."""
    plain_batches = not isinstance(task, int) and task.statistics_batches is not None
    check_fit_options(cfg, classifier=isinstance(task, int | Classification), plain_batches=plain_batches)


@overload
def fit(
    model: nn.Module,
    train_batches: Batches,
    val_batches: Iterable,
    cfg: FitConfig,
    run: RunDir,
    task: int,
    *,
    loss_fn: LossFn | None = None,
    resume: bool = False,
    quiet: bool = False,
    dist: DistInfo = DistInfo(),
    hooks: TrainingHooks | None = None,
    overrides: Sequence[Mapping[str, Any]] = (),
) -> FitResult[EvalResult]: ...


@overload
def fit(
    model: nn.Module,
    train_batches: Batches,
    val_batches: Iterable,
    cfg: FitConfig,
    run: RunDir,
    task: Task,
    *,
    loss_fn: LossFn | None = None,
    resume: bool = False,
    quiet: bool = False,
    dist: DistInfo = DistInfo(),
    hooks: TrainingHooks | None = None,
    overrides: Sequence[Mapping[str, Any]] = (),
) -> FitResult[Evaluation]: ...


def fit(
    model: nn.Module,
    train_batches: Batches,
    val_batches: Iterable,
    cfg: FitConfig,
    run: RunDir,
    task: int | Task,
    *,
    loss_fn: LossFn | None = None,
    resume: bool = False,
    quiet: bool = False,
    dist: DistInfo = DistInfo(),
    hooks: TrainingHooks | None = None,
    overrides: Sequence[Mapping[str, Any]] = (),
) -> FitResult[Any]:
    """Train ``model`` (moved to ``cfg.device``, where it stays) and load its best epoch on val
    (its last with ``hooks.keep == "last"``). ``task``: what the batches' targets are and how
    val is scored (engine/tasks.py); an int is classification into that many classes.

    Batches come as CPU tensors; each step moves its batch to the device. ``overrides``: the
    run's ``--resume --override`` records (overrides.py), each put on its epoch's history row.
    """
    hooks = hooks or TrainingHooks()
    task = Classification(task) if isinstance(task, int) else task
    check_task_fit_options(cfg, task)
    loss_fn = loss_fn or task.objective(cfg.label_smoothing)
    clip = task.default_clip_grad_norm if cfg.clip_grad_norm is None else cfg.clip_grad_norm or None
    # BatchNorm statistics recomputed before val: by default where the task carries plain batches.
    precise_bn = cfg.precise_bn_batches
    if precise_bn is None:
        precise_bn = task.default_precise_bn_batches if task.statistics_batches is not None else 0
    statistics = task.statistics_batches if precise_bn else None
    device = resolve_device(cfg.device)
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    # Module.to takes a memory_format beside the device (torch parses both the same way as
    # Tensor.to); torch's overloads list it only alone.
    model.to(device, memory_format=memory_format)  # type: ignore[call-overload]
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    console = Console(stderr=True, quiet=quiet or not dist.is_main)
    # With --ema-decay the average of the weights is what is scored, kept as best and returned.
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    scored = average.module if average is not None else model

    def checkpoint_tensors() -> dict[str, torch.Tensor]:
        return {**hooks.tensors(), **(average.tensors() if average is not None else {})}

    state = (
        load_checkpoint(
            run.checkpoint_dir, model, optimizer, tensors=checkpoint_tensors(), optimizers=hooks.optimizers()
        )
        if resume
        else None
    )
    if resume and state is None and dist.is_main:
        console.log(f"no checkpoint in {run.checkpoint_dir}: starting from epoch 1")
    steps_per_epoch = len(train_batches)
    if state is not None:
        _check_steps(state, steps_per_epoch, run)
        hooks.load_state(state.extra)
        # The optimizer's state brings back the decay it was saved with; the schedule sets the
        # rate every step, but the decay only here: an overridden one must replace it.
        for group in optimizer.param_groups:
            group["weight_decay"] = cfg.optim.weight_decay
    start_epoch = state.epoch + 1 if state else 0
    best_epoch = state.best_epoch if state else -1
    best_score = state.best_score if state else (-1.0, float("-inf"))
    history = _read_history(run.history_path, start_epoch - 1) if dist.is_main else []
    if dist.is_main:
        # Rows past the checkpoint belong to an epoch that will be run again.
        write_atomic(run.history_path, lambda t: t.write_text("".join(json.dumps(r) + "\n" for r in history)))

    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    if steps_per_epoch == 0:
        raise UserError("the training split yields no batch: lower --batch-size or add images")
    throughput: list[float] = []
    t_start = time.perf_counter()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not dist.is_main or not console.is_terminal,
    )
    with progress:
        bar = progress.add_task("train", total=(cfg.epochs - start_epoch) * steps_per_epoch, rate="-")
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(derived_seed("train", cfg.seed, epoch))  # dropout etc.
            mix_rng = random.Random(derived_seed("mix", cfg.seed, epoch))
            train_batches.set_epoch(epoch)
            if dist.is_main:
                hooks.start_epoch(epoch)
            train_model.train()
            loss_sum, seen, clipped = 0.0, 0, 0
            correct: int | None = 0
            t0 = time.perf_counter()
            for step, (x, y) in enumerate(train_batches):
                lr = apply_schedule(optimizer, epoch + step / steps_per_epoch, cfg.epochs, cfg.optim)
                x = x.to(device, memory_format=memory_format, non_blocking=True)
                y = task.to_device(y, device)
                if cfg.mixes:
                    assert isinstance(task, Classification)  # checked before the first epoch
                    x, y = mix_batch(x, y, task.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, mix_rng)
                with bf16_autocast(model, cfg.bf16):
                    loss, outputs = loss_fn(train_model, x, y, epoch)
                if not all_true(bool(torch.isfinite(loss)), dist):
                    raise _diverged(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}", epoch, lr, run)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    norm = nn.utils.clip_grad_norm_(model.parameters(), clip)
                    clipped += int(norm > clip)
                optimizer.step()
                if average is not None:
                    average.update(model)
                if dist.is_main:
                    hooks.after_step(epoch)
                images = task.count(y)
                loss_sum += loss.item() * images
                right = task.correct(outputs, y)
                correct = None if right is None or correct is None else correct + right
                seen += images
                elapsed = time.perf_counter() - t0
                progress.update(
                    bar,
                    advance=1,
                    description=f"epoch {epoch + 1}/{cfg.epochs}",
                    rate=f"{seen * dist.world_size / max(elapsed, 1e-9):.0f}",
                )
            if seen == 0:  # a loader whose length promised batches it did not yield
                raise UserError(f"the training batches of epoch {epoch + 1} were empty (a used-up iterator?)")
            epoch_seconds = time.perf_counter() - t0
            rate = seen * dist.world_size / epoch_seconds
            if epoch > start_epoch or start_epoch > 0:
                throughput.append(rate)
            train_loss = all_mean(loss_sum / max(seen, 1), dist)
            train_acc = all_mean(correct / max(seen, 1), dist) if correct is not None else None

            if statistics is not None:
                recompute_batchnorm_statistics(
                    scored,
                    statistics,
                    precise_bn,
                    task.forward,
                    lambda x, y: (x.to(device, memory_format=memory_format), task.to_device(y, device)),
                )
            val = task.evaluate(scored, val_batches, cfg.channels_last) if dist.is_main else None
            # Finite training losses do not make finite weights (a last step can overflow them,
            # BN statistics can go NaN): such an epoch must not become a checkpoint or "best".
            if not all_true(val is None or math.isfinite(val.loss), dist):
                raise _diverged(
                    f"validation loss became {val.loss if val else 'non-finite'} after epoch {epoch + 1}",
                    epoch,
                    lr,
                    run,
                )
            if dist.is_main:
                assert val is not None  # the main rank evaluates
                score = val.score
                is_best = score > best_score
                if is_best:
                    best_epoch, best_score = epoch, score
                row = {
                    "epoch": epoch,
                    "lr": lr,
                    "train_loss": train_loss,
                    **({"train_top1": train_acc} if train_acc is not None else {}),
                    **val.history(),
                    "images_per_second": rate,
                    "seconds": epoch_seconds,
                    **({"clipped_steps": clipped} if clip is not None else {}),
                    **hooks.end_epoch(epoch, val),
                }
                if took_effect := [dict(o) for o in overrides if o.get("epoch") == epoch]:
                    row["overrides"] = took_effect
                history.append(row)
                run.append_history(row)
                save_checkpoint(
                    run.checkpoint_dir,
                    model,
                    optimizer,
                    TrainingState(epoch, best_epoch, best_score, extra=hooks.state(), steps_per_epoch=steps_per_epoch),
                    is_best=is_best,
                    tensors=checkpoint_tensors(),
                    optimizers=hooks.optimizers(),
                    best=scored,
                )
                trained = f"  train {train_acc:.3f}" if train_acc is not None else ""
                console.log(
                    f"epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}{trained}  "
                    f"{val.describe()}  {rate:.0f} img/s" + ("  *best" if is_best else "")
                )
            barrier(dist)

    # Every rank ends with the weights of the epoch that was best on val (or the last one;
    # with --ema-decay, the average's).
    if hooks.keep == "best":
        load_best_weights(run.checkpoint_dir, model)
    elif average is not None:
        model.load_state_dict(average.module.state_dict())
    best_val = task.evaluate(model, val_batches, cfg.channels_last) if dist.is_main else None
    return FitResult(
        best_epoch=best_epoch,
        best_val=best_val,
        epochs_run=cfg.epochs - start_epoch,
        train_seconds=time.perf_counter() - t_start,
        images_per_second=sum(throughput) / len(throughput) if throughput else float("nan"),
        history=history,
    )
