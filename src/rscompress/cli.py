"""Command-line interface: parses flags into the pydantic configs and calls ``api``.

Bad input ends with one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from typer import TyperException

from rscompress.config import (
    CLASSIFIER_TRAIN_CUTMIX_ALPHA,
    DETECTION_CLIP_GRAD_NORM,
    DETECTION_LR,
    DETECTION_PRECISE_BN_BATCHES,
    FINETUNE_LR,
    DataConfig,
    DistillConfig,
    FitConfig,
    Int8Config,
    KDSettings,
    OptimConfig,
    PruneConfig,
)
from rscompress.errors import UserError
from rscompress.overrides import parse_overrides

if TYPE_CHECKING:
    from rscompress.deploy.int8 import Int8Report

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compress CNNs for remote-sensing imagery: train, prune, distill, evaluate, export.",
)
data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset folder before training on it.")
app.add_typer(data_app, name="data")

_debug = False


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False):
    global _debug
    _debug = debug


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")


def _print_table(table: Any) -> None:
    """Print a rich table whole: piped or redirected, at its natural width (rich would squeeze it
    into 80 columns and cut every cell to "…"); on a narrow terminal, cells wrap instead."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(100_000)).maximum
        console = Console(width=max(natural, 80))
    for column in table.columns:
        column.overflow = "fold"
    console.print(table)


def _default(model_cls: Any, name: str) -> Any:
    """An option's default, read from the config model that defines it (one definition)."""
    return model_cls.model_fields[name].default


