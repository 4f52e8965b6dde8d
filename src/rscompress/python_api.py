"""The Python API on your own ``nn.Module`` and data loaders; ``import rscompress`` exports it.

    import rscompress as rsc
    result = rsc.prune(model, train_loader, val_loader, example_input=torch.randn(1, 3, 64, 64),
                       method="l1", target_macs=0.35, finetune_epochs=20, out="runs/r18-l1")
    rsc.save(result.model, "runs/r18-l1-model", example_input=torch.randn(1, 3, 64, 64))
    model = rsc.load("runs/r18-l1-model")

A loader is any re-iterable of ``(images, labels)`` batches with a length, such as a
``torch.utils.data.DataLoader``: images float N×3×S×S, already normalised as the model
expects; labels int64 class indices. The methods, budgets, losses and fine-tuning recipe are
the CLI's (``rscompress prune``); ``out`` is a run dir: a call killed part way continues there
with ``resume=True``, and the finished dir loads with ``load``.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from rscompress.artifacts import RunConfig, RunDir, library_versions
from rscompress.config import (
    DETECTION_LR,
    FINETUNE_LR,
    FitConfig,
    Int8Config,
    OptimConfig,
    PruneConfig,
    with_default_mixing,
)
from rscompress.engine.detection import Detection
from rscompress.engine.metrics import evaluate as evaluate_model
from rscompress.engine.tasks import Evaluation, Task
from rscompress.engine.trainer import EpochBatches, FitResult, LossFn, check_task_fit_options, fit
from rscompress.errors import UserError
from rscompress.io_utils import write_json_atomic
from rscompress.models.complexity import count_macs_params
from rscompress.models.detection import deployable, detector_classes
from rscompress.models.external import identify_external
from rscompress.models.registry import built_as
from rscompress.models.weights import save_weights
from rscompress.pruning.methods import check_config
from rscompress.pruning.parent import budget_reference, has_se_blocks

if TYPE_CHECKING:
    from rscompress.deploy.int8 import Int8Report

Batches = Iterable[tuple[Tensor, Tensor]]


def _loader_batches(loader: Batches, name: str) -> EpochBatches:
    """A user's loader as the fit loop takes it; UserError naming ``name`` when it cannot be."""
    # An iterator would be used up by the first epoch (or by calibration before it).
    if isinstance(loader, Iterator):
        raise UserError(
            f"{name} must be re-iterable with a length (a DataLoader, or a list of batches), "
            f"not an iterator ({type(loader).__name__})"
        )
    try:
        len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise UserError(f"{name} must have a length (a DataLoader, or a list of batches)") from None
    return EpochBatches(loader)  # type: ignore[arg-type]  # sized: checked above


def _img_size(example_input: Tensor) -> int:
    """The side S of a 1×3×S×S example input: budgets are counted on one such image."""
    if (
        not isinstance(example_input, Tensor)
        or example_input.ndim != 4
        or example_input.shape[1] != 3
        or example_input.shape[2] != example_input.shape[3]
    ):
        shape = tuple(example_input.shape) if isinstance(example_input, Tensor) else type(example_input).__name__
        raise UserError(f"example_input must be a 1×3×S×S tensor (MACs are counted on one S×S image); got {shape}")
    return int(example_input.shape[-1])


def _num_classes(model: nn.Module, example_input: Tensor) -> int:
    from rscompress.pruning.pruner import find_classifier

    if (detected := detector_classes(model)) is not None:
        return detected

    param = next(model.parameters(), None)
    example = example_input if param is None else example_input.to(param.device, param.dtype)
    return find_classifier(model, example).out_features


def _model_name(model: nn.Module, num_classes: int) -> tuple[str, dict[str, Any]]:
    """The registry name (and options) that rebuilds ``model``'s architecture in a fresh process."""
    if (made := built_as(model)) is not None:
        name, kwargs = made
        if name.startswith("se_") and not has_se_blocks(model):  # folded or stripped: the plain architecture
            from rscompress.pruning.methods.remotetrimmer import folded_model_name

            name = folded_model_name(name)
        return name, kwargs
    if (external := identify_external(model, num_classes)) is not None:
        return external, {}
    raise UserError(
        f"cannot tell how to rebuild a {type(model).__module__}.{type(model).__name__} without pickle: "
        "save and load take models made by rscompress.create_model (the registry, torchvision/NAME, "
        "timm/NAME), torchvision's and timm's own builders, and models pruned from those"
    )


