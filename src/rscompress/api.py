"""The verbs of the CLI as functions: ``train``, ``prune``, ``distill``, ``evaluate``,
``inspect_data``, ``demo``.

Each reads and writes run dirs only, so any step can be re-run or resumed on its own.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from rscompress.artifacts import RunConfig, RunDir, library_versions, setting_differences
from rscompress.config import (
    DETECTION_LR,
    FINETUNE_LR,
    DataConfig,
    DistillConfig,
    FitConfig,
    FitT,
    PruneConfig,
    TrainConfig,
    with_default_mixing,
)
from rscompress.data.loader import BatchLoader
from rscompress.data.prepare import PreparedData, inspect_folder, prepare_data
from rscompress.engine.checkpoint import next_epoch
from rscompress.engine.device import model_device, resolve_device
from rscompress.engine.distributed import DistInfo, barrier, init_distributed
from rscompress.engine.metrics import evaluate as evaluate_model
from rscompress.engine.trainer import FitResult, LossFn, check_fit_options, fit
from rscompress.errors import UserError
from rscompress.io_utils import link_or_copy, write_json_atomic
from rscompress.models import create_model
from rscompress.models.complexity import count_macs_params
from rscompress.models.probe import check_trainable
from rscompress.models.weights import load_weights
from rscompress.overrides import apply_overrides


def _open_out_dir(
    run: RunDir, settings: dict[str, Any], *, resume: bool, reuse_finished: bool
) -> dict[str, Any] | None:
    """Never overwrite a finished run, or silently restart or continue one made otherwise.

    Returns None when the step is to run (fresh, or resumed under the same ``settings``), or
    the finished run's metrics when ``reuse_finished`` and it was made with the same settings.
    """
    if run.is_complete():
        if not reuse_finished:
            raise UserError(f"{run.path} already holds a finished run; choose another --out")
        run.check_settings(settings)
        return {"skipped": "complete", **run.load_metrics()}
    if run.is_started():
        if not resume:
            raise UserError(f"{run.path} holds an unfinished run; pass --resume to continue it or choose another --out")
        run.check_settings(settings)
    return None


def _with_overrides(
    run: RunDir, settings: dict[str, Any], fit_cfg: FitT, overrides: Mapping[str, str] | None, *, resume: bool
) -> tuple[FitT, list[dict[str, Any]]]:
    """The fit settings a run is continued with: ``fit_cfg`` (the options it was made with, or
    the overridden ones) with its recorded overrides and the new ``overrides`` (``--override``,
    taking effect at the epoch the resume starts) applied, and every override record. New ones
    are written to config.json here, before any epoch is trained with them. Called once the run
    dir is owned and known not finished (_open_out_dir)."""
    if overrides and not resume:
        raise UserError("--override changes a setting of a run being continued: add --resume")
    if overrides and not run.config_path.is_file():
        raise UserError(f"--override: {run.path} holds no run to continue (no {run.config_path.name})")
    if not resume:  # a fresh start: what an earlier attempt in this dir recorded is replaced
        return fit_cfg, []
    stored = run.load_config() if run.config_path.is_file() else None
    records = stored.overrides if stored is not None else []
    if not overrides and not records:
        return fit_cfg, []
    run.check_settings(settings)  # the run continued is this one (_open_out_dir skips a run not started)
    new_cfg, all_records = apply_overrides(fit_cfg, records, overrides or {}, next_epoch(run.checkpoint_dir))
    if stored is not None and all_records != records:
        run.save_config(stored.model_copy(update={"train": new_cfg.model_dump(mode="json"), "overrides": all_records}))
    return new_cfg, all_records


def _finetune_overrides(
    run: RunDir, settings: dict[str, Any], cfg: PruneConfig, overrides: Mapping[str, str] | None, *, resume: bool
) -> tuple[PruneConfig, list[dict[str, Any]]]:
    """``_with_overrides`` for a prune run's fine-tuning. Before the model is pruned there is no
    fine-tuning to continue (and config.json is written anew once it is), so none is taken."""
    if overrides and not run.holds_pruned_model():
        raise UserError(
            f"--override changes the fine-tuning of a pruned model; {run.path} holds none yet "
            "(a sparse training or NAS search takes its own options)"
        )
    finetune, records = _with_overrides(run, settings, cfg.finetune, overrides, resume=resume)
    return cfg.model_copy(update={"finetune": finetune}), records


def _owned(run: RunDir, dist: DistInfo) -> AbstractContextManager[object]:
    """``run`` held while this step writes it; under torchrun rank 0, the one that writes,
    holds it for all ranks."""
    return run.owned() if dist.is_main else nullcontext()


def _open_source(source: Path, threads: int | None) -> tuple[RunDir, torch.nn.Module, RunConfig, dict[str, Any]]:
    """The finished run a step starts from: the run dir, its model, config and metrics."""
    if threads:
        torch.set_num_threads(threads)
    src = RunDir(source).require()
    model, config = src.load_model()
    return src, model, config, src.load_metrics()


def train(
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    reuse_finished: bool = False,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train ``train_cfg.model`` on ``data_cfg`` into run dir ``out``; returns metrics.json.

    ``reuse_finished``: a finished ``out`` made with the same settings is returned as is
    (recipes re-run this way), one made otherwise is an error. ``overrides``: with ``resume``,
    training settings continued with new values ({"lr": "0.01"}: overrides.py).
    """
    from rscompress.models.registry import model_task

    if model_task(train_cfg.model) == "detection":
        return _train_detector(
            data_cfg, train_cfg, out, resume=resume, quiet=quiet, reuse_finished=reuse_finished, overrides=overrides
        )
    train_cfg = with_default_mixing(train_cfg)
    check_fit_options(train_cfg, classifier=True, plain_batches=False)
    dist = init_distributed(resolve_device(train_cfg.device))
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    run = RunDir(out)
    # Absolute data paths in config.json: later steps may run from another directory.
    data_cfg = data_cfg.model_copy(
        update={
            "path": data_cfg.path.resolve(),
            "test_path": data_cfg.test_path.resolve() if data_cfg.test_path else None,
        }
    )
    model_kwargs = {"small_input": train_cfg.small_input}
    settings = {
        "model": train_cfg.model,
        "model_kwargs": model_kwargs,
        "data": data_cfg.model_dump(mode="json"),
        "train": train_cfg.model_dump(mode="json"),
    }
    # Before the run dir is made, so a model that cannot train on these inputs leaves nothing;
    # the class count (not known yet) changes no feature map. Built for this alone, not kept.
    check_trainable(
        create_model(train_cfg.model, 2, **model_kwargs), train_cfg.model, data_cfg.img_size, train_cfg.batch_size
    )
    # Read only once the data is decoded (the class count is needed to load it): a path that
    # leads nowhere is found before that wait.
    if train_cfg.weights is not None and not Path(train_cfg.weights).is_file():
        raise UserError(f"weights file not found: {train_cfg.weights}")
    with _owned(run, dist):
        if (finished := _open_out_dir(run, settings, resume=resume, reuse_finished=reuse_finished)) is not None:
            return finished
        train_cfg, override_records = _with_overrides(run, settings, train_cfg, overrides, resume=resume)
        if run.is_started() and not run.split_path.is_file():  # written before the first checkpoint
            raise UserError(
                f"{run.split_path} is missing: the checkpoint in {run.path} was trained on the split it held; "
                "put it back, or start anew in another --out"
            )
        data = _prepare_shared(data_cfg, run, quiet, dist)
        config = _trained_config(
            train_cfg, data_cfg, data.class_names, (data.mean, data.std), model_kwargs, override_records
        )
        torch.manual_seed(train_cfg.seed)
        model = create_model(train_cfg.model, len(data.class_names), **model_kwargs)
        weights_report = None
        if train_cfg.weights is not None:
            weights_report = load_weights(
                model, train_cfg.weights, allow_partial=train_cfg.allow_partial, new_head=train_cfg.new_head
            )
        if dist.is_main:
            run.path.mkdir(parents=True, exist_ok=True)
            run.save_config(config)
        extra: dict[str, Any] = {"model": train_cfg.model}
        if weights_report is not None:
            extra["init_weights"] = {
                "path": str(train_cfg.weights),
                "missing": list(weights_report.missing),
                "unexpected": list(weights_report.unexpected),
                "mismatched": list(weights_report.mismatched),
                "fresh": list(weights_report.fresh),
            }
        return _fit_and_finish(
            model,
            data,
            data_cfg,
            train_cfg,
            run,
            extra,
            resume=resume,
            quiet=quiet,
            dist=dist,
            overrides=override_records,
        )