# Defaults of the options, read from the config models that define them (one definition).
OPTIM_DEFAULTS = OptimConfig()
FIT_DEFAULTS = FitConfig()
PRUNE_KD: KDSettings = _default(PruneConfig, "kd")  # prune's teacher terms: no warm-up
DISTILL_KD = KDSettings()  # distill's teacher terms: DistillConfig inherits these defaults

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
OutOpt = Annotated[Path, typer.Option(help="Run dir to write.")]
EpochsOpt = Annotated[int, typer.Option()]
BatchSizeOpt = Annotated[int, typer.Option()]
SeedOpt = Annotated[int, typer.Option(help="Seeds model init, shuffling and augmentation.")]
OptimizerOpt = Annotated[str, typer.Option(help="sgd or adamw.")]
MomentumOpt = Annotated[float, typer.Option(help="SGD momentum when it is not cycled.")]
NesterovOpt = Annotated[bool, typer.Option(help="Nesterov momentum (SGD).")]
WeightDecayOpt = Annotated[float, typer.Option()]
ScheduleOpt = Annotated[str, typer.Option(help="onecycle (warm-up built in), cosine, step or constant.")]
PctStartOpt = Annotated[float, typer.Option(help="onecycle: share of the run rising to the peak lr.")]
CycleMomentumOpt = Annotated[bool, typer.Option(help="onecycle: momentum 0.95 -> 0.85 -> 0.95 against the lr.")]
MilestonesOpt = Annotated[str, typer.Option(help="Step schedule epochs, e.g. '80,120'.")]
GammaOpt = Annotated[float, typer.Option(help="Step schedule factor.")]
WarmupEpochsOpt = Annotated[int, typer.Option(help="Linear lr warm-up (cosine, step, constant).")]
LabelSmoothingOpt = Annotated[float, typer.Option()]
DropLastOpt = Annotated[bool, typer.Option(help="Leave out each epoch's ragged last batch (kept by default).")]
EmaDecayOpt = Annotated[
    float | None,
    typer.Option(help="Score, keep and return an exponential moving average of the weights with this decay."),
]
ClipGradNormOpt = Annotated[
    float | None,
    typer.Option(
        help="Rescale each step's gradients to this total L2 norm when they exceed it; 0: never; "
        f"default: never for a classifier, {DETECTION_CLIP_GRAD_NORM:g} for a detector."
    ),
]
PreciseBnOpt = Annotated[
    int | None,
    typer.Option(
        help="Before each val evaluation, recompute BatchNorm statistics over this many plain (un-augmented) train "
        f"batches; 0: keep the running averages; default: {DETECTION_PRECISE_BN_BATCHES} for a detector "
        "(detectors only)."
    ),
]
MixupAlphaOpt = Annotated[
    float,
    typer.Option(help="Mixup: blend each training batch with itself reversed, weight ~ Beta(a, a); 0: off."),
]
CutmixAlphaOpt = Annotated[
    float,
    typer.Option(
        help="CutMix: paste a box of the reversed batch, area ~ Beta(a, a); 0: off; with --mixup-alpha, one per batch."
    ),
]
# train's: unset, a classifier gets CutMix (config.with_default_mixing), a detector no mixing.
TrainMixupAlphaOpt = Annotated[
    float | None,
    typer.Option(
        help="Mixup: blend each training batch with itself reversed, weight ~ Beta(a, a); 0: off. Giving either "
        "mixing option replaces the default CutMix."
    ),
]
TrainCutmixAlphaOpt = Annotated[
    float | None,
    typer.Option(
        help="CutMix: paste a box of the reversed batch, area ~ Beta(a, a); 0: off; with --mixup-alpha, one per "
        f"batch. Default: {CLASSIFIER_TRAIN_CUTMIX_ALPHA} for a classifier unless --mixup-alpha is given; "
        "detectors do not mix."
    ),
]
ChannelsLastOpt = Annotated[
    bool, typer.Option(help="channels_last memory format (training, and the NAS search and sparse training of prune).")
]
Bf16Opt = Annotated[
    bool,
    typer.Option(
        help="bfloat16 autocast of the forward passes (a teacher's too; the NAS search and sparse training of prune)."
    ),
]
SmallInputOpt = Annotated[bool, typer.Option(help="Stem for 32-64 px inputs (less downsampling; registry models).")]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch intra-op threads.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")]
OverrideOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--override",
        help="With --resume: continue with a new value of a training setting, KEY=VALUE "
        "(lr, warmup_epochs, weight_decay, epochs; repeatable), recorded in config.json and history.jsonl.",
    ),
]
ResplitOpt = Annotated[
    bool,
    typer.Option(
        help="The split.json of the run read (the one evaluated or exported, the parent, the teacher) is "
        "gone: split its data anew from its config.json (recorded; images it trained on may then be in "
        "val or test)."
    ),
]
AlphaOpt = Annotated[float, typer.Option(help="DKD weight of TCKD.")]
BetaOpt = Annotated[float, typer.Option(help="DKD weight of NCKD.")]
KdWeightOpt = Annotated[float, typer.Option(help="KD weight (with --loss kd).")]
KdWarmupEpochsOpt = Annotated[int, typer.Option(help="Linear warm-up of the KD terms.")]
TemperatureOpt = Annotated[float, typer.Option(help="KD/DKD temperature (with --loss kd|dkd).")]
CacheTeacherLogitsOpt = Annotated[
    bool, typer.Option(help="Run the teacher once per distinct input (image view; --loss kd|dkd).")
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        help="Where training runs (and a prune's NAS search and sparse training): auto (CUDA if torch sees "
        "a GPU, else CPU), cpu, cuda or cuda:N."
    ),
]


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset root: a folder per class, or VOC, COCO or YOLO detection.")],
    model: Annotated[str, typer.Option(help="Model name (see `rscompress models`).")],
    out: OutOpt,
    img_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = _default(DataConfig, "img_size"),
    epochs: EpochsOpt = FIT_DEFAULTS.epochs,
    batch_size: BatchSizeOpt = FIT_DEFAULTS.batch_size,
    seed: SeedOpt = 0,
    optimizer: OptimizerOpt = OPTIM_DEFAULTS.optimizer,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"Peak learning rate (onecycle) or base rate; default {OPTIM_DEFAULTS.lr:g}, "
            f"for a detector {DETECTION_LR:g}."
        ),
    ] = None,
    momentum: MomentumOpt = OPTIM_DEFAULTS.momentum,
    nesterov: NesterovOpt = OPTIM_DEFAULTS.nesterov,
    weight_decay: WeightDecayOpt = OPTIM_DEFAULTS.weight_decay,
    schedule: ScheduleOpt = OPTIM_DEFAULTS.schedule,
    pct_start: PctStartOpt = OPTIM_DEFAULTS.pct_start,
    cycle_momentum: CycleMomentumOpt = OPTIM_DEFAULTS.cycle_momentum,
    milestones: MilestonesOpt = "",
    gamma: GammaOpt = OPTIM_DEFAULTS.gamma,
    warmup_epochs: WarmupEpochsOpt = OPTIM_DEFAULTS.warmup_epochs,
    label_smoothing: LabelSmoothingOpt = FIT_DEFAULTS.label_smoothing,
    drop_last: DropLastOpt = FIT_DEFAULTS.drop_last,
    ema_decay: EmaDecayOpt = FIT_DEFAULTS.ema_decay,
    clip_grad_norm: ClipGradNormOpt = FIT_DEFAULTS.clip_grad_norm,
    precise_bn_batches: PreciseBnOpt = FIT_DEFAULTS.precise_bn_batches,
    mixup_alpha: TrainMixupAlphaOpt = None,
    cutmix_alpha: TrainCutmixAlphaOpt = None,
    channels_last: ChannelsLastOpt = False,
    bf16: Bf16Opt = False,
    small_input: SmallInputOpt = False,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Initial weights: .safetensors, or a .pth/.pt state dict "
            "(read weights-only; checkpoints unwrapped), strict keys."
        ),
    ] = None,
    allow_partial: Annotated[bool, typer.Option(help="Load matching keys of --weights only.")] = False,
    new_head: Annotated[
        bool, typer.Option(help="Start a classifier of another class count in --weights fresh.")
    ] = False,
    augment: Annotated[bool, typer.Option(help="Flips and 90° rotations.")] = _default(DataConfig, "augment"),
    augment_draw: Annotated[
        str, typer.Option(help="batch: one flip/turn draw moves the whole batch; sample: one draw per image.")
    ] = _default(DataConfig, "augment_draw"),
    skip_bad: Annotated[bool, typer.Option(help="Skip unreadable images instead of failing.")] = False,
    train_fraction: Annotated[
        float | None,
        typer.Option(help=f"Default {_default(DataConfig, 'train_fraction')}; with --test-data: 1 - val-fraction."),
    ] = None,
    val_fraction: Annotated[float, typer.Option()] = _default(DataConfig, "val_fraction"),
    test_fraction: Annotated[
        float | None, typer.Option(help=f"Default {_default(DataConfig, 'test_fraction')}; with --test-data: 0.")
    ] = None,
    test_data: Annotated[
        Path | None, typer.Option(help="Separate test folder: --data then splits into train and val only.")
    ] = None,
    split_seed: Annotated[int, typer.Option()] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="Decoded-image cache (default ~/.cache/rscompress).")] = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    override: OverrideOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Train a model from scratch (or from --weights) and evaluate it on the test split."""
    from rscompress import api
    from rscompress.config import TrainConfig

    data_cfg = _validated(
        DataConfig,
        path=data,
        img_size=img_size,
        val_fraction=val_fraction,
        test_path=test_data,
        # Unset fractions are left to DataConfig, whose defaults depend on --test-data.
        **{k: v for k, v in (("train_fraction", train_fraction), ("test_fraction", test_fraction)) if v is not None},
        split_seed=split_seed,
        augment=augment,
        augment_draw=augment_draw,
        skip_bad=skip_bad,
        cache_dir=cache_dir,
    )
    optim_cfg = _optim(
        optimizer,
        lr,
        momentum,
        nesterov,
        weight_decay,
        schedule,
        pct_start,
        cycle_momentum,
        milestones,
        gamma,
        warmup_epochs,
    )
    train_cfg = _validated(
        TrainConfig,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        optim=optim_cfg,
        label_smoothing=label_smoothing,
        drop_last=drop_last,
        ema_decay=ema_decay,
        clip_grad_norm=clip_grad_norm,
        precise_bn_batches=precise_bn_batches,
        # Unset mixing is left to the API, whose default depends on the kind of model.
        **{k: v for k, v in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)) if v is not None},
        channels_last=channels_last,
        bf16=bf16,
        small_input=small_input,
        weights=weights,
        allow_partial=allow_partial,
        new_head=new_head,
        threads=threads,
        device=device,
    )
    overrides = parse_overrides(override or [])
    metrics = api.train(data_cfg, train_cfg, out, resume=resume, quiet=quiet or as_json, overrides=overrides)
    if as_json:
        _print_json(metrics)
    elif metrics:
        _print_summary(out, metrics)


@app.command()
def prune(
    run: Annotated[Path, typer.Argument(help="Finished run dir to prune (the parent).")],
    method: Annotated[str, typer.Option(help="A pruning method; `rscompress methods` lists them.")],
    out: OutOpt,
    target_macs: Annotated[
        float | None, typer.Option(help="Fraction of the parent's MACs to keep (0 < F <= 1).")
    ] = None,
    target_params: Annotated[float | None, typer.Option(help="Fraction of the parent's params to keep.")] = None,
    ratio: Annotated[float | None, typer.Option(help="Channel ratio to remove per layer (paper-style).")] = None,
    target_latency_ms: Annotated[
        float | None,
        typer.Option(help="Batch-1 ONNX Runtime latency to reach, in ms, measured on this machine (one-shot methods)."),
    ] = None,
    target_speedup: Annotated[
        float | None, typer.Option(help="Batch-1 speedup over the parent to reach, measured as --target-latency-ms.")
    ] = None,
    latency_threads: Annotated[int, typer.Option(help="ONNX Runtime threads the latency budget is measured at.")] = 1,
    latency_int8: Annotated[
        bool, typer.Option(help="Measure the latency budget on INT8 models, as `export --int8` writes them.")
    ] = False,
    global_pruning: Annotated[bool, typer.Option("--global", help="Rank channels across layers.")] = False,
    round_to: Annotated[
        str | None,
        typer.Option(
            help="Keep channel counts multiples of N, or auto: the multiple whose plan runs fastest "
            "here (1, 8, 16, 32, timed as --target-speedup; one-shot methods)."
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            help="Fine-tuning loss: ce, aml+ce, or kd / dkd from the unpruned parent; default dkd for a "
            "classifier, the detector's own loss for a detector."
        ),
    ] = _default(PruneConfig, "loss"),
    r1: Annotated[float, typer.Option(help="AML weight (with --loss aml+ce).")] = _default(PruneConfig, "r1"),
    r2: Annotated[float, typer.Option(help="CE weight (with --loss aml+ce).")] = _default(PruneConfig, "r2"),
    temperature: TemperatureOpt = PRUNE_KD.temperature,
    alpha: AlphaOpt = PRUNE_KD.alpha,
    beta: BetaOpt = PRUNE_KD.beta,
    kd_weight: KdWeightOpt = PRUNE_KD.kd_weight,
    kd_warmup_epochs: KdWarmupEpochsOpt = PRUNE_KD.kd_warmup_epochs,
    cache_teacher_logits: CacheTeacherLogitsOpt = PRUNE_KD.cache_teacher_logits,
    calibration_batches: Annotated[
        int,
        typer.Option(help="Plain train batches that average SE attention and feed taylor's gradients, hrank's ranks."),
    ] = _default(PruneConfig, "calibration_batches"),
    sparse_epochs: Annotated[int, typer.Option(help="Sparse-training epochs (slim, l1rr).")] = 30,
    sparse_rate: Annotated[
        float | None,
        typer.Option(
            help="L1 push on BN gamma as the share of the parent's median "
            "|gamma| removed per epoch; l1rr starts there and adapts it, "
            "slim holds it. Default: the method's own (docs/methods.md)."
        ),
    ] = None,
    sparse_lr: Annotated[
        float | None,
        typer.Option(
            help="Constant lr of sparse training (slim, l1rr); default: a tenth of the parent's SGD lr, else 0.01."
        ),
    ] = None,
    sparse_loss_tolerance: Annotated[
        float | None,
        typer.Option(
            help="l1rr's controller backs the L1 push off once val loss is this share above the "
            "dense parent's; default: see the methods docs."
        ),
    ] = None,
    attention_weight: Annotated[float, typer.Option(help="Feature attention loss weight (l1rr).")] = 1.0,
    sparse_hold_scale: Annotated[
        bool,
        typer.Option(
            help="l1rr: scale each BN's γ back to its mean |γ| after every L1 step, so that layers "
            "whose scale the next BN removes lose channels instead of shrinking whole."
        ),
    ] = False,
    search_epochs: Annotated[int, typer.Option(help="Gate search epochs (nas).")] = 20,
    gate_without_bn: Annotated[
        bool,
        typer.Option(
            help="Also search channels with no BatchNorm, e.g. VGG's hidden "
            "Linear layers (nas): far fewer params, usually lower top-1."
        ),
    ] = False,
    finetune_epochs: Annotated[int, typer.Option()] = 20,
    batch_size: BatchSizeOpt = FIT_DEFAULTS.batch_size,
    optimizer: OptimizerOpt = OPTIM_DEFAULTS.optimizer,
    lr: Annotated[float, typer.Option(help="Peak learning rate (onecycle) or base rate.")] = FINETUNE_LR,
    momentum: MomentumOpt = OPTIM_DEFAULTS.momentum,
    nesterov: NesterovOpt = OPTIM_DEFAULTS.nesterov,
    weight_decay: WeightDecayOpt = OPTIM_DEFAULTS.weight_decay,
    schedule: ScheduleOpt = OPTIM_DEFAULTS.schedule,
    pct_start: PctStartOpt = OPTIM_DEFAULTS.pct_start,
    cycle_momentum: CycleMomentumOpt = OPTIM_DEFAULTS.cycle_momentum,
    milestones: MilestonesOpt = "",
    gamma: GammaOpt = OPTIM_DEFAULTS.gamma,
    warmup_epochs: WarmupEpochsOpt = OPTIM_DEFAULTS.warmup_epochs,
    label_smoothing: LabelSmoothingOpt = FIT_DEFAULTS.label_smoothing,
    drop_last: DropLastOpt = FIT_DEFAULTS.drop_last,
    ema_decay: EmaDecayOpt = FIT_DEFAULTS.ema_decay,
    clip_grad_norm: ClipGradNormOpt = FIT_DEFAULTS.clip_grad_norm,
    precise_bn_batches: PreciseBnOpt = FIT_DEFAULTS.precise_bn_batches,
    mixup_alpha: MixupAlphaOpt = FIT_DEFAULTS.mixup_alpha,
    cutmix_alpha: CutmixAlphaOpt = FIT_DEFAULTS.cutmix_alpha,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    channels_last: ChannelsLastOpt = False,
    bf16: Bf16Opt = False,
    device: DeviceOpt = "auto",
    pruned_from: Annotated[
        Path | None,
        typer.Option(
            help="Take the pruned model of this prune run dir (same parent "
            "and pruning settings; --loss and --finetune-epochs may differ) "
            "instead of pruning again: compare fine-tunings of one pruned model."
        ),
    ] = None,
    sparse_from: Annotated[
        Path | None,
        typer.Option(
            help="Prune the model this slim/l1rr run dir of the same parent "
            "and settings, made for another budget, left after sparse "
            "training, when training again would repeat it step for step "
            "(else refused, saying why)."
        ),
    ] = None,
    resplit: ResplitOpt = False,
    resume: ResumeOpt = False,
    override: OverrideOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Remove channels to a MACs, params or latency budget, fine-tune, and test once."""
    from rscompress import api

    fit_cfg = _fit(
        finetune_epochs,
        batch_size,
        seed,
        label_smoothing,
        drop_last,
        threads,
        _optim(
            optimizer,
            lr,
            momentum,
            nesterov,
            weight_decay,
            schedule,
            pct_start,
            cycle_momentum,
            milestones,
            gamma,
            warmup_epochs,
        ),
        ema_decay=ema_decay,
        clip_grad_norm=clip_grad_norm,
        precise_bn_batches=precise_bn_batches,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        channels_last=channels_last,
        bf16=bf16,
        device=device,
    )
    cfg = _validated(
        PruneConfig,
        method=method,
        target_macs=target_macs,
        target_params=target_params,
        ratio=ratio,
        target_latency_ms=target_latency_ms,
        target_speedup=target_speedup,
        latency_threads=latency_threads,
        latency_int8=latency_int8,
        global_pruning=global_pruning,
        round_to=round_to,
        loss=loss,
        r1=r1,
        r2=r2,
        calibration_batches=calibration_batches,
        sparse_epochs=sparse_epochs,
        sparse_rate=sparse_rate,
        sparse_lr=sparse_lr,
        sparse_loss_tolerance=sparse_loss_tolerance,
        attention_weight=attention_weight,
        sparse_hold_scale=sparse_hold_scale,
        search_epochs=search_epochs,
        gate_without_bn=gate_without_bn,
        resplit=resplit,
        kd=_validated(
            KDSettings,
            temperature=temperature,
            alpha=alpha,
            beta=beta,
            kd_weight=kd_weight,
            kd_warmup_epochs=kd_warmup_epochs,
            cache_teacher_logits=cache_teacher_logits,
        ),
        finetune=fit_cfg,
    )
    overrides = parse_overrides(override or [])
    metrics = api.prune(
        run,
        cfg,
        out,
        resume=resume,
        quiet=quiet or as_json,
        pruned_from=pruned_from,
        sparse_from=sparse_from,
        overrides=overrides,
    )
    if as_json:
        _print_json(metrics)
    else:
        _print_summary(out, metrics)


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option(help="Finished teacher run dir (frozen).")],
    student: Annotated[str, typer.Option(help="Student: a model name or a run dir (e.g. a pruned run).")],
    out: OutOpt,
    loss: Annotated[str, typer.Option(help="ce (no teacher), kd or dkd.")] = _default(DistillConfig, "loss"),
    temperature: TemperatureOpt = DISTILL_KD.temperature,
    alpha: AlphaOpt = DISTILL_KD.alpha,
    beta: BetaOpt = DISTILL_KD.beta,
    kd_weight: KdWeightOpt = DISTILL_KD.kd_weight,
    kd_warmup_epochs: KdWarmupEpochsOpt = DISTILL_KD.kd_warmup_epochs,
    cache_teacher_logits: CacheTeacherLogitsOpt = DISTILL_KD.cache_teacher_logits,
    small_input: SmallInputOpt = False,
    epochs: EpochsOpt = FIT_DEFAULTS.epochs,
    batch_size: BatchSizeOpt = FIT_DEFAULTS.batch_size,
    optimizer: OptimizerOpt = OPTIM_DEFAULTS.optimizer,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Peak learning rate (onecycle) or base rate; default: the training "
            "rate for a model name, the fine-tuning rate for a run dir."
        ),
    ] = None,
    momentum: MomentumOpt = OPTIM_DEFAULTS.momentum,
    nesterov: NesterovOpt = OPTIM_DEFAULTS.nesterov,
    weight_decay: WeightDecayOpt = OPTIM_DEFAULTS.weight_decay,
    schedule: ScheduleOpt = OPTIM_DEFAULTS.schedule,
    pct_start: PctStartOpt = OPTIM_DEFAULTS.pct_start,
    cycle_momentum: CycleMomentumOpt = OPTIM_DEFAULTS.cycle_momentum,
    milestones: MilestonesOpt = "",
    gamma: GammaOpt = OPTIM_DEFAULTS.gamma,
    warmup_epochs: WarmupEpochsOpt = OPTIM_DEFAULTS.warmup_epochs,
    label_smoothing: LabelSmoothingOpt = FIT_DEFAULTS.label_smoothing,
    drop_last: DropLastOpt = FIT_DEFAULTS.drop_last,
    ema_decay: EmaDecayOpt = FIT_DEFAULTS.ema_decay,
    clip_grad_norm: ClipGradNormOpt = FIT_DEFAULTS.clip_grad_norm,
    mixup_alpha: MixupAlphaOpt = FIT_DEFAULTS.mixup_alpha,
    cutmix_alpha: CutmixAlphaOpt = FIT_DEFAULTS.cutmix_alpha,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    channels_last: ChannelsLastOpt = False,
    bf16: Bf16Opt = False,
    device: DeviceOpt = "auto",
    resplit: ResplitOpt = False,
    resume: ResumeOpt = False,
    override: OverrideOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Train a student on the teacher's data and split with CE, KD or DKD."""
    from rscompress import api

    fit_cfg = _fit(
        epochs,
        batch_size,
        seed,
        label_smoothing,
        drop_last,
        threads,
        _optim(
            optimizer,
            lr,
            momentum,
            nesterov,
            weight_decay,
            schedule,
            pct_start,
            cycle_momentum,
            milestones,
            gamma,
            warmup_epochs,
        ),
        ema_decay=ema_decay,
        clip_grad_norm=clip_grad_norm,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        channels_last=channels_last,
        bf16=bf16,
        device=device,
    )
    cfg = _validated(
        DistillConfig,
        loss=loss,
        temperature=temperature,
        alpha=alpha,
        beta=beta,
        kd_weight=kd_weight,
        kd_warmup_epochs=kd_warmup_epochs,
        cache_teacher_logits=cache_teacher_logits,
        small_input=small_input,
        resplit=resplit,
        fit=fit_cfg,
    )
    overrides = parse_overrides(override or [])
    metrics = api.distill(teacher, student, cfg, out, resume=resume, quiet=quiet or as_json, overrides=overrides)
    if as_json:
        _print_json(metrics)
    else:
        _print_summary(out, metrics)