def _run_config(
    model: nn.Module,
    example_input: Tensor,
    *,
    class_names: Sequence[str] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    **more: Any,
) -> RunConfig:
    from rscompress.pruning import architecture_spec

    img_size = _img_size(example_input)
    num_classes = _num_classes(model, example_input)
    name, kwargs = _model_name(model, num_classes)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UserError(f"class_names has {len(names)} names; the model has {num_classes} outputs")
    return RunConfig(
        model=name,
        model_kwargs=kwargs,
        num_classes=num_classes,
        class_names=names,
        img_size=img_size,
        # Identity normalisation unless given: the user's loader normalised the images.
        mean=list(mean) if mean is not None else [0.0, 0.0, 0.0],
        std=list(std) if std is not None else [1.0, 1.0, 1.0],
        architecture=architecture_spec(model),
        versions=library_versions(),
        **more,
    )


def save(
    model: nn.Module,
    path: str | Path,
    *,
    example_input: Tensor,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Write ``model`` as a run dir without pickle: ``config.json`` (how to rebuild it, every
    layer's shape) and ``model.safetensors``. ``load``, ``rscompress export`` and ``bench``
    take the folder. ``mean``/``std`` (0–1 scale): the normalisation the CLI applies to
    images before this model; by default none (your loader normalised them)."""
    run = RunDir(path)
    if run.is_complete() or run.is_started():
        raise UserError(f"{run.path} already holds a run; choose another path")
    config = _run_config(model, example_input, class_names=class_names, mean=mean, std=std, method="saved")
    macs, params = count_macs_params(model, config.img_size)
    with run.owned():  # a dir it made is removed again when nothing is kept
        _write_saved(model, run, config, example_input, (macs, params))
    return run.path


def _write_saved(
    model: nn.Module, run: RunDir, config: RunConfig, example_input: Tensor, cost: tuple[int, int]
) -> None:
    """``save``'s files, checked by loading them back; nothing kept when they do not load."""
    if run.is_complete():  # written by another process since save looked
        raise UserError(f"{run.path} already holds a run; choose another path")
    macs, params = cost
    run.save_config(config)
    run.save_weights(model)
    run.save_metrics({"macs": macs, "params": params, "num_classes": config.num_classes, "img_size": config.img_size})
    if (problem := _reload_problem(model, run, example_input)) is not None:
        for written in (run.config_path, run.weights_path, run.metrics_path):
            written.unlink(missing_ok=True)
        raise UserError(f"cannot save this {type(model).__name__} so that load rebuilds it ({problem}); nothing kept")


def _reload_problem(model: nn.Module, run: RunDir, example_input: Tensor) -> str | None:
    """Why what ``save`` wrote does not load back as ``model`` (a model changed after it was
    built, in a way no layer shape records), or None when its outputs match."""
    try:
        reloaded, model = deployable(run.load_model()[0]), deployable(model)
        param = next(model.parameters())
        x = torch.randn(2, *example_input.shape[1:], generator=torch.Generator().manual_seed(0))
        flags = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                same = torch.allclose(reloaded(x), model(x.to(param.device, param.dtype)).cpu().float(), atol=1e-5)
        finally:
            for m, flag in flags.items():
                m.training = flag
        return None if same else "its outputs differ from the model's"
    except (UserError, RuntimeError) as err:
        return str(err).splitlines()[0]


def load(path: str | Path) -> nn.Module:
    """The model of a finished run dir (``save``, ``prune``, or any CLI step), in eval mode."""
    model, _ = RunDir(path).require().load_model()
    return model


def _task(model: nn.Module, example_input: Tensor, plain_train: Batches | None = None) -> int | Task:
    """What ``model`` does, as the fit loop takes it: a detector's detection (its loaders yield
    ``(images, [{"boxes", "labels"}, ...])``; ``plain_train``: the batches its BatchNorm statistics
    are recomputed over), else classification into its outputs."""
    if (classes := detector_classes(model)) is not None:
        statistics = None if plain_train is None else _loader_batches(plain_train, "calibration_loader")
        return Detection(tuple(str(i) for i in range(classes)), statistics_batches=statistics)
    return _num_classes(model, example_input)


def evaluate(model: nn.Module, loader: Batches, num_classes: int | None = None) -> Evaluation:
    """Top-1, Cohen's kappa, per-class accuracy, confusion and mean CE of a classifier on
    ``loader``; mAP@0.5, mAP@0.5:0.95, mAP small and per-class AP of a detector."""
    task = _task(model, _first_images(loader, "the loader")) if num_classes is None else num_classes
    if isinstance(task, int):
        return evaluate_model(model, loader, task)
    return task.evaluate(model, loader, False)


@dataclass
class TrainResult:
    model: nn.Module  # the best epoch on val
    val: Evaluation  # EvalResult for a classifier, DetectionEval for a detector
    history: list[dict[str, Any]]
    out: Path | None


@dataclass
class PruneResult:
    model: nn.Module  # pruned, fine-tuned, the best fine-tuning epoch on val
    macs_kept: float
    params_kept: float
    val: Evaluation
    history: list[dict[str, Any]]  # one row per fine-tuning epoch
    details: dict[str, Any]  # what the method did: budget search, sparse training, NAS search
    out: Path | None


@contextmanager
def _options_checked() -> Iterator[None]:
    """Bad options as one UserError naming the option (pydantic's report is a page)."""
    try:
        yield
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "options"
        got = f" (got {first['input']!r})" if not isinstance(first.get("input"), dict) else ""
        raise UserError(f"{where}: {first['msg'].removeprefix('Value error, ')}{got}") from None


def _fit_config(epochs: int, lr: float, seed: int, **fit_options: Any) -> FitConfig:
    optim_fields = set(OptimConfig.model_fields)
    optim = {k: v for k, v in fit_options.items() if k in optim_fields}
    rest = {k: v for k, v in fit_options.items() if k not in optim_fields}
    return FitConfig(epochs=epochs, seed=seed, optim=OptimConfig(lr=lr, **optim), **rest)


@contextmanager
def _work_dir(out: str | Path | None) -> Iterator[RunDir]:
    """``out`` as a run dir held by this process (RunDir.owned), or a temporary one removed
    on exit when none is given."""
    if out is not None:
        with RunDir(out).owned() as run:
            yield run
        return
    tmp = tempfile.mkdtemp(prefix="rscompress-")
    try:
        yield RunDir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches,
    *,
    epochs: int,
    lr: float | None = None,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
    calibration_loader: Batches | None = None,
    **fit_options: Any,
) -> TrainResult:
    """Train ``model`` in place with the recommended recipe (SGD, nesterov, OneCycle to ``lr``:
    default 0.1, for a detector config.DETECTION_LR; label smoothing 0.1; a classifier's batches
    CutMixed unless ``loss_fn`` or a mixing option is given) and keep its best epoch on val.
    ``fit_options``: any other FitConfig/OptimConfig field (``weight_decay``, ``schedule``,
    ``label_smoothing``, ``bf16``, ...).
    ``loss_fn(model, x, y, epoch) -> (loss, logits)`` replaces the cross-entropy.
    ``calibration_loader``: plain (unaugmented) train batches; a detector's BatchNorm statistics
    are recomputed over its first ``precise_bn_batches`` before each val (none given: the running
    statistics stand, as ``train_loader``'s batches may be augmented)."""
    detector = detector_classes(model) is not None
    if lr is None:
        lr = DETECTION_LR if detector else OptimConfig.model_fields["lr"].default
    with _options_checked():
        cfg = _fit_config(epochs, lr, seed, **fit_options)
    if not detector and loss_fn is None:  # your own loss_fn is given class indices unless you ask to mix
        cfg = with_default_mixing(cfg)
    example = _first_images(val_loader)
    settings = {"method": "train", "train": cfg.model_dump(mode="json", exclude={"threads", "device"})}
    task = _task(model, example, calibration_loader)
    check_task_fit_options(cfg, task)
    with _work_dir(out) as run:
        _start(run, model, example, settings, resume)
        result = _fit(run, model, train_loader, val_loader, cfg, task, loss_fn, quiet)
        _finish(run, model, result, settings)
        return TrainResult(model, result.val, result.history, None if out is None else run.path)


def _first_images(loader: Batches, name: str = "the validation loader") -> Tensor:
    """The loader's first image (1×C×H×W float): what a forward pass needs to read the model."""
    first = next(iter(loader), None)
    if first is None:
        raise UserError(f"{name} yields no batch")
    return first[0][:1].float()


def _start(run: RunDir, model: nn.Module, example_input: Tensor, settings: dict[str, Any], resume: bool) -> None:
    """Open ``run`` for a step with ``settings`` (its config.json entries): refuse a finished
    run, continue an unfinished one only when asked and made with the same settings. The
    config.json written also rebuilds the model when its architecture can be named."""
    if run.is_complete():
        raise UserError(f"{run.path} already holds a finished run; choose another out")
    if run.is_started():
        if not resume:
            raise UserError(
                f"{run.path} holds an unfinished run; pass resume=True to continue it or choose another out"
            )
        run.check_settings(settings)
        return
    run.path.mkdir(parents=True, exist_ok=True)
    try:
        config: dict[str, Any] = _run_config(
            model, example_input, class_names=None, mean=None, std=None, **settings
        ).model_dump(mode="json")
    except UserError:  # a model only this process can build: the run works, load() will say why not
        config = settings
    write_json_atomic(run.config_path, config)


def _fit(
    run: RunDir,
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches,
    cfg: FitConfig,
    task: int | Task,
    loss_fn: LossFn | None,
    quiet: bool,
) -> FitResult:
    """The fit loop in ``run``, continuing from its checkpoint when there is one; the model
    ends on the CPU with its best epoch's weights."""
    result = fit(
        model,
        _loader_batches(train_loader, "train_loader"),
        val_loader,
        cfg,
        run,
        task,
        loss_fn=loss_fn,
        resume=(run.checkpoint_dir / "latest.json").is_file(),
        quiet=quiet,
    )
    model.cpu()
    return result


def _finish(run: RunDir, model: nn.Module, result: FitResult, metrics: dict[str, Any]) -> None:
    """Final weights, then metrics.json (last: it marks the run finished); the resume state goes."""
    if "architecture" in (stored := _read_json(run.config_path)):
        from rscompress.pruning import architecture_spec

        write_json_atomic(run.config_path, {**stored, "architecture": architecture_spec(model)})
    save_weights(model, run.weights_path)
    write_json_atomic(
        run.metrics_path,
        {**metrics, "val": result.val.summary(), "best_epoch": result.best_epoch, "history": result.history},
    )
    shutil.rmtree(run.checkpoint_dir, ignore_errors=True)


def prune(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches,
    *,
    example_input: Tensor,
    method: str,
    target_macs: float | None = None,
    target_params: float | None = None,
    ratio: float | None = None,
    target_latency_ms: float | None = None,
    target_speedup: float | None = None,
    latency_threads: int = 1,
    latency_int8: bool = False,
    round_to: int | str | None = None,
    global_pruning: bool = False,
    loss: str | None = None,
    finetune_epochs: int = 20,
    lr: float = FINETUNE_LR,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
    method_options: dict[str, Any] | None = None,
    calibration_loader: Batches | None = None,
    kd: dict[str, Any] | None = None,
    **fit_options: Any,
) -> PruneResult:
    """Prune a trained ``model`` to a budget and fine-tune it; ``model`` itself is not changed.

    ``method``: any of ``rscompress prune --method`` (``rscompress methods`` lists them;
    ``pruning.methods.METHODS``). Budget: ``target_macs`` / ``target_params`` (share of the
    parent's to keep, hit within ±1 % on ``example_input``'s size), a per-layer ``ratio``, or a
    batch-1 latency measured here in ONNX Runtime (``target_latency_ms``, ``target_speedup``
    over ``model``; at ``latency_threads``, on INT8 models with ``latency_int8``; one-shot
    methods only; hit within ±5 % of the measured latency).
    ``loss``: ce, aml+ce (RemoteTrimmer's), or kd / dkd from the unpruned ``model`` as teacher
    (prune-then-distill; ``kd``: KDSettings fields as in ``distill``, no warm-up by default);
    default dkd for a classifier, the detector's own loss for a detector; or
    ``loss_fn(model, x, y, epoch) -> (loss, logits)`` of your own. ``method_options``: that method's PruneConfig fields
    (``sparse_epochs``, ``search_epochs``, ``attention_weight``, ...). Fine-tuning: the CLI's
    recipe at peak ``lr`` for ``finetune_epochs``; ``fit_options`` as in ``train``.
    ``calibration_loader``: plain (unaugmented) train batches whose first
    ``method_options["calibration_batches"]`` (4) average SE attention and feed taylor and hrank,
    as the CLI takes them (default: ``train_loader``'s first batches), and over whose first
    ``precise_bn_batches`` a detector's BatchNorm statistics are recomputed before each val (none
    given: not recomputed).
    """
    from rscompress.pruning.prune_and_finetune import prune_and_finetune, refuse_for_detectors

    if loss_fn is not None and loss is not None:
        raise UserError(f"give loss={loss!r} or a loss_fn, not both")
    with _options_checked():
        cfg = PruneConfig(
            method=method,
            target_macs=target_macs,
            target_params=target_params,
            ratio=ratio,
            target_latency_ms=target_latency_ms,
            target_speedup=target_speedup,
            latency_threads=latency_threads,
            latency_int8=latency_int8,
            round_to=round_to,
            global_pruning=global_pruning,
            loss=loss,
            finetune=_fit_config(finetune_epochs, lr, seed, **fit_options),
            **({"kd": kd} if kd is not None else {}),
            **(method_options or {}),
        )
    check_config(cfg)
    detector = detector_classes(model) is not None
    if loss_fn is None:  # your own loss_fn replaces the named one
        cfg = cfg.with_loss_for(detector)
    if detector:
        refuse_for_detectors(cfg)
    img_size = _img_size(example_input)
    settings = {
        "method": method,
        "method_params": cfg.model_dump(mode="json", exclude={"finetune": {"threads", "device"}}),
    }
    parent = copy.deepcopy(model).cpu()  # preparing it (SE folding) must not change ``model``
    parent_macs, parent_params = count_macs_params(budget_reference(parent), img_size)
    calibration = _calibration(calibration_loader or train_loader, cfg.calibration_batches)
    task = _task(parent, example_input.float(), calibration_loader)
    check_task_fit_options(cfg.finetune, task)
    with _work_dir(out) as run:
        _start(run, budget_reference(parent), example_input, settings, resume)
        step = prune_and_finetune(
            parent,
            _architecture_family(parent),
            img_size,
            cfg,
            run,
            calibration=calibration,
            train_batches=_loader_batches(train_loader, "train_loader"),
            val_batches=val_loader,
            task=task,
            unpruned=lambda: copy.deepcopy(model),
            device=_device(cfg.finetune),
            resume=(run.checkpoint_dir / "latest.json").is_file(),
            quiet=quiet,
            log=(lambda _: None) if quiet else print,
            loss_fn=loss_fn,
        )
        macs, params = count_macs_params(step.model, img_size)
        kept = {"macs_kept": macs / parent_macs, "params_kept": params / parent_params, "macs": macs, "params": params}
        _finish(run, step.model, step.fit, {**settings, **kept, "details": step.details})
        return PruneResult(
            step.model,
            kept["macs_kept"],
            kept["params_kept"],
            step.fit.val,
            step.fit.history,
            step.details,
            None if out is None else run.path,
        )


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())


