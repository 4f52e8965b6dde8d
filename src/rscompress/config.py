"""Pydantic models for every option: the one source of truth for the CLI and YAML recipes.

The CLI builds these models from its flags, a recipe builds them from YAML; both get the same
validation and the same error messages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rscompress.engine.device import DEVICE_PATTERN
from rscompress.errors import UserError

AugmentDraw = Literal["batch", "sample"]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a recipe must not be silently ignored. No option is
    inf or nan: ``gt=0`` lets inf through (an lr of inf trains to NaN, a rate of inf ends as
    ``Infinity`` in metrics.json, which strict JSON parsers reject)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# What torch.manual_seed takes; a larger seed was a traceback once training started.
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]


MAX_IMG_SIZE = 4096
# Counts torch and ONNX Runtime take as C integers: past these a value overflowed in them as a
# traceback (found by tests/test_fuzz_cli.py), and no CPU or GPU here runs more.
MAX_BATCH_SIZE = 65536
MAX_THREADS = 1024
# Timed runs of one latency cell: more adds nothing to a median and can run for days.
MAX_REPEATS = 100_000


class DataConfig(StrictModel):
    path: Path
    img_size: int = Field(128, gt=0, le=MAX_IMG_SIZE)
    train_fraction: float = Field(0.7, gt=0, lt=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    # A user-given test folder (same class-folder layout); then the fractions above split only
    # `path` into train/val and test_fraction must be 0.
    test_path: Path | None = None
    split_seed: int = 0
    augment: bool = True
    # One flip/flip/quarter-turn draw moves a whole batch ("batch") or each image its own
    # ("sample"). Level on val over 3 seeds (benchmarks/results/recipe_ablation.md); "batch" is
    # the plain reference's, and one copy a batch instead of up to eight.
    augment_draw: AugmentDraw = "batch"
    skip_bad: bool = False
    cache_dir: Path | None = None  # default: ~/.cache/rscompress (or $RSCOMPRESS_CACHE)

    @model_validator(mode="before")
    @classmethod
    def _test_folder_fractions(cls, data: object) -> object:
        """With a test folder the data folder splits into train and val only: an unset
        test_fraction is 0, an unset train_fraction what val leaves."""
        if not isinstance(data, dict) or data.get("test_path") is None:
            return data
        data = {"test_fraction": 0.0, **data}
        val = data.get("val_fraction", cls.model_fields["val_fraction"].default)
        if "train_fraction" not in data and isinstance(val, int | float):
            data["train_fraction"] = 1 - val
        return data

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.test_path is not None and self.test_fraction != 0:
            raise ValueError("with test_path set, test_fraction must be 0")
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"train/val/test fractions must sum to 1, got "
                f"{self.train_fraction} + {self.val_fraction} + {self.test_fraction} = {total:g}"
            )
        return self


# The fine-tuning rate of a pruned model: OneCycle's peak, a fifth of training's, as the plain
# Torch-Pruning reference of issue 31 fine-tunes. On val, peaks 0.05 and 0.1 were within the
# seeds' spread of it (l1 at 10 % of the MACs, 3 seeds: benchmarks/results/recipe_ablation.md).
FINETUNE_LR = 0.02
# A pruned classifier's fine-tuning loss when none is given: DKD from the unpruned parent (α 1,
# β 8, T 4). Val top-1 of l1 at 10 % of the MACs (se_resnet18, the same parents for every loss),
# pooled over UC Merced and RSSCN7, 3 seeds each (benchmarks/finetune_loss.yaml): dkd 83.51, kd
# 83.33, cross-entropy 83.06; the rule set before the last seeds ran takes the teacher loss further
# ahead of ce. A detector is fine-tuned with its own loss ("ce"): distilling it is not built.
CLASSIFIER_FINETUNE_LOSS = "dkd"
# CutMix's α for a classifier that `train` trains when neither --cutmix-alpha nor --mixup-alpha
# is given (with_default_mixing). Val top-1 against no mixing, 64 px, 60 epochs, 3 paired seeds
# per cell (benchmarks/recipe_ablation.py, variant cutmix1.0 against default): +3.02 points on
# UC Merced se_resnet18, +1.11 resnet18, +2.74 on RSSCN7 se_resnet18, +1.31 resnet18; pooled
# +2.04, by the rule set before the last 8 seeds ran (pooled higher, no cell a point lower).
# Over a short run it costs: see demo.py.
# Detectors refuse mixing, and fine-tuning (prune, distill) distils with DKD, which needs one
# label per image: neither mixes unless asked.
CLASSIFIER_TRAIN_CUTMIX_ALPHA = 1.0
# A detector's peak rate when none is given: FCOS from scratch at the classifiers' 0.1 went NaN
# in its first epoch on NEPU_OWOD (fcos_mobilenet_v3, 256 px, batch 64). On NEPU_OWOD's val split
# (512 px, batch 8, 36 epochs: benchmarks/detection.yaml's parent against the arm of
# detection_parent_lr.yaml) 0.02 reached mAP@0.5 0.79;
# 0.01, torchvision's FCOS reference rate, diverged in its fifth epoch and stayed at 0.33 (both
# with torchvision's ReLU box head, since replaced: models/detection.py).
DETECTION_LR = 0.02
# A detector's gradient clipping when none is given (FitConfig.clip_grad_norm), Ultralytics'
# value, about 5x the steps' norms late in training. Unclipped, the seed-0 NEPU_OWOD parent was
# thrown off in its 25th epoch (val mAP@0.5 0.61 -> 0.00); clipped, both seed-0 parents ended
# higher on val (benchmarks/detection_parent_clip.yaml against detection.yaml's parents).
DETECTION_CLIP_GRAD_NORM = 10.0
# The plain train batches a detector's BatchNorm statistics are recomputed over before each val
# evaluation when none is given (FitConfig.precise_bn_batches; engine/batchnorm_statistics.py).
# Recomputed over NEPU_OWOD's plain train images, the seed-0 parent and its l1 35 % model scored
# higher on val than with their running statistics (over augmented images they did not), and the
# Airbus parent the same; 8 batches scored as all of them did (benchmarks/detection_bn_statistics).
DETECTION_PRECISE_BN_BATCHES = 8


class OptimConfig(StrictModel):
    """The optimiser and its schedule. The defaults are the recommended from-scratch recipe
    (issue 31: SGD with nesterov momentum under OneCycle, as the plain reference loop)."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)  # the peak rate under onecycle
    momentum: float = Field(0.9, ge=0, lt=1)  # unused while onecycle cycles it
    nesterov: bool = True  # SGD only
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    milestones: tuple[int, ...] = ()  # epochs where a step schedule multiplies lr by gamma
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    # onecycle: the share of the run spent rising to lr, and whether momentum (AdamW's β1)
    # falls from 0.95 to 0.85 while the rate rises and comes back after (engine/schedule.py).
    pct_start: float = Field(0.15, gt=0, lt=1)
    cycle_momentum: bool = True

    @model_validator(mode="after")
    def _schedule_options(self) -> OptimConfig:
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ValueError("onecycle warms up by itself (--pct-start); --warmup-epochs is for cosine/step/constant")
        # torch's SGD refuses nesterov without momentum (AdamW ignores both options); cycled,
        # the momentum is never the configured one.
        cycled = self.schedule == "onecycle" and self.cycle_momentum
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0 and not cycled:
            raise ValueError("nesterov needs momentum > 0 (give --no-nesterov)")
        return self