@app.command("run")
def run_recipe(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
):
    """Run a whole pipeline from one YAML recipe; finished steps are skipped, so a re-run resumes."""
    from rscompress.recipe import run_recipe as run_all

    results = run_all(recipe, quiet=quiet or as_json)
    if as_json:
        _print_json(results)
        return
    _print_steps(str(recipe), results)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run dir.")],
    data: Annotated[Path | None, typer.Option(help="Evaluate on every image of this folder instead.")] = None,
    split: Annotated[str, typer.Option(help="Split of the run's own data: test, val or train.")] = "test",
    device: Annotated[
        str,
        typer.Option(help="Where the evaluation runs: auto (CUDA if torch sees a GPU, else CPU), cpu, cuda or cuda:N."),
    ] = "auto",
    resplit: ResplitOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Evaluate a run dir on its test split (or on another folder with --data)."""
    from rscompress import api

    result = api.evaluate(run, data_path=data, split=split, device=device, quiet=quiet or as_json, resplit=resplit)
    if as_json:
        _print_json(result)
    else:
        _print_summary(run, result)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Finished run dir.")],
    format: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    out: Annotated[
        Path | None, typer.Option(help="Output file (default RUN/model.onnx, with --int8 RUN/model.int8.onnx).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a file already at the output path.")] = False,
    resplit: ResplitOpt = False,
    parity_data: Annotated[
        Path | None, typer.Option(help="Folder for the parity images when the run's data is elsewhere.")
    ] = None,
    parity_images: Annotated[int, typer.Option(help="Real images the parity check runs on.")] = 64,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="INT8 (ONNX Runtime static quantization, QDQ), checked against FP32 on the run's val and test "
            "splits; every check is appended to RUN/int8.jsonl.",
        ),
    ] = False,
    calib_images: Annotated[
        int, typer.Option(help="--int8: train images to calibrate the activation ranges on.")
    ] = _default(Int8Config, "calib_images"),
    max_drop: Annotated[
        float,
        typer.Option(help="--int8: refuse the INT8 model if val top-1 (a detector's mAP@0.5) falls more points."),
    ] = _default(Int8Config, "max_drop"),
    force: Annotated[bool, typer.Option("--force", help="--int8: write it even past --max-drop.")] = False,
    threads: Annotated[int, typer.Option(help="--int8: threads of the batch-1 latency comparison.")] = _default(
        Int8Config, "threads"
    ),
    repeats: Annotated[int, typer.Option(help="--int8: timed runs per model for the latency.")] = _default(
        Int8Config, "repeats"
    ),
    as_json: JsonOpt = False,
):
    """Export to ONNX (dynamic batch) and check parity with onnxruntime on real images; with
    --int8, quantize and check the INT8 model's accuracy, size and latency against FP32."""
    if format != "onnx":
        raise UserError(f"--format: only 'onnx' is supported, got {format!r}")
    if parity_images <= 0:
        raise UserError(f"--parity-images must be > 0, got {parity_images}")
    int8_cfg = _validated(
        Int8Config, calib_images=calib_images, max_drop=max_drop, force=force, threads=threads, repeats=repeats
    )
    if int8:
        _export_int8(run, out, overwrite, resplit, parity_data, parity_images, int8_cfg, as_json)
        return
    # An INT8 option without --int8 would be silently ignored: the user meant something by it.
    if changed := [n for n, f in Int8Config.model_fields.items() if getattr(int8_cfg, n) != f.default]:
        raise UserError(f"--{changed[0].replace('_', '-')} applies only with --int8")
    from rscompress.deploy.onnx import export_run

    report = export_run(
        run, out, n_images=parity_images, parity_data=parity_data, overwrite=overwrite, resplit=resplit
    ).to_dict()
    if as_json:
        _print_json(report)
    else:
        boxes = report.get("box_parity")
        typer.echo(
            f"wrote {report['path']} ({report['size_bytes'] / 1e6:.1f} MB); parity on {report['n_images']} "
            + (
                f"images: max abs diff {report['max_abs_diff']:.2e}, top-1 agreement {report['top1_agree']:.0%}"
                if boxes is None
                else f"images: raw outputs max abs diff {report['max_abs_diff']:.2e}; {boxes['matched']} of "
                f"{boxes['boxes_torch']} boxes matched (worst IoU {boxes['worst_iou']:.4f}, "
                f"scores within {boxes['max_score_diff']:.1e})"
            )
        )