def _calibration(train_loader: Batches, n_batches: int) -> list[tuple[Tensor, Tensor]]:
    return [batch for _, batch in zip(range(n_batches), train_loader, strict=False)]


def _architecture_family(model: nn.Module) -> str:
    """A name starting with the family (resnet..., vgg...) that picks L1RR's attention layers
    (pruning.methods.l1rr.attention_layers): the registry/torchvision/timm name, else the class name."""
    made = built_as(model)
    name = made[0].split("/")[-1] if made else type(model).__name__
    return name.lower().removeprefix("se_")


def _device(cfg: FitConfig) -> torch.device:
    from rscompress.engine.device import resolve_device

    return resolve_device(cfg.device)


def distill(
    teacher: nn.Module,
    student: nn.Module | str,
    train_loader: Batches,
    val_loader: Batches,
    *,
    loss: str = "dkd",
    epochs: int = 60,
    lr: float | None = None,
    seed: int = 0,
    small_input: bool = False,
    kd: dict[str, Any] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = True,
    **fit_options: Any,
) -> TrainResult:
    """Train ``student`` guided by the frozen ``teacher``'s logits: ``loss`` ce (the student
    alone), kd (Hinton) or dkd (decoupled KD). ``student``: a model, trained (a pruned one,
    say) and so fine-tuned at FINETUNE_LR unless ``lr`` says otherwise, or a registry name,
    built fresh with the teacher's class count and trained at 0.1. ``kd``: KDSettings fields
    (temperature, alpha, beta, kd_weight, kd_warmup_epochs, cache_teacher_logits). ``teacher`` is not changed."""
    from rscompress.config import DistillConfig
    from rscompress.distillation.objective import freeze, teacher_loss_fn
    from rscompress.models.registry import create_model

    example = _first_images(val_loader)
    if detector_classes(teacher) is not None:
        raise UserError("distill's losses (kd, dkd) are for classifiers; a detector teacher is not taken")
    teacher = copy.deepcopy(teacher).cpu()
    num_classes = _num_classes(teacher, example)
    if isinstance(student, str):
        torch.manual_seed(seed)
        student = create_model(student, num_classes, **({"small_input": True} if small_input else {}))
        lr = 0.1 if lr is None else lr
    lr = FINETUNE_LR if lr is None else lr
    with _options_checked():
        cfg = DistillConfig(
            loss=loss, small_input=small_input, fit=_fit_config(epochs, lr, seed, **fit_options), **(kd or {})
        )
    if (student_classes := _num_classes(student, example)) != num_classes:
        raise UserError(f"the student has {student_classes} outputs, the teacher {num_classes}")
    teacher = freeze(teacher.to(_device(cfg.fit)), cfg)
    settings = {
        "method": f"distill-{loss}",
        "method_params": cfg.model_dump(mode="json", exclude={"fit"}),
        "train": cfg.fit.model_dump(mode="json", exclude={"threads", "device"}),
    }
    check_task_fit_options(cfg.fit, num_classes)
    with _work_dir(out) as run:
        _start(run, student, example, settings, resume)
        objective = teacher_loss_fn(teacher, loss, cfg, cfg.fit.label_smoothing)
        result = _fit(run, student, train_loader, val_loader, cfg.fit, num_classes, objective, quiet)
        _finish(run, student, result, settings)
        return TrainResult(student, result.val, result.history, None if out is None else run.path)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    example_input: Tensor,
    images: Tensor | None = None,
    atol: float | None = None,
) -> Any:
    """Write ``model`` as ONNX (input ``images`` N×3×S×S, output ``logits``, N dynamic) and check
    ONNX Runtime against PyTorch on ``images`` (default: 8 seeded random images of
    ``example_input``'s size); returns the ParityReport. A failed check (ParityError) removes
    the file: a model that computes something else must not be deployed."""
    from rscompress.deploy.onnx import DEFAULT_ATOL, ParityError, check_parity
    from rscompress.deploy.onnx import export_onnx as write_onnx

    img_size = _img_size(example_input)
    path = Path(path)
    if path.suffix != ".onnx":
        raise UserError(f"{path} must end in .onnx")
    if images is None:
        images = torch.randn(8, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    model = deployable(model)  # a detector: its raw head outputs (models/detection.RawPredictions)
    write_onnx(model, img_size, path)
    try:
        return check_parity(model, path, images, atol=DEFAULT_ATOL if atol is None else atol)
    except ParityError:
        path.unlink(missing_ok=True)
        raise


def export_int8(
    model: nn.Module,
    path: str | Path,
    *,
    example_input: Tensor,
    calibration: Batches,
    val_loader: Batches,
    test_loader: Batches | None = None,
    calib_images: int = Int8Config.model_fields["calib_images"].default,
    max_drop: float = Int8Config.model_fields["max_drop"].default,
    force: bool = False,
    threads: int = Int8Config.model_fields["threads"].default,
    repeats: int = Int8Config.model_fields["repeats"].default,
    record: str | Path | None = None,
) -> Int8Report:
    """Write ``model`` as an INT8 ONNX file (ONNX Runtime static quantization, QDQ, per-channel
    weights) once it has passed its accuracy check; returns the Int8Report.

    Calibrated on the first ``calib_images`` images of ``calibration`` (train images, prepared
    as for evaluation: no augmentation), checked against the FP32 model in ONNX Runtime on
    ``val_loader`` (and ``test_loader``): top-1 of both, agreement (a detector: mAP@0.5 and
    mAP@0.5:0.95 of both), size, batch-1 latency. A val
    top-1 (mAP@0.5) drop above ``max_drop`` points raises Int8AccuracyError and writes nothing, unless
    ``force``. ``threads`` and ``repeats``: of the latency comparison. Every check, passed or
    not, is appended to ``record`` (default: ``int8.jsonl`` beside ``path``). The options are
    the CLI's ``export --int8`` ones (config.Int8Config).
    """
    from rscompress.artifacts import INT8_RECORD
    from rscompress.deploy.int8 import PARITY_IMAGES, compare_detections, first_images
    from rscompress.deploy.int8 import export_int8 as write_int8
    from rscompress.deploy.onnx import check_parity
    from rscompress.deploy.onnx import export_onnx as write_onnx

    with _options_checked():
        cfg = Int8Config(calib_images=calib_images, max_drop=max_drop, force=force, threads=threads, repeats=repeats)
    img_size = _img_size(example_input)
    path = Path(path)
    if path.suffix != ".onnx":
        raise UserError(f"{path} must end in .onnx")
    for loader, name in ((calibration, "calibration"), (val_loader, "val_loader"), (test_loader, "test_loader")):
        if isinstance(loader, Iterator):
            raise UserError(f"{name} must be re-iterable (a DataLoader, or a list of batches), not an iterator")
    images = first_images(calibration, cfg.calib_images, "calibration")
    notes: tuple[str, ...] = ()
    if images.shape[0] < cfg.calib_images:
        notes = (f"the calibration loader holds {images.shape[0]} images: calibrated on all, not {cfg.calib_images}",)
    model = copy.deepcopy(model).cpu().eval()
    # A detector's file holds its raw head outputs; the check decodes them and scores mAP.
    compare = (
        None if detector_classes(model) is None else partial(compare_detections, detector=model, img_size=img_size)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".int8-fp32-", dir=path.parent) as tmp:
        fp32 = write_onnx(deployable(model), img_size, Path(tmp) / "fp32.onnx")
        check_parity(deployable(model), fp32, torch.from_numpy(first_images(val_loader, PARITY_IMAGES, "val_loader")))
        return write_int8(
            fp32,
            path,
            images,
            val_loader,
            test_loader,
            Path(record) if record is not None else path.parent / INT8_RECORD,
            cfg,
            img_size=img_size,
            calib_source=f"the first {images.shape[0]} images of the calibration loader",
            notes=notes,
            compare=compare,
        )


def bench(
    *models: nn.Module | str | Path,
    example_input: Tensor,
    batch_sizes: Sequence[int] = (1,),
    threads: Sequence[int] = (1,),
    engines: Sequence[str] = ("onnxruntime", "torch"),
    repeats: int = 50,
) -> list[dict[str, Any]]:
    """Latency of each model (an ``nn.Module`` or a run dir) on this CPU, timed interleaved
    (medians, p90), with speedups against the first model given; one row per model and setting."""
    from rscompress.deploy.latency import measure

    img_size = _img_size(example_input)
    specs = [
        m if not isinstance(m, nn.Module) else (f"model {i}", deployable(copy.deepcopy(m).cpu().eval()), img_size)
        for i, m in enumerate(models)
    ]
    results = measure(specs, batch_sizes=batch_sizes, threads=threads, engines=engines, repeats=repeats, peak_rss=False)
    return [r.to_dict() for r in results]