class FitConfig(StrictModel):
    """How a model is trained: what the fit loop needs, for training and fine-tuning alike."""

    epochs: int = Field(30, gt=0)
    batch_size: int = Field(64, gt=0, le=MAX_BATCH_SIZE)
    seed: Seed = 0
    optim: OptimConfig = OptimConfig()
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # Drop the ragged last batch of an epoch. Off, it is trained on as the plain reference
    # loop does, unless it holds a single image (BatchNorm cannot train on one sample).
    drop_last: bool = False
    # The decay of an exponential moving average of the weights (engine/weight_average.py) that
    # is scored on val and kept; None: the weights as trained.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    # Rescale a step's gradients to this total L2 norm when they exceed it (a spike that would
    # throw the weights off, as detectors' losses can give); 0: never; None: the task's default
    # (a classifier never, a detector DETECTION_CLIP_GRAD_NORM). The history counts the steps it
    # rescaled.
    clip_grad_norm: float | None = Field(None, ge=0)
    # Before each val evaluation, recompute BatchNorm statistics over this many plain
    # (un-augmented) train batches (engine/batchnorm_statistics.py says why); 0: keep the
    # running averages of the training batches; None: the task's default where the fit has plain
    # batches (a detector's DETECTION_PRECISE_BN_BATCHES), else 0. A number where it has none
    # (a classifier's fit) is refused.
    precise_bn_batches: int | None = Field(None, ge=0)
    # Mixup / CutMix of the training batches (engine/mixing.py): the α of Beta(α, α) that draws
    # each batch's blend; 0: off; both on: one or the other per batch. Classifiers only, and a
    # loss that takes blended labels as class probabilities (ce, kd; not aml+ce or dkd).
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    channels_last: bool = False
    bf16: bool = False
    threads: int | None = Field(None, gt=0, le=MAX_THREADS)
    # Where the fit loop runs (engine/device.py): auto = CUDA when torch sees a GPU, else CPU.
    device: str = "auto"

    @property
    def mixes(self) -> bool:
        """Whether the training batches are mixed (Mixup or CutMix)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        if not re.match(DEVICE_PATTERN, name):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return name


class TrainConfig(FitConfig):
    """``rscompress train``: a registry model trained from scratch (or from local weights)."""

    model: str
    small_input: bool = False
    weights: Path | None = None
    allow_partial: bool = False
    new_head: bool = False  # a classifier of another class count in `weights` starts fresh

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from rscompress.models.registry import is_known_model

        if not is_known_model(name):
            raise ValueError(f"unknown model {name!r}; `rscompress models` lists the known ones")
        return name


FitT = TypeVar("FitT", bound=FitConfig)


def with_default_mixing(cfg: FitT) -> FitT:
    """``cfg`` with a classifier's default CutMix (CLASSIFIER_TRAIN_CUTMIX_ALPHA) unless it was
    given a mixing of its own (either α, 0 included)."""
    if cfg.model_fields_set & {"mixup_alpha", "cutmix_alpha"}:
        return cfg
    return cfg.model_copy(update={"cutmix_alpha": CLASSIFIER_TRAIN_CUTMIX_ALPHA})


class KDSettings(StrictModel):
    """The teacher terms of KD and DKD, shared by ``distill`` and by ``prune --loss kd|dkd``.

    kd: CE + kd_weight·KD (Hinton, ·T²); dkd: CE + α·TCKD·T² + β·NCKD·T² (Zhao et al. 2022).
    The teacher terms ramp up linearly over ``kd_warmup_epochs`` (a random-init student's
    early gradients would otherwise be dominated by them).
    """

    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(8.0, ge=0)
    kd_weight: float = Field(1.0, ge=0)
    kd_warmup_epochs: int = Field(20, ge=0)
    # Remember the teacher's logits per distinct input (distillation/teacher_cache.py): the teacher
    # then runs once per image view instead of once per epoch.
    cache_teacher_logits: bool = False


BUDGETS = ("target_macs", "target_params", "ratio", "target_latency_ms", "target_speedup")


def with_finetune_rate(value: object) -> object:
    """A fine-tuning given as a mapping (a recipe) without a rate gets FINETUNE_LR, not the
    from-scratch rate that OptimConfig's default is."""
    if isinstance(value, dict):
        optim = value.get("optim", {})
        if isinstance(optim, dict) and "lr" not in optim:
            return {**value, "optim": {**optim, "lr": FINETUNE_LR}}
    return value