def _export_int8(
    run: Path,
    out: Path | None,
    overwrite: bool,
    resplit: bool,
    parity_data: Path | None,
    parity_images: int,
    cfg: Int8Config,
    as_json: bool,
) -> None:
    from rscompress.deploy.int8 import export_int8_run

    if parity_data is not None:
        raise UserError("--parity-data does not apply to --int8: it calibrates and checks on the run's own splits")
    report = export_int8_run(run, out, cfg, parity_images=parity_images, overwrite=overwrite, resplit=resplit)
    if as_json:
        _print_json(report.to_dict())
    else:
        _print_int8(report)


def _print_int8(report: Int8Report) -> None:
    """The INT8 check for people: accuracy next to FP32, size, latency, and what was decided."""
    r = report.to_dict()
    lines = [
        f"wrote {r['path']}: INT8 {r['size_bytes_int8'] / 1e6:.1f} MB, FP32 {r['size_bytes_fp32'] / 1e6:.1f} MB "
        f"({r['size_bytes_fp32'] / r['size_bytes_int8']:.1f}x smaller)",
    ]
    for split in ("val", "test"):
        if (s := r[split]) is not None and "map50_fp32" in s:
            lines.append(
                f"{split:4s} mAP@0.5: FP32 {s['map50_fp32']:.4f}  INT8 {s['map50_int8']:.4f}  "
                f"(drop {s['drop_points']:+.2f} points; mAP@0.5:0.95 {s['map_fp32']:.4f} -> {s['map_int8']:.4f}; "
                f"{s['n_images']} images)"
            )
        elif s is not None:
            lines.append(
                f"{split:4s} top-1: FP32 {s['top1_fp32']:.2%}  INT8 {s['top1_int8']:.2%}  "
                f"(drop {s['drop_points']:+.2f} points; INT8 agrees with FP32 on {s['agreement']:.1%} "
                f"of {s['n_images']} images)"
            )
    lines.append(
        f"batch-1 latency, {r['latency_threads']} thread(s), median of {r['latency_repeats']}: "
        f"FP32 {r['latency_ms_bs1_fp32']:.3g} ms, INT8 {r['latency_ms_bs1_int8']:.3g} ms "
        + (
            f"({r['speedup']:.2f}x faster)"
            if not r["int8_slower"]
            else f"(INT8 SLOWER: {1 / r['speedup']:.2f}x the FP32 time)"
        )
    )
    lines.append(f"CPU: {report.cpu.describe()}")
    lines.append(
        f"calibrated on {r['calib_source']}; --max-drop {r['max_drop']:g} "
        f"(val {'mAP@0.5' if 'map50_fp32' in r['val'] else 'top-1'} points); "
        f"check recorded in {r['record']}"
    )
    # Notes (INT8 slower than FP32 here, written past --max-drop) go with the numbers, on stdout.
    lines.extend(f"note: {note}" for note in r["notes"])
    typer.echo("\n".join(lines))