def _trained_config(
    train_cfg: TrainConfig,
    data_cfg: DataConfig,
    class_names: Sequence[str],
    normalisation: tuple[Sequence[float], Sequence[float]],
    model_kwargs: dict[str, Any],
    overrides: list[dict[str, Any]],
) -> RunConfig:
    """config.json of a model ``train`` trains on ``data_cfg`` (classifier or detector)."""
    mean, std = normalisation
    return RunConfig(
        model=train_cfg.model,
        num_classes=len(class_names),
        class_names=list(class_names),
        img_size=data_cfg.img_size,
        mean=list(mean),
        std=list(std),
        model_kwargs=model_kwargs,
        data=data_cfg.model_dump(mode="json"),
        train=train_cfg.model_dump(mode="json"),
        overrides=overrides,
        versions=library_versions(),
    )


def _train_detector(
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    out: Path,
    *,
    resume: bool,
    quiet: bool,
    reuse_finished: bool,
    overrides: Mapping[str, str] | None,
) -> dict[str, Any]:
    """``train`` for a registry detector on a VOC / COCO / YOLO folder (data/detection.py):
    the same run dir, settings checks and resume, through the same fit loop with the detection
    task (val selection on mAP@0.5), tested once on the test split."""
    from rscompress.data.detection_loader import DetectionBatches
    from rscompress.data.detection_prepare import prepare_detection, split_from_json, split_to_json
    from rscompress.data.transforms import channel_mean_std
    from rscompress.engine.detection import Detection, evaluate_detection

    if train_cfg.weights is not None or train_cfg.small_input:
        raise UserError("--weights and --small-input are for classifiers; detectors train from scratch")
    if "lr" not in train_cfg.optim.model_fields_set:
        optim = train_cfg.optim.model_copy(update={"lr": DETECTION_LR})
        train_cfg = train_cfg.model_copy(update={"optim": optim})
    check_fit_options(train_cfg, classifier=False, plain_batches=True)
    run = RunDir(out)
    data_cfg = data_cfg.model_copy(update={"path": data_cfg.path.resolve()})
    model_kwargs = {"img_size": data_cfg.img_size}
    settings = {
        "model": train_cfg.model,
        "model_kwargs": model_kwargs,
        "data": data_cfg.model_dump(mode="json"),
        "train": train_cfg.model_dump(mode="json"),
    }
    with run.owned():
        if (finished := _open_out_dir(run, settings, resume=resume, reuse_finished=reuse_finished)) is not None:
            return finished
        train_cfg, override_records = _with_overrides(run, settings, train_cfg, overrides, resume=resume)
        fractions = (data_cfg.train_fraction, data_cfg.val_fraction, data_cfg.test_fraction)
        with decode_progress(quiet) as progress:
            data = prepare_detection(
                data_cfg.path, data_cfg.img_size, cache_dir=data_cfg.cache_dir, split_seed=data_cfg.split_seed,
                fractions=fractions, progress=progress,
            )  # fmt: skip
        if run.is_started():  # trained on the split it kept
            data = split_from_json(data, run.split_path)
        mean, std = channel_mean_std(data.images, data.split["train"])
        run.path.mkdir(parents=True, exist_ok=True)
        split_to_json(data, run.split_path)
        run.save_config(
            _trained_config(train_cfg, data_cfg, data.class_names, (mean, std), model_kwargs, override_records)
        )
        torch.manual_seed(train_cfg.seed)
        model = create_model(train_cfg.model, len(data.class_names), **model_kwargs)

        def batches(split: str, train: bool, augment: bool = True) -> DetectionBatches:
            return DetectionBatches(
                data, data.split[split], batch_size=train_cfg.batch_size, mean=mean, std=std,
                shuffle=train, augment=train and augment and data_cfg.augment, seed=train_cfg.seed,
            )  # fmt: skip

        # The train images shuffled as for training, but plain: BatchNorm statistics are recomputed over them.
        task = Detection(data.class_names, statistics_batches=batches("train", True, augment=False))
        result = fit(
            model, batches("train", True), batches("val", False), train_cfg, run, task, resume=resume, quiet=quiet,
            overrides=override_records,
        )  # fmt: skip
        test = evaluate_detection(model, batches("test", False), data.class_names)
        extra = {"model": train_cfg.model, "task": "detection", "split_source": data.split_source}
        metrics = _fitted_metrics(
            model, test.to_dict(), result, train_cfg, data_cfg.img_size, len(data.class_names), extra
        )
        metrics |= {
            "bad_files": [{"path": p, "reason": r} for p, r in data.bad_files],
            "bad_boxes": len(data.bad_boxes),
        }
        return _finish_run(run, model, metrics)