def refuse_mixed_labels(loss: str, fit: FitConfig, kd: KDSettings) -> None:
    """AML and DKD take each image's one true class apart from the rest; a mixed batch's labels
    are blends of two classes, so those losses cannot train on it. Nor can a teacher's logits be
    reused: no mixed image is ever seen twice."""
    if not fit.mixes:
        return
    if loss in ("aml+ce", "dkd"):
        raise ValueError(
            f"--mixup-alpha / --cutmix-alpha blend two labels per image; the {loss} loss needs one: use ce or kd"
        )
    if loss == "kd" and kd.cache_teacher_logits:
        raise ValueError("--cache-teacher-logits has nothing to reuse under --mixup-alpha / --cutmix-alpha")


class PruneConfig(StrictModel):
    """``rscompress prune``: which channels go (criterion, budget) and how the result is fine-tuned.

    Every method gets the same fine-tuning recipe (``finetune``) so comparisons are fair.
    """

    method: str  # a name of pruning.methods.METHODS, which checks it and the options it owns
    target_macs: float | None = Field(None, gt=0, le=1)
    target_params: float | None = Field(None, gt=0, le=1)
    ratio: float | None = Field(None, ge=0, lt=1)
    # Measured budgets (pruning/latency_budget.py): batch-1 ONNX Runtime latency on the machine
    # that prunes, as milliseconds or as a speedup over the parent as given.
    target_latency_ms: float | None = Field(None, gt=0)
    target_speedup: float | None = Field(None, gt=1)
    latency_threads: int = Field(1, gt=0, le=MAX_THREADS)  # ONNX Runtime threads the latency is measured at
    latency_int8: bool = False  # measure the INT8 models `export --int8` would write
    global_pruning: bool = False
    # Channel counts kept multiples of N; "auto": of the multiple whose plan runs fastest at the
    # budget on this machine (pruning/latency_budget.py's AUTO_MULTIPLES, timed as a latency budget).
    round_to: int | Literal["auto"] | None = None
    # kd / dkd: fine-tune by distilling from the unpruned parent (prune-then-distill). None: the
    # task's default (with_loss_for), named in the run's config once the task is known.
    loss: Literal["ce", "aml+ce", "kd", "dkd"] | None = None
    r1: float = Field(1.0, ge=0)  # AML weight
    r2: float = Field(1.0, ge=0)  # CE weight
    # No warm-up by default: the pruned student starts from the parent's weights, not at random.
    kd: KDSettings = KDSettings(kd_warmup_epochs=0)
    calibration_batches: int = Field(4, gt=0)  # train batches: SE attention, taylor's gradients, hrank's ranks
    # l1rr / slim (network slimming): sparse training on BN γ before pruning by |γ| globally.
    sparse_epochs: int = Field(30, gt=0)
    # None: the method's default_rate (sparse_training.SparsityConfig's docstring says what the rate is).
    sparse_rate: float | None = Field(None, gt=0)
    # None: a tenth of the lr the parent was trained at (sparse_training.sparse_training_lr says why).
    sparse_lr: float | None = Field(None, gt=0)
    # None: SparsityConfig.loss_tolerance, the val-loss rise at which l1rr's controller backs off.
    sparse_loss_tolerance: float | None = Field(None, ge=0)
    attention_weight: float = Field(1.0, ge=0)  # l1rr's feature attention loss
    # l1rr: each BN's mean |γ| held through sparse training (SparsityConfig.hold_layer_scale).
    sparse_hold_scale: bool = False
    # nas: bi-level search of channel gates before pruning by gate score globally.
    search_epochs: int = Field(20, gt=0)
    # nas: also search the groups with no BatchNorm (vgg16_bn's hidden Linear layers, 89 % of its
    # params). Off by default: on vgg16_bn at 10 % it kept 9x fewer params for 2.4 val points less.
    gate_without_bn: bool = False
    # The parent's split.json is gone: split its data anew from its config.json (RunDir.split_for).
    resplit: bool = False
    finetune: FitConfig

    def with_loss_for(self, detector: bool) -> PruneConfig:
        """This config with its fine-tuning loss named: the one given, else CLASSIFIER_FINETUNE_LOSS
        for a classifier and the detector's own loss ("ce") for a detector."""
        if self.loss is not None:
            return self
        loss = "ce" if detector else CLASSIFIER_FINETUNE_LOSS
        try:
            refuse_mixed_labels(loss, self.finetune, self.kd)
        except ValueError as error:
            raise UserError(f"{error} (the default fine-tuning loss is {loss}: name another with --loss)") from None
        return self.model_copy(update={"loss": loss})

    @field_validator("round_to", mode="before")
    @classmethod
    def _channel_multiple(cls, value: object) -> object:
        if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        if isinstance(value, str) and value.isdigit() and int(value) > 0:
            return int(value)
        raise ValueError(f"--round-to takes a positive channel multiple or auto, got {value!r}")

    @field_validator("finetune", mode="before")
    @classmethod
    def _finetune_rate(cls, value: object) -> object:
        return with_finetune_rate(value)

    @model_validator(mode="after")
    def _one_budget(self) -> PruneConfig:
        given = [n for n in BUDGETS if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of "
                + ", ".join("--" + n.replace("_", "-") for n in BUDGETS)
                + (f" (got {', '.join(given)})" if given else "")
            )
        timed = given[0] in ("target_latency_ms", "target_speedup") or self.round_to == "auto"
        if not timed and (self.latency_threads != 1 or self.latency_int8):
            flag = "--latency-threads" if self.latency_threads != 1 else "--latency-int8"
            raise ValueError(f"{flag} is a setting of --target-latency-ms / --target-speedup / --round-to auto")
        return self

    @model_validator(mode="after")
    def _mixing_loss(self) -> PruneConfig:
        if self.loss is not None:
            refuse_mixed_labels(self.loss, self.finetune, self.kd)
        return self