@app.command()
def bench(
    runs: Annotated[list[Path], typer.Argument(help="Run dirs; a run's parent among them is its reference.")],
    batch_size: Annotated[list[int], typer.Option(help="Batch sizes (repeatable).")] = [1, 32],  # noqa: B006
    threads: Annotated[list[int], typer.Option(help="Thread counts (repeatable).")] = [1, 2],  # noqa: B006
    engine: Annotated[list[str], typer.Option(help="torch and/or onnxruntime (repeatable).")] = [  # noqa: B006
        "torch",
        "onnxruntime",
    ],
    warmup: Annotated[int, typer.Option()] = 10,
    repeats: Annotated[int, typer.Option(help="Timed runs per model and setting (>= 50 for reports).")] = 50,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Also each run's INT8 model (export --int8), in ONNX Runtime, beside the FP32 ones."
        ),
    ] = False,
    as_json: JsonOpt = False,
):
    """CPU latency (median, p90), peak RSS, file size and test top-1, models interleaved in one process."""
    from rscompress.artifacts import RunDir
    from rscompress.deploy.latency import bench_table, measure

    results = measure([RunDir(r).require() for r in runs], batch_size, threads, engine, warmup, repeats, int8=int8)
    rows = bench_table(results)
    if as_json:
        _print_json({"results": rows})
        return
    from rich.table import Table

    table = Table(*rows[0].keys())
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    _print_table(table)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Finished run dirs to compare.")],
    out: Annotated[Path, typer.Option(help="HTML file to write (a .md twin goes beside it).")] = Path("report.html"),
    latency: Annotated[bool, typer.Option(help="Measure ONNX Runtime bs1 latency of every run.")] = True,
    repeats: Annotated[int, typer.Option(help="Timed runs per model for latency.")] = 50,
):
    """One self-contained HTML report (tables, Pareto plots, per-class accuracy, confusion matrix)."""
    from rscompress.report.report import build_report

    path = build_report(runs, out, latency=latency, repeats=repeats)
    typer.echo(f"wrote {path} and {path.with_suffix('.md')}")


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="Dataset root: class folders, or VOC / COCO / YOLO detection.")],
    as_json: JsonOpt = False,
):
    """Class counts, image sizes, unreadable files and exact duplicates of a dataset folder; for
    detection data, boxes per class, box sizes, empty images and every bad box."""
    from rscompress import api

    report = api.inspect_data(path)
    if as_json:
        _print_json(report)
    elif report.get("task") == "detection":
        _print_detection_inspect(report)
    else:
        _print_inspect(report)