def _fitted_metrics(
    model: torch.nn.Module,
    test: dict[str, Any],
    result: FitResult[Any],
    fit_cfg: FitConfig,
    img_size: int,
    num_classes: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json of a fitted run (any task): ``test``'s summary, the model's cost at
    ``img_size``, the fit (best epoch on val), then ``extra``; the model is moved to the CPU,
    where models live between steps (engine/device.py)."""
    device = model_device(model)
    model.cpu()
    macs, params = count_macs_params(model, img_size)
    return {
        **test,
        "split": "test",
        "macs": macs,
        "params": params,
        "num_classes": num_classes,
        "img_size": img_size,
        "best_epoch": result.best_epoch,
        "epochs": fit_cfg.epochs,
        "seed": fit_cfg.seed,
        **extra,
        "val": result.val.summary(),
        "timings": {
            "train_seconds_this_process": result.train_seconds,
            "train_images_per_second": result.images_per_second,
            "device": str(device),
        },
    }


def _finish_run(run: RunDir, model: torch.nn.Module, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write the run's weights, then its metrics.json (last: its presence marks the run complete)."""
    run.save_weights(model)
    run.save_metrics(metrics)
    # A finished run is never resumed and model.safetensors holds its best weights: the resume
    # state (two more copies of the weights and the optimizer's) would only fill the disk.
    shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    return metrics


def _fit_and_finish(
    model: torch.nn.Module,
    data: PreparedData,
    data_cfg: DataConfig,
    fit_cfg: FitConfig,
    run: RunDir,
    extra_metrics: dict[str, Any],
    *,
    resume: bool,
    quiet: bool,
    dist: DistInfo = DistInfo(),
    loss_fn: LossFn | None = None,
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Fit on train (best epoch on val), then test once and write weights + metrics.json.
    ``overrides``: the run's override records (_with_overrides), on their epochs' history rows."""
    train_batches = train_loader(data, data_cfg, fit_cfg, dist)
    result = fit(
        model,
        train_batches,
        data.eval_batches(data.val_indices),
        fit_cfg,
        run,
        len(data.class_names),
        loss_fn=loss_fn,
        resume=resume,
        quiet=quiet,
        dist=dist,
        overrides=overrides or [],
    )
    return _test_and_finish(model, data, data_cfg, fit_cfg, run, result, extra_metrics, dist)


def _test_and_finish(
    model: torch.nn.Module,
    data: PreparedData,
    data_cfg: DataConfig,
    fit_cfg: FitConfig,
    run: RunDir,
    result: FitResult[Any],
    extra_metrics: dict[str, Any],
    dist: DistInfo = DistInfo(),
) -> dict[str, Any]:
    """Test a fitted classifier once and write its weights + metrics.json (_finish_run)."""
    if not dist.is_main:
        barrier(dist)  # rank 0 is writing the final files
        return {}
    # The test split is touched once, here, with the weights chosen on val.
    test = evaluate_model(model, data.eval_batches(data.test_indices), len(data.class_names))
    metrics = _fitted_metrics(
        model, test.summary(), result, fit_cfg, data_cfg.img_size, len(data.class_names), extra_metrics
    )
    metrics["timings"]["world_size"] = dist.world_size
    metrics |= {
        "test": test.to_dict(),
        "bad_files": [{"path": p, "reason": r} for p, r in data.bad_files],
        "data_warnings": list(data.warnings),
    }
    _finish_run(run, model, metrics)
    barrier(dist)
    return metrics


def train_loader(
    data: PreparedData, data_cfg: DataConfig, fit_cfg: FitConfig, dist: DistInfo = DistInfo()
) -> BatchLoader:
    """The shuffled, augmented train batches every training step uses (benchmarks reuse it)."""
    return BatchLoader(
        data.images,
        data.labels,
        data.train_indices,
        batch_size=fit_cfg.batch_size,
        shuffle=True,
        augment=data_cfg.augment,
        augment_draw=data_cfg.augment_draw,
        mean=data.mean,
        std=data.std,
        seed=fit_cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        drop_last=drops_ragged_batch(len(data.train_indices), fit_cfg.batch_size, dist.world_size, fit_cfg.drop_last),
    )


def drops_ragged_batch(n_train: int, batch_size: int, world_size: int, drop_last: bool) -> bool:
    """Whether an epoch leaves out its ragged last batch: when asked to, or when it would hold
    one image (BatchNorm cannot train on a single sample of a 1×1 map); never the only batch."""
    per_rank = math.ceil(n_train / world_size)
    if per_rank <= batch_size:
        return False
    return drop_last or per_rank % batch_size == 1


def _prepare_shared(data_cfg: DataConfig, run: RunDir, quiet: bool, dist: DistInfo) -> PreparedData:
    """Rank 0 decodes and writes split.json first; the other ranks then reuse both."""
    data = None
    if dist.is_main:
        with decode_progress(quiet) as progress:
            data = prepare_data(data_cfg, run.split_path if run.split_path.is_file() else None, progress)
        _warn(data.warnings, quiet)
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.split_path.is_file():
            data.split.to_json(run.split_path)
    barrier(dist)
    if data is None:
        data = prepare_data(data_cfg, run.split_path)
    return data


@contextmanager
def decode_progress(quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a rich bar while images are decoded."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield None
        return
    with Progress(*Progress.get_default_columns(), console=console, transient=True) as bar:
        task = bar.add_task("decoding images", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _progress_printer(quiet: bool) -> Callable[[str], None]:
    """Where a method's per-epoch lines (sparse training, NAS search) go: stderr, dimmed."""

    def log(line: str) -> None:
        if not quiet:
            Console(stderr=True).print(f"[dim]{line}[/]")

    return log


def _warn(warnings: Iterable[str], quiet: bool) -> None:
    if not quiet:
        for warning in warnings:
            # soft_wrap: one line each, however wide the terminal, as errors are.
            Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/] {warning}")


def _data_of(source: RunDir, data_cfg: DataConfig, resplit: bool, quiet: bool) -> PreparedData:
    """The data of finished run ``source`` on its split, or on a new one when ``resplit`` asks
    for it because the split file is gone (RunDir.split_for); that is said in its warnings."""
    split = source.split_for(resplit)
    with decode_progress(quiet) as progress:
        data = prepare_data(data_cfg, split, progress)
    if split is None:
        said = (
            f"{source.split_path} was missing: split anew from {source.config_path} (--resplit); images "
            f"{source.path} was trained on may be in val or test"
        )
        data = replace(data, warnings=(*data.warnings, said))
        _warn([said], quiet)
    return data


def _step_data(source: RunDir, run: RunDir, data_cfg: DataConfig, resplit: bool, quiet: bool) -> PreparedData:
    """The data a step from finished run ``source`` (a parent, a teacher) into ``run`` trains
    and tests on: ``source``'s split, or the copy of it a started ``run`` keeps (``source``'s
    own may have gone since)."""
    if run.is_started() and run.split_path.is_file():
        with decode_progress(quiet) as progress:
            return prepare_data(data_cfg, run.split_path, progress)
    return _data_of(source, data_cfg, resplit, quiet)


def evaluate(
    run_path: Path,
    data_path: Path | None = None,
    split: str = "test",
    device: str = "auto",
    quiet: bool = False,
    *,
    resplit: bool = False,
) -> dict[str, Any]:
    """Metrics of a finished run on its own split, or on every image of another folder.
    ``resplit``: the run's split.json is gone, split its data anew (RunDir.split_for)."""
    if split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, got {split!r}")
    if resplit and data_path is not None:
        raise UserError("--resplit splits the run's own data; --data evaluates on every image of a folder")
    on = resolve_device(device)
    run = RunDir(run_path).require()
    model, config = run.load_model()
    if metrics_task(run.load_metrics()) == "detection":
        if resplit:
            raise UserError("--resplit is for classification runs; a detector's split is its data's or its split.json")
        return _evaluate_detector(run, model.to(on), config, data_path, split, quiet)
    data_cfg = DataConfig.model_validate(config.data)
    t0 = time.perf_counter()
    if data_path is None:
        data = _data_of(run, data_cfg, resplit, quiet)
        indices = {"train": data.train_indices, "val": data.val_indices, "test": data.test_indices}[split]
        split_name = split
    else:
        with decode_progress(quiet) as progress:
            data = prepare_data(
                data_cfg.model_copy(update={"path": data_path, "test_path": None}),
                None,
                progress,
                class_names=config.class_names,
                whole_folder=True,
            )
        indices = data.all_indices
        split_name = "all"
    data = data.with_normalisation(config.mean, config.std)
    result = evaluate_model(model.to(on), data.eval_batches(indices), config.num_classes)
    macs, params = count_macs_params(model.cpu(), config.img_size)
    return {
        **result.summary(),
        "macs": macs,
        "params": params,
        "num_classes": config.num_classes,
        "split": split_name,
        "resplit": resplit,
        "data_warnings": list(data.warnings),
        "data": str(data_path or data_cfg.path),
        "run": str(run.path),
        "model": config.model,
        "per_class_accuracy": dict(zip(config.class_names, result.per_class_accuracy, strict=False)),
        "confusion": result.confusion,
        "seconds": time.perf_counter() - t0,
        "device": str(on),
    }


def prune(
    parent_path: Path,
    cfg: PruneConfig,
    out: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    reuse_finished: bool = False,
    pruned_from: Path | None = None,
    sparse_from: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Prune a finished run to a budget, fine-tune it with the shared recipe, test it once.

    SE parents (``se_*``) are folded first for every method: the SE attention averaged over
    the training images goes into the BNs (RemoteTrimmer's step 3), so every method prunes
    and ships the same SE-free architecture and budgets are comparable. Criteria that rank
    by weights alone (l1, l2, bn, fpgm, lamp) score the weights the SE model learned, not the
    folded γ·s̄: that amplification is what RemoteTrimmer adds, so a baseline must not get it.
    The pruned, not yet fine-tuned model is saved as ``pruned.safetensors`` with ``prune.json``
    (what the method did): a resumed run starts from there and never prunes twice. Sparse
    training and the NAS search commit their state to ``prune-phase/`` every epoch, so a run
    killed in them resumes there too. ``reuse_finished``: as in ``train``; ``overrides``: as in
    ``train``, for the fine-tuning of a run past its pruning.

    ``pruned_from``: another prune run dir of the same parent whose pruning settings are these
    but whose fine-tuning loss or length may differ: its ``pruned.safetensors`` is taken as is
    instead of pruning again, so two fine-tunings are compared on one pruned model (and a NAS
    search or sparse training is not paid twice).

    ``sparse_from`` (slim, l1rr): another prune run dir of the same parent, made with these
    settings but for another budget, whose sparse training is the one this run would train
    (``sparse_from_differences``): its model after sparse training (``sparse.safetensors``) is
    pruned to this budget instead of training it again.
    """
    from rscompress.pruning import architecture_spec
    from rscompress.pruning.methods import METHODS, check_config
    from rscompress.pruning.methods.remotetrimmer import folded_model_name
    from rscompress.pruning.prune_and_finetune import prune_and_finetune

    method = check_config(cfg)
    if sparse_from is not None and (not method.sparse_training or pruned_from is not None):
        sparse = [m.name for m in METHODS.values() if m.sparse_training]
        raise UserError(
            f"--sparse-from takes the sparse training of --method {' or '.join(sparse)}, "
            f"without --pruned-from; this run is --method {cfg.method}"
            + (" with --pruned-from" if pruned_from is not None else "")
        )
    device = resolve_device(cfg.finetune.device)
    parent, model, parent_cfg, parent_metrics = _open_source(parent_path, cfg.finetune.threads)
    # Pruning keeps the parent's feature-map sizes: what its batches can train, the pruned model's can.
    check_trainable(model, parent_cfg.model, parent_cfg.img_size, cfg.finetune.batch_size)
    run = RunDir(out)
    detector = metrics_task(parent_metrics) == "detection"
    cfg = cfg.with_loss_for(detector)
    if detector:
        return _prune_detector(parent, model, parent_cfg, parent_metrics, cfg, run, resume=resume, quiet=quiet,
                               reuse_finished=reuse_finished, overrides=overrides, pruned_from=pruned_from,
                               sparse_from=sparse_from)  # fmt: skip
    check_fit_options(cfg.finetune, classifier=True, plain_batches=False)
    is_se = parent_cfg.model.startswith("se_")
    # The parent too: a run resumed from another parent would mix two runs' work.
    settings = {**_prune_settings(cfg, is_se), "parent": str(parent.path.resolve())}
    with run.owned():
        if (finished := _open_out_dir(run, settings, resume=resume, reuse_finished=reuse_finished)) is not None:
            return finished
        cfg, override_records = _finetune_overrides(run, settings, cfg, overrides, resume=resume)
        data_cfg = DataConfig.model_validate(parent_cfg.data)
        data = _step_data(parent, run, data_cfg, cfg.resplit, quiet)
        _take_earlier_work(run, parent, settings, cfg, pruned_from, sparse_from)
        model_name = folded_model_name(parent_cfg.model) if is_se else parent_cfg.model
        # SE attention, gradients and BN statistics come from plain (unaugmented) train images.
        calibration = data.eval_batches(data.train_indices, batch_size=64)

        def settings_before_the_phase() -> None:
            # Written before a training phase (sparse training, NAS search) starts, so that a
            # run killed in it is resumed only with the settings it was started with
            # (_open_out_dir): a phase's own checkpoint knows its epochs and rates, not the
            # batches fed to it. A started run has it already (checked), or was started by a
            # version that wrote none: the phase's own check then refuses other settings.
            if not run.is_started():
                run.save_config(
                    parent_cfg.model_copy(update={"model": model_name, **settings, "versions": library_versions()})
                )

        def config_of_the_pruned(pruned: torch.nn.Module) -> None:
            update = {"model": model_name, "architecture": architecture_spec(pruned), **settings}
            run.save_config(parent_cfg.model_copy(update={**update, "versions": library_versions()}))
            data.split.to_json(run.split_path)  # the split its data came by (_step_data)

        step = prune_and_finetune(
            model,
            model_name,
            parent_cfg.img_size,
            cfg,
            run,
            calibration=[b for _, b in zip(range(cfg.calibration_batches), calibration, strict=False)],
            train_batches=train_loader(data, data_cfg, cfg.finetune),
            val_batches=data.eval_batches(data.val_indices),
            task=len(data.class_names),
            unpruned=lambda: parent.load_model()[0],
            device=device,
            resume=resume,
            quiet=quiet,
            log=_progress_printer(quiet),
            parent_optim=parent_cfg.train.get("optim"),
            overrides=override_records,
            on_prepared=settings_before_the_phase,
            on_pruned=config_of_the_pruned,
        )
        extra = {
            "model": model_name,
            "parent_top1": parent_metrics["top1"],
            "parent_kappa": parent_metrics["kappa"],
            **_pruned_metrics(cfg, parent, step.details, pruned_from),
            "global_pruning": cfg.global_pruning,
            "loss": cfg.loss,
            **({"kd": cfg.kd.model_dump(), **_cache_counts(step.teacher)} if cfg.loss in ("kd", "dkd") else {}),
            "resplit": cfg.resplit,
        }
        return _test_and_finish(step.model, data, data_cfg, cfg.finetune, run, step.fit, extra)


def _pruned_metrics(
    cfg: PruneConfig, parent: RunDir, details: dict[str, Any], pruned_from: Path | None
) -> dict[str, Any]:
    """metrics.json entries every pruned run has (classifier or detector): its budget and what
    the method did (``details``), then where its pruned model came from."""
    budget = details["budget"]
    return {
        "method": cfg.method,
        "parent": str(parent.path.resolve()),
        "parent_macs": budget["parent_macs"],
        "parent_params": budget["parent_params"],
        "macs_kept": budget["macs_kept"],
        "params_kept": budget["params_kept"],
        "target_macs": cfg.target_macs,
        "target_params": cfg.target_params,
        "target_latency_ms": cfg.target_latency_ms,
        "target_speedup": cfg.target_speedup,
        "ratio": cfg.ratio,
        "finetune_epochs": cfg.finetune.epochs,
        **details,
        **({"pruned_from": str(Path(pruned_from).resolve())} if pruned_from is not None else {}),
    }


def metrics_task(metrics: dict[str, Any]) -> str:
    """What a finished run's model does: detection runs say so in metrics.json."""
    return str(metrics.get("task", "classification"))


def _detection_data(parent: RunDir, run: RunDir, parent_cfg: RunConfig, quiet: bool) -> Any:
    """A detector parent's data on its split (the pruned run's own copy once it has one)."""
    from rscompress.data.detection_prepare import prepare_detection, split_from_json

    data_cfg = DataConfig.model_validate(parent_cfg.data)
    with decode_progress(quiet) as progress:
        data = prepare_detection(data_cfg.path, data_cfg.img_size, cache_dir=data_cfg.cache_dir, progress=progress)
    return split_from_json(data, run.split_path if run.split_path.is_file() else parent.split_path)


def _evaluate_detector(
    run: RunDir, model: torch.nn.Module, config: RunConfig, data_path: Path | None, split: str, quiet: bool
) -> dict[str, Any]:
    """``evaluate`` for a detector: mAP on its own split, or on every image of another detection
    folder with the same classes."""
    from rscompress.data.detection_loader import DetectionBatches
    from rscompress.data.detection_prepare import prepare_detection
    from rscompress.engine.detection import evaluate_detection

    t0 = time.perf_counter()
    if data_path is None:
        data = _detection_data(run, run, config, quiet)
        indices, split_name = data.split[split], split
    else:
        with decode_progress(quiet) as progress:
            data = prepare_detection(data_path, config.img_size, progress=progress)
        if tuple(data.class_names) != tuple(config.class_names):
            raise UserError(
                f"{data_path} has classes {list(data.class_names)}; {run.path} detects {config.class_names}"
            )
        indices, split_name = np.concatenate(list(data.split.values())), "all"
    batches = DetectionBatches(data, indices, batch_size=8, mean=config.mean, std=config.std)
    result = evaluate_detection(model, batches, data.class_names)
    macs, params = count_macs_params(model.cpu(), config.img_size)
    return {
        **result.to_dict(),
        "macs": macs,
        "params": params,
        "num_classes": config.num_classes,
        "split": split_name,
        "task": "detection",
        "data": str(data_path or data.data.root),
        "run": str(run.path),
        "model": config.model,
        "bad_files": [{"path": p, "reason": r} for p, r in data.bad_files],
        "seconds": time.perf_counter() - t0,
    }


def _prune_detector(
    parent: RunDir,
    model: torch.nn.Module,
    parent_cfg: RunConfig,
    parent_metrics: dict[str, Any],
    cfg: PruneConfig,
    run: RunDir,
    *,
    resume: bool,
    quiet: bool,
    reuse_finished: bool,
    overrides: Mapping[str, str] | None,
    pruned_from: Path | None,
    sparse_from: Path | None,
) -> dict[str, Any]:
    """``prune`` for a detector parent: a one-shot criterion to the budget, its prediction convs
    never pruned (pruner.prediction_layers), fine-tuned with the detector's own loss, tested
    once on mAP."""
    from rscompress.data.detection_loader import DetectionBatches
    from rscompress.data.detection_prepare import split_to_json
    from rscompress.engine.detection import Detection, evaluate_detection
    from rscompress.pruning import architecture_spec
    from rscompress.pruning.methods import check_config
    from rscompress.pruning.prune_and_finetune import prune_and_finetune, refuse_for_detectors

    check_config(cfg)
    refuse_for_detectors(cfg)
    check_fit_options(cfg.finetune, classifier=False, plain_batches=True)
    settings = {**_prune_settings(cfg, False), "parent": str(parent.path.resolve())}
    with run.owned():
        if (finished := _open_out_dir(run, settings, resume=resume, reuse_finished=reuse_finished)) is not None:
            return finished
        cfg, override_records = _finetune_overrides(run, settings, cfg, overrides, resume=resume)
        _take_earlier_work(run, parent, settings, cfg, pruned_from, sparse_from)
        data = _detection_data(parent, run, parent_cfg, quiet)
        mean, std = parent_cfg.mean, parent_cfg.std

        def batches(split: str, train: bool, augment: bool = True) -> DetectionBatches:
            augmented = train and augment and bool(parent_cfg.data.get("augment", True))
            return DetectionBatches(
                data, data.split[split], batch_size=cfg.finetune.batch_size, mean=mean, std=std,
                shuffle=train, augment=augmented, seed=cfg.finetune.seed,
            )  # fmt: skip

        def config_of_the_pruned(pruned: torch.nn.Module) -> None:
            update = {"architecture": architecture_spec(pruned), **settings, "versions": library_versions()}
            run.save_config(parent_cfg.model_copy(update=update))
            split_to_json(data, run.split_path)

        step = prune_and_finetune(
            model,
            parent_cfg.model,
            parent_cfg.img_size,
            cfg,
            run,
            calibration=[b for _, b in zip(range(cfg.calibration_batches), batches("train", False), strict=False)],
            train_batches=batches("train", True),
            val_batches=batches("val", False),
            task=Detection(data.class_names, statistics_batches=batches("train", True, augment=False)),
            unpruned=lambda: parent.load_model()[0],
            device=resolve_device(cfg.finetune.device),
            resume=resume,
            quiet=quiet,
            log=_progress_printer(quiet),
            parent_optim=parent_cfg.train.get("optim"),
            overrides=override_records,
            on_pruned=config_of_the_pruned,
        )
        test = evaluate_detection(step.model, batches("test", False), data.class_names)
        extra = {
            "task": "detection",
            "model": parent_cfg.model,
            "parent_map50": parent_metrics["map50"],
            "parent_map": parent_metrics["map"],
            **_pruned_metrics(cfg, parent, step.details, pruned_from),
        }
        metrics = _fitted_metrics(
            step.model, test.to_dict(), step.fit, cfg.finetune, parent_cfg.img_size, len(data.class_names), extra
        )
        return _finish_run(run, step.model, metrics)


def _prune_settings(cfg: PruneConfig, is_se: bool) -> dict[str, Any]:
    """The config.json entries of a prune run, in JSON form."""
    return {
        "method": cfg.method,
        "method_params": {**cfg.model_dump(mode="json", exclude={"finetune"}), "se_folded": is_se},
        "train": cfg.finetune.model_dump(mode="json"),
    }


# What only the fine-tuning uses: a pruned model can be shared by runs that differ in these alone.
_FINETUNE_ONLY = frozenset({"loss", "kd", "r1", "r2"})
# Of the fine-tuning recipe, its length: sparse training and the NAS search count their own epochs.
# The rest is compared whole, as its batches, seed and precision feed them too.
_FINETUNE_ONLY_TRAIN = frozenset({"epochs"})
# The budget: sparse training reads it only as its target sparsity (sparse_from_differences).
_BUDGET = frozenset({"target_macs", "target_params", "ratio"})


def _settings_differences(stored: dict[str, Any], settings: dict[str, Any], free: frozenset[str]) -> list[str]:
    """Where two prune runs' settings (config.json entries) differ, leaving out the
    ``method_params`` in ``free`` and the fine-tuning length."""

    def compared(values: dict[str, Any]) -> dict[str, Any]:
        method_params = {k: v for k, v in (values.get("method_params") or {}).items() if k not in free}
        train = {k: v for k, v in (values.get("train") or {}).items() if k not in _FINETUNE_ONLY_TRAIN}
        return {"method": values.get("method"), "method_params": method_params, "train": train}

    theirs = compared(stored)
    return [d for key, value in compared(settings).items() for d in setting_differences(theirs[key], value, key)]


def _take_earlier_work(
    run: RunDir,
    parent: RunDir,
    settings: dict[str, Any],
    cfg: PruneConfig,
    pruned_from: Path | None,
    sparse_from: Path | None,
) -> None:
    """``--pruned-from`` / ``--sparse-from``: start ``run`` from another run's pruned model or
    sparse training, once each has been checked to be what this run would make."""
    if pruned_from is not None and not run.holds_pruned_model():
        _take_pruned(RunDir(pruned_from), parent, settings, run)
    if sparse_from is not None and not (run.holds_pruned_model() or run.holds_sparse_model()):
        if differences := sparse_from_differences(sparse_from, parent.path, cfg):
            raise UserError(f"--sparse-from {sparse_from}: {'; '.join(differences[:3])}")
        _take_sparse(RunDir(sparse_from), run)


def _take_pruned(source: RunDir, parent: RunDir, settings: dict[str, Any], run: RunDir) -> None:
    """Start ``run`` from ``source``'s pruned, not yet fine-tuned model, after checking that
    ``source`` pruned the same parent with the same settings (fine-tuning loss aside)."""
    if not (source.holds_pruned_model() and source.config_path.is_file()):
        raise UserError(
            f"--pruned-from {source.path} holds no pruned model (config.json, pruned.safetensors, prune.json)"
        )
    if not source.split_path.is_file():  # its model was pruned on that split's train images
        raise UserError(f"--pruned-from {source.path}: its {source.split_path.name} is missing; put it back")
    stored = json.loads(source.config_path.read_text())
    if stored.get("parent") != str(parent.path.resolve()):
        raise UserError(f"--pruned-from {source.path} was pruned from {stored.get('parent')}, not {parent.path}")
    if differences := _settings_differences(stored, settings, _FINETUNE_ONLY):
        raise UserError(
            f"--pruned-from {source.path} was pruned with other settings ({'; '.join(differences[:3])}); "
            "only the fine-tuning loss (--loss and its weights) and --finetune-epochs may differ"
        )
    run.path.mkdir(parents=True, exist_ok=True)
    run.save_config(RunConfig.model_validate({**stored, **settings}))
    shutil.copyfile(source.split_path, run.split_path)
    shutil.copyfile(source.pruned_weights_path, run.pruned_weights_path)
    shutil.copyfile(source.prune_record_path, run.prune_record_path)  # last: its presence marks pruning done


def sparse_from_differences(source: Path, parent: Path, cfg: PruneConfig) -> list[str]:
    """Why ``source``'s sparse training is not the one ``prune(parent, cfg, ...)`` trains, one
    line each; empty when it is, and that run may start from its model (``--sparse-from``).

    It is when ``source`` pruned the same parent with the same settings but the budget (the
    fine-tuning loss and length aside) and its sparsity stayed on the same side of both
    budgets' target sparsities in every epoch (sparse_training.target_difference): then training again
    would repeat it step for step.
    """
    from rscompress.pruning.methods.sparse_training import sparse_target, target_difference

    src = RunDir(source)
    if not (src.holds_sparse_model() and src.config_path.is_file()):
        return [
            f"{source} holds no finished sparse training ({src.sparse_weights_path.name}, "
            f"{src.sparse_record_path.name}, {src.config_path.name})"
        ]
    stored = json.loads(src.config_path.read_text())
    if stored.get("parent") != str(Path(parent).resolve()):
        return [f"{source} was pruned from {stored.get('parent')}, not {parent}"]
    settings = _prune_settings(cfg, RunDir(parent).load_config().model.startswith("se_"))
    if differences := _settings_differences(stored, settings, _FINETUNE_ONLY | _BUDGET):
        return differences
    difference = target_difference(json.loads(src.sparse_record_path.read_text()), sparse_target(cfg.target_macs))
    return [difference] if difference else []


def _take_sparse(source: RunDir, run: RunDir) -> None:
    """Start ``run`` from ``source``'s model after sparse training (sparse_from_differences
    has found it is the one ``run`` would train)."""
    report = json.loads(source.sparse_record_path.read_text())
    report.setdefault("taken_from", str(source.path.resolve()))  # where it was trained
    run.path.mkdir(parents=True, exist_ok=True)
    link_or_copy(source.sparse_weights_path, run.sparse_weights_path)
    write_json_atomic(run.sparse_record_path, report)  # last: its presence marks the phase done


def distill(
    teacher_path: Path,
    student: str,
    cfg: DistillConfig,
    out: Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    reuse_finished: bool = False,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train ``student`` (a registry name, or a run dir such as a pruned model) on the teacher's
    data and split, guided by the frozen teacher's logits. ``reuse_finished``, ``overrides``: as
    in ``train``."""
    from rscompress.distillation.objective import freeze, teacher_loss_fn

    cfg = _fine_tuning_rate_for_a_trained_student(student, cfg)
    check_fit_options(cfg.fit, classifier=True, plain_batches=False)
    device = resolve_device(cfg.fit.device)
    teacher_run, teacher, teacher_cfg, teacher_metrics = _open_source(teacher_path, cfg.fit.threads)
    run = RunDir(out)
    student_model, student_cfg = _student(student, teacher_cfg, cfg)
    check_trainable(student_model, student_cfg.model, teacher_cfg.img_size, cfg.fit.batch_size)
    settings: dict[str, Any] = {
        "model": student_cfg.model,
        "method": f"distill-{cfg.loss}",
        "method_params": cfg.model_dump(mode="json", exclude={"fit"}),
        "train": cfg.fit.model_dump(mode="json"),
    }
    with run.owned():
        if (finished := _open_out_dir(run, settings, resume=resume, reuse_finished=reuse_finished)) is not None:
            return finished
        fit_cfg, override_records = _with_overrides(run, settings, cfg.fit, overrides, resume=resume)
        cfg = cfg.model_copy(update={"fit": fit_cfg})
        settings.update(train=fit_cfg.model_dump(mode="json"), overrides=override_records)
        teacher_macs, teacher_params = count_macs_params(teacher, teacher_cfg.img_size)
        teacher = freeze(teacher.to(device), cfg)
        data_cfg = DataConfig.model_validate(teacher_cfg.data)
        data = _step_data(teacher_run, run, data_cfg, cfg.resplit, quiet)
        run.path.mkdir(parents=True, exist_ok=True)
        run.save_config(
            student_cfg.model_copy(
                update={**settings, "parent": str(teacher_run.path.resolve()), "versions": library_versions()}
            )
        )
        data.split.to_json(run.split_path)  # the split its data came by (_step_data)

        loss_fn = teacher_loss_fn(teacher, cfg.loss, cfg, cfg.fit.label_smoothing)

        extra = {
            "model": student_cfg.model,
            "method": f"distill-{cfg.loss}",
            "student": student,
            "teacher": str(teacher_run.path.resolve()),
            "teacher_model": teacher_cfg.model,
            "teacher_top1": teacher_metrics["top1"],
            "teacher_kappa": teacher_metrics["kappa"],
            "teacher_macs": teacher_macs,
            "teacher_params": teacher_params,
            "resplit": cfg.resplit,
            **_cache_counts(teacher),
        }
        return _fit_and_finish(
            student_model, data, data_cfg, cfg.fit, run, extra, resume=resume, quiet=quiet, loss_fn=loss_fn,
            overrides=override_records,
        )  # fmt: skip


def _cache_counts(teacher: torch.nn.Module | None) -> dict[str, Any]:
    """Teacher-cache hits/misses of this process for metrics.json (filled in while training)."""
    from rscompress.distillation.teacher_cache import CachedTeacher

    return {"teacher_cache_this_process": teacher.counts} if isinstance(teacher, CachedTeacher) else {}


def _fine_tuning_rate_for_a_trained_student(student: str, cfg: DistillConfig) -> DistillConfig:
    """A run-dir student is trained already: given no rate, it is fine-tuned at FINETUNE_LR
    instead of trained at the from-scratch rate."""
    if not Path(student).is_dir() or "lr" in cfg.fit.optim.model_fields_set:
        return cfg
    optim = cfg.fit.optim.model_copy(update={"lr": FINETUNE_LR})
    return cfg.model_copy(update={"fit": cfg.fit.model_copy(update={"optim": optim})})


def _student(student: str, teacher_cfg: RunConfig, cfg: DistillConfig) -> tuple[torch.nn.Module, RunConfig]:
    """The student model and its run config: a run dir (weights kept) or a fresh registry model."""
    if Path(student).is_dir():
        model, config = RunDir(student).require().load_model()
        if config.class_names != teacher_cfg.class_names or config.img_size != teacher_cfg.img_size:
            raise UserError(
                f"student run {student} was made for other data than the teacher "
                f"(classes or img_size differ: {config.img_size} vs {teacher_cfg.img_size} px)"
            )
        model.train()
        return model, config
    from rscompress.models.registry import is_known_model

    if not is_known_model(student):
        raise UserError(f"--student {student!r} is neither a run dir nor a known model (`rscompress models`)")
    torch.manual_seed(cfg.fit.seed)
    kwargs = {"small_input": cfg.small_input}
    model = create_model(student, teacher_cfg.num_classes, **kwargs)
    config = teacher_cfg.model_copy(update={"model": student, "model_kwargs": kwargs, "architecture": None})
    return model, config


def inspect_data(path: Path) -> dict[str, Any]:
    """``rscompress data inspect``: a detection dataset (VOC, COCO, YOLO) or a class-folder tree."""
    from rscompress.data.detection import detect_format, inspect_detection

    if Path(path).is_dir() and detect_format(Path(path)) is not None:
        return inspect_detection(path)
    return inspect_folder(path).to_dict()