class DistillConfig(KDSettings):
    """``rscompress distill``: a frozen teacher run guides a student (registry name or run dir).

    ce: the student alone (the baseline); kd / dkd: see ``KDSettings``.
    """

    loss: Literal["ce", "kd", "dkd"] = "dkd"
    small_input: bool = False  # for a registry student
    # The teacher's split.json is gone: split its data anew from its config.json (RunDir.split_for).
    resplit: bool = False
    fit: FitConfig

    @model_validator(mode="after")
    def _mixing_loss(self) -> DistillConfig:
        refuse_mixed_labels(self.loss, self.fit, self)
        return self


class Int8Config(StrictModel):
    """``rscompress export --int8``: INT8 calibration and the accuracy check (deploy/int8.py)."""

    # Train images the activation ranges are taken from, chosen on val (never test) by
    # benchmarks/int8_calibration.py (results/int8_calibration.json): a resnet18 and an
    # se_resnet18 of the UC Merced sample (64 px, 210 val images, one image = 0.48 points), 3
    # draws of each count. Val drop mean / worst over the 6: 16 images 0.24 / 0.95, 32: 0.00 /
    # 0.48, 64: -0.08 / 0.48, 128: 0.08 / 0.48, 256: 0.32 / 0.48, 512: 0.32 / 0.95 points;
    # agreement with FP32 0.978-0.985 throughout. From 32 to 256 it is flat within one image;
    # 64 gives three images a class here and quantizes in ~2 s. Larger counts did no better
    # (MinMax's ranges only widen as it sees more images) and take longer.
    calib_images: int = Field(64, gt=0)
    # The INT8 model is refused when its val top-1 falls more than this many points below FP32's.
    max_drop: float = Field(1.0, ge=0, le=100)
    force: bool = False  # write it anyway past max_drop (the check is still recorded)
    threads: int = Field(1, gt=0, le=MAX_THREADS)  # of the batch-1 latency comparison (1: the benchmark records')
    repeats: int = Field(50, gt=0, le=MAX_REPEATS)  # timed runs per model for that latency