@app.command()
def models(filter_text: Annotated[str, typer.Option("--filter", help="Substring to match.")] = ""):
    """Names in the model registry, one a line: its own models, then torchvision/NAME and timm/NAME."""
    from rscompress.models import list_models
    from rscompress.models.external import external_names

    for name in list_models(filter_text) + external_names(filter_text):
        typer.echo(name)


@app.command()
def methods():
    """Pruning methods, one a line: the name --method takes, the options it owns, what it does."""
    from rscompress.pruning.methods import METHODS

    for method in METHODS.values():
        owns = "".join(f" --{o.replace('_', '-')}" for o in sorted(method.options))
        typer.echo(f"{method.name:<14}{method.summary}" + (f" [{owns.strip()}]" if owns else ""))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's run dirs.")] = Path("demo-out"),
    quiet: QuietOpt = False,
):
    """Offline end-to-end demo on the bundled UC Merced sample."""
    from rscompress.demo import int8_speedup, run_demo

    results, report_path = run_demo(out, quiet=quiet)
    _print_steps("demo", results)
    int8 = results["rt15-int8"]
    if "test" in int8:  # exported by this run (a re-run reuses the file and says "skipped")
        typer.echo(
            f"INT8 rt15: test top-1 {int8['test']['top1_fp32']:.1%} FP32 -> {int8['test']['top1_int8']:.1%} INT8, "
            f"{int8['size_bytes_int8'] / 1e6:.1f} MB"
        )
    typer.echo(f"INT8 rt15 vs the FP32 parent at batch 1, 1 thread: {int8_speedup(out):.1f}x faster")
    typer.echo(f"report: {report_path.resolve()}")


# -- helpers ---------------------------------------------------------------------------


def _optim(
    optimizer,
    lr,
    momentum,
    nesterov,
    weight_decay,
    schedule,
    pct_start,
    cycle_momentum,
    milestones,
    gamma,
    warmup_epochs,
):
    # An lr left unset (None) stays unset: the API picks it (distill: by the kind of student).
    rate = {} if lr is None else {"lr": lr}
    return _validated(
        OptimConfig,
        optimizer=optimizer,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        schedule=schedule,
        pct_start=pct_start,
        cycle_momentum=cycle_momentum,
        milestones=_int_list(milestones, "--milestones"),
        gamma=gamma,
        warmup_epochs=warmup_epochs,
        **rate,
    )


def _fit(
    epochs,
    batch_size,
    seed,
    label_smoothing,
    drop_last,
    threads,
    optim,
    *,
    ema_decay,
    clip_grad_norm,
    mixup_alpha,
    cutmix_alpha,
    channels_last,
    bf16,
    device,
    precise_bn_batches=None,
):
    return _validated(
        FitConfig,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        optim=optim,
        label_smoothing=label_smoothing,
        drop_last=drop_last,
        ema_decay=ema_decay,
        clip_grad_norm=clip_grad_norm,
        precise_bn_batches=precise_bn_batches,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        threads=threads,
        channels_last=channels_last,
        bf16=bf16,
        device=device,
    )


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _validated(model_cls, **values):
    """Build a config model; a validation error becomes one line naming the option."""
    try:
        return model_cls(**values)
    except ValidationError as err:
        raise UserError(describe_validation_error(err)) from None


def describe_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    flag = f"--{where.replace('_', '-')}" if where else "options"
    got = f" (got {first['input']!r})" if where and not isinstance(first.get("input"), dict) else ""
    msg = first["msg"].removeprefix("Value error, ")
    return f"{flag}: {msg}{got}"


def _print_summary(run: Path, metrics: dict) -> None:
    from rich.table import Table

    table = Table("metric", "value", title=str(run))
    for key in (
        "top1",
        "kappa",
        "macs",
        "params",
        "macs_kept",
        "params_kept",
        "parent_top1",
        "teacher_top1",
        "teacher_params",
        "n_images",
        "split",
    ):
        if key in metrics:
            value = metrics[key]
            table.add_row(
                key,
                f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value),
            )
    _print_table(table)


def _print_steps(title: str, results: dict) -> None:
    from rich.table import Table

    table = Table("step", "top1", "kappa", "MMACs", "params (M)", "note", title=title)
    for name, r in results.items():
        metrics = "top1" in r
        table.add_row(
            name,
            f"{r['top1']:.4f}" if metrics else "",
            f"{r['kappa']:.4f}" if metrics else "",
            f"{r['macs'] / 1e6:.1f}" if metrics else "",
            f"{r['params'] / 1e6:.2f}" if metrics else "",
            r.get("skipped", "") or (f"onnx diff {r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""),
        )
    _print_table(table)


def _print_detection_inspect(report: dict) -> None:
    from rich.console import Console

    console = Console()
    splits = report["splits"]
    given = ", ".join(f"{k} {n}" for k, n in splits.items()) if splits else "none given"
    console.print(
        f"[bold]{report['root']}[/] ({report['format']}): {report['num_images']} images "
        f"({report['empty_images']} without boxes, {report['groups']} scenes), {report['num_boxes']} boxes; "
        f"splits: {given}"
    )
    console.print("boxes per class: " + ", ".join(f"{k} {n}" for k, n in report["boxes_per_class"].items()))
    console.print("box sides (√area, px): " + ", ".join(f"{k} {n}" for k, n in report["box_sizes"].items()))
    for bad in report["bad_boxes"]:
        colour = "yellow" if bad["kept"] else "red"
        console.print(f"[{colour}]{bad['reason']}:[/] {bad['image']} {bad['label']} {bad['box']}")
    for bad in report["bad_files"]:
        console.print(f"[red]bad file:[/] {bad['path']}: {bad['reason']}")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


def _print_inspect(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    known = report["dataset"]["name"] if report.get("dataset") else "not a known dataset"
    console.print(
        f"[bold]{report['root']}[/]: {report['num_images']} images, {report['num_classes']} classes ({known})"
    )
    table = Table("class", "images")
    for cls, count in report["class_counts"].items():
        table.add_row(cls, str(count))
    _print_table(table)
    sizes = ", ".join(f"{s['width']}x{s['height']} ×{s['count']}" for s in report["image_sizes"])
    more = report["num_image_sizes"] - len(report["image_sizes"])
    console.print(f"image sizes: {sizes}" + (f" (+{more} more sizes)" if more > 0 else ""))
    for group in report["duplicate_groups"]:
        console.print(f"[yellow]identical pixels:[/] {', '.join(group)}")
    for bad in report["bad_files"]:
        console.print(f"[red]bad file:[/] {bad['path']}: {bad['reason']}")
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


def main(argv: list[str] | None = None) -> int:
    # Not standalone: typer would print its parse errors (an unknown command or flag, a value
    # of the wrong type) as a boxed page; they come here and are one line like ours.
    try:
        code = app(args=argv, prog_name="rscompress", standalone_mode=False)
    except TyperException as err:
        # typer's own class-name test: with no arguments it has printed the help already.
        if type(err).__name__ != "NoArgsIsHelpError":
            sys.stderr.write(f"error: {_parse_error(err)}\n")
        return 2
    except UserError as err:
        if _debug:
            raise
        sys.stderr.write(f"error: {err}\n")
        return 2
    # An exit code (--help, Ctrl-C) or a command's return value (None).
    return code if isinstance(code, int) else 0


def _parse_error(err: TyperException) -> str:
    """typer's message on one line, with where to find the usage."""
    message = " ".join(err.format_message().split()).rstrip(".")
    ctx = getattr(err, "ctx", None)
    return f"{message}; see '{ctx.command_path} --help'" if ctx is not None else message


if __name__ == "__main__":
    raise SystemExit(main())
