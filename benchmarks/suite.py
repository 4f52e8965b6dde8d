"""The side-by-side harness: datasets × parents × methods × budgets × seeds, resumable.

    python -m benchmarks suite benchmarks/suite.yaml     # run what is missing, append records
    python -m benchmarks tables benchmarks/results/pruning.jsonl   # markdown table + plots

Every parent, pruned model and distilled student is a run dir under ``work``; a finished one is
reused, an interrupted one resumes. A record (DESIGN.md format) is appended once per finished
cell, with ONNX Runtime bs1 latency of the model and of its parent (for a student: its teacher)
measured interleaved in one process; a pruned detector's record also says whether its ONNX
export kept parity on its own test images (raw outputs and decoded boxes). A suite with
``parent_records: true`` records each parent too (``method: none``, no latency): its parents
take hours and come before any cell.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from benchmarks.records import (
    DEVICE,
    UNPRUNED,
    append_record,
    cpu_name,
    git_commit,
    has_record,
    scores,
    train_record,
)
from rscompress import api
from rscompress.artifacts import RunDir
from rscompress.config import (
    DETECTION_PRECISE_BN_BATCHES,
    DataConfig,
    DistillConfig,
    FitConfig,
    KDSettings,
    PruneConfig,
    StrictModel,
    TrainConfig,
    with_finetune_rate,
)
from rscompress.deploy.box_parity import BoxParityError
from rscompress.deploy.onnx import ParityError, export_run
from rscompress.errors import UserError
from rscompress.pruning.methods import METHODS


class Parent(StrictModel):
    dataset: str
    model: str
    epochs: int = Field(gt=0)
    seeds: list[int]
    # Mixed precision for the parent, its pruned models (NAS search, sparse training and
    # fine-tuning) and its students: bf16 autocast and channels_last halve a vgg16_bn training
    # step on an AVX512-BF16 CPU (benchmarks/results/train_step.json).
    bf16: bool = False
    channels_last: bool = False
    # The parent's peak lr where the shared recipe's does not suit its model.
    lr: float | None = Field(None, gt=0)

    def precision(self) -> dict[str, bool]:
        return {"bf16": self.bf16, "channels_last": self.channels_last}


class Cell(StrictModel):
    dataset: str
    model: str  # the parent's model
    method: str
    global_pruning: bool = False
    loss: str = "ce"
    budgets: list[float]  # fractions of the parent to keep, of budget_metric
    # params: a memory budget (NAS and the budget search take either); the record then has
    # target_params instead of target_macs, and the run dir says so in its name.
    budget_metric: Literal["macs", "params"] = "macs"
    options: dict[str, Any] = {}  # more PruneConfig fields, e.g. an ablation's attention_weight: 0
    label: str | None = None  # record's method name; default method[-global][-loss]
    # Fine-tuning epochs where they differ from the shared recipe's: a control that gives a
    # one-shot baseline as many weight-update epochs as a method with a training phase of its own.
    finetune_epochs: int | None = Field(None, gt=0)
    # The label of a cell (same parent and budget, same pruning settings) whose pruned model this
    # one fine-tunes with its own loss: a loss comparison on one pruned model, searched once.
    pruned_from: str | None = None
    # The fine-tuning peak rate where it differs from the shared recipe's: the arms of a study of
    # that rate (option_study.FINETUNE_LR), told apart by their labels.
    finetune_lr: float | None = Field(None, gt=0)

    def epochs(self, suite: Suite) -> int:
        return self.finetune_epochs or suite.finetune.epochs

    def lr(self, suite: Suite) -> float:
        return self.finetune_lr or suite.finetune.optim.lr


class DistillCell(StrictModel):
    dataset: str
    model: str  # the teacher: a parent's model
    student: str  # a registry model, trained from scratch
    loss: Literal["ce", "kd", "dkd"]  # ce: the student alone
    small_input: bool = True


class Suite(StrictModel):
    results: Path
    work: Path
    datasets: dict[str, DataConfig]
    train: FitConfig  # recipe of every parent (epochs come from each parent entry)
    finetune: FitConfig | None = None  # the same fine-tuning recipe for every pruning method
    prune: dict[str, Any] = {}  # PruneConfig fields of every cell (a cell's options override them)
    parents: list[Parent]
    cells: list[Cell] = []
    distill: FitConfig | None = None  # the same recipe for every student, whatever its loss
    kd: KDSettings = KDSettings()
    distill_cells: list[DistillCell] = []
    latency_repeats: int = 50
    # Each parent's own record (method none) beside the cells': `--methods none` then runs the
    # parents alone (the detection suite's take hours and come first).
    parent_records: bool = False

    # A recipe without a rate fine-tunes at rscompress prune's rate, not from scratch's.
    _finetune_rate = field_validator("finetune", mode="before")(with_finetune_rate)

    @model_validator(mode="after")
    def _pruned_from_an_earlier_cell(self) -> Suite:
        for i, cell in enumerate(self.cells):
            earlier = [
                label(c)
                for c in self.cells[:i]
                if (c.dataset, c.model) == (cell.dataset, cell.model)
                and c.budget_metric == cell.budget_metric
                and set(cell.budgets) <= set(c.budgets)
            ]
            if cell.pruned_from is not None and cell.pruned_from not in earlier:
                raise ValueError(
                    f"cell {label(cell)!r}: pruned_from {cell.pruned_from!r} is not an earlier cell of "
                    f"{cell.dataset} {cell.model} with its budgets (those: {earlier})"
                )
        return self

    @model_validator(mode="after")
    def _no_cell_labelled_as_a_parent(self) -> Suite:
        if any(label(c) == UNPRUNED for c in self.cells):
            raise ValueError(f"a cell's label cannot be {UNPRUNED!r}: that is a parent's own record")
        return self

    @model_validator(mode="after")
    def _recipes_given(self) -> Suite:
        if self.cells and self.finetune is None:
            raise ValueError("pruning cells need a `finetune` recipe")
        if self.distill_cells and self.distill is None:
            raise ValueError("distill_cells need a `distill` recipe")
        return self


def load_suite(path: Path) -> Suite:
    return Suite.model_validate(yaml.safe_load(Path(path).read_text()))


def label(cell: Cell) -> str:
    if cell.label:
        return cell.label
    return cell.method + ("-global" if cell.global_pruning else "") + ("" if cell.loss == "ce" else f"-{cell.loss}")


def option_args(options: dict[str, Any]) -> list[str]:
    """A cell's extra PruneConfig fields as the `rscompress prune` options that set them
    (booleans are typer flags: ``--gate-without-bn`` / ``--no-gate-without-bn``, no value)."""
    args: list[str] = []
    for key, value in options.items():
        flag = key.replace("_", "-")
        args += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return args


def _options(suite: Suite, cell: Cell) -> dict[str, Any]:
    return {**suite.prune, **cell.options}


def _distill_label(cell: DistillCell) -> str:
    return f"distill-{cell.loss}"


def _parent_run(suite: Suite, parent: Parent, seed: int) -> Path:
    # bf16 in the name: an fp32 and a bf16 parent of the same seed are different runs.
    out = suite.work / f"{parent.dataset}-{parent.model}-e{parent.epochs}-s{seed}{'-bf16' if parent.bf16 else ''}"
    run = RunDir(out)
    # Only what the suite sets: a rate left unset is then the model's default (a detector's
    # config.DETECTION_LR, not the classifiers' 0.1).
    recipe = suite.train.model_dump(exclude_unset=True)
    if parent.lr is not None:
        recipe.setdefault("optim", {})["lr"] = parent.lr
    train_cfg = TrainConfig(
        **{**recipe, "epochs": parent.epochs, "seed": seed, "model": parent.model, **parent.precision()}
    )
    # A finished parent is reused only if it was made with this recipe: the run dir's name
    # does not hold the rate or the data settings, and a changed suite file must not pass off
    # an old parent as its own. (The data path is compared resolved: a work dir moved to a
    # checkout whose ../shared resolves elsewhere is refused, not reused.)
    api.train(
        suite.datasets[parent.dataset],
        train_cfg,
        out,
        resume=(run.checkpoint_dir / "latest.json").is_file(),
        quiet=True,
        reuse_finished=True,
    )
    return out


def _parent_record(path: Path, parent: Parent, parent_dir: Path, seed: int) -> dict[str, Any]:
    run = RunDir(parent_dir)
    command = ["python", "-m", "benchmarks", "suite", str(path), "--datasets", parent.dataset]
    command += ["--models", parent.model, "--seeds", str(seed), "--methods", UNPRUNED]
    recipe = run.load_config().train
    return {
        **train_record(run, parent.dataset, shlex.join(command)),
        # The settings a parent's recipe is chosen by: the peak rate and the gradient clipping.
        "lr": recipe["optim"]["lr"],
        "clip_grad_norm": recipe.get("clip_grad_norm"),  # absent from run dirs made before it existed
        **_precise_bn(recipe, run.load_metrics()),
        **parent.precision(),
    }


def _precise_bn(recipe: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The plain train batches a detector run recomputed its BatchNorm statistics over before
    val: as its config names them, the detector default where it left them unset, and 0 for a run
    made before the option (its config has no such key: it kept the running statistics)."""
    if metrics.get("task") != "detection":
        return {}
    given = recipe.get("precise_bn_batches", 0)
    return {"precise_bn_batches": DETECTION_PRECISE_BN_BATCHES if given is None else given}


def _child_name(cell_label: str, cell: Cell, budget: float) -> str:
    return f"{cell_label}-{'params' if cell.budget_metric == 'params' else ''}{budget:g}"


def _budget_key(cell: Cell, budget: float) -> dict[str, float]:
    """The record's budget field: target_macs, or target_params for a params cell."""
    return {f"target_{cell.budget_metric}": budget}


def _pruned_from(cell: Cell, parent_dir: Path, budget: float) -> Path | None:
    return parent_dir / _child_name(cell.pruned_from, cell, budget) if cell.pruned_from else None


def _sparse_from(cell: Cell, parent_dir: Path, budget: float, cfg: PruneConfig) -> Path | None:
    """This cell's run at another budget whose sparse training this budget's would repeat step
    for step (api.sparse_from_differences), to prune from instead of training again."""
    if not METHODS[cell.method].sparse_training or cell.pruned_from:
        return None
    others = (parent_dir / _child_name(label(cell), cell, other) for other in cell.budgets if other != budget)
    return next((source for source in others if not api.sparse_from_differences(source, parent_dir, cfg)), None)


def _latency(suite: Suite, parent_dir: Path, child_dir: Path) -> dict[str, float]:
    from rscompress.deploy.latency import measure_bs1, record_fields

    results = measure_bs1([RunDir(parent_dir), RunDir(child_dir)], suite.latency_repeats)
    return record_fields(results, str(child_dir))


def _quality(metrics: dict[str, Any]) -> dict[str, Any]:
    """What a record says of the pruned model's accuracy (records.scores: test mAP for a
    detector, test top-1 and kappa for a classifier, and the val figure that settings are
    chosen on), with its parent's and, where measured, its val top-1 before fine-tuning."""
    names = ("parent_map50", "parent_map") if metrics.get("task") == "detection" else ("parent_top1",)
    before = {k: metrics[k] for k in ("val_top1_before_finetune",) if k in metrics}
    return {**scores(metrics), **{k: metrics[k] for k in names}, **before}


def _onnx_parity(child_dir: Path) -> dict[str, Any]:
    """A pruned detector exported (``RUN/model.onnx``) and checked on its own test images, as
    ``rscompress export`` does: whether parity held, and by how much or why not."""
    try:
        report = export_run(child_dir, overwrite=True)
    except (ParityError, BoxParityError) as err:
        return {"onnx_parity": False, "onnx_parity_error": str(err)}
    assert report.box_parity is not None  # export_run checks a detector's boxes
    return {
        "onnx_parity": True,
        "onnx_max_scaled_diff": report.parity.max_scaled_diff,
        "box_parity": report.box_parity.to_dict(),
    }


def _sparse_phase(metrics: dict[str, Any]) -> dict[str, Any]:
    """A sparse-training cell's share of channels its phase drove to zero and the share it ran
    towards: whether L1RR's controller got there is what decides what the ranking cuts."""
    phase = metrics.get("sparse_training", {})
    if "final_sparsity" not in phase:
        return {}
    return {"sparsity": phase["final_sparsity"], "target_sparsity": phase["config"]["target_sparsity"]}


def _record(
    suite: Suite, cell: Cell, parent: Parent, parent_dir: Path, child_dir: Path, budget: float, seed: int
) -> dict[str, Any]:
    m = RunDir(child_dir).load_metrics()
    recipe = RunDir(child_dir).load_config().train
    options = _options(suite, cell)
    return {
        "dataset": cell.dataset,
        "model": cell.model,
        "method": label(cell),
        "criterion": cell.method,
        "global_pruning": cell.global_pruning,
        "loss": cell.loss,
        **({"options": options} if options else {}),
        "target_macs": None,
        **_budget_key(cell, budget),  # a params cell: target_params instead
        "macs_kept": m["macs_kept"],
        "params_kept": m["params_kept"],
        "macs": m["macs"],
        "params": m["params"],
        **_quality(m),
        **(_onnx_parity(child_dir) if m.get("task") == "detection" else {}),
        **_sparse_phase(m),
        "img_size": m["img_size"],
        "epochs": RunDir(parent_dir).load_metrics()["epochs"],
        "finetune_epochs": m["finetune_epochs"],
        # The rate the run fine-tuned at, as its config says (a finished run dir is reused as is).
        "finetune_lr": recipe["optim"]["lr"],
        **_precise_bn(recipe, m),
        "seed": seed,
        "split": "test",
        **parent.precision(),
        **_latency(suite, parent_dir, child_dir),
        "device": DEVICE,
        "cpu": cpu_name(),
        "commit": git_commit(),
        "command": shlex.join(
            [
                "rscompress",
                "prune",
                str(parent_dir),
                "--method",
                cell.method,
                f"--target-{cell.budget_metric}",
                str(budget),
                *(["--global"] if cell.global_pruning else []),
                "--loss",
                cell.loss,
                "--finetune-epochs",
                str(cell.epochs(suite)),
                "--batch-size",
                str(suite.finetune.batch_size),
                "--lr",
                str(cell.lr(suite)),
                *[f"--{flag.replace('_', '-')}" for flag, on in parent.precision().items() if on],
                # The cell fine-tunes (and searches, trains sparse) with its parent's seed.
                "--seed",
                str(seed),
                *option_args(options),
                *(["--pruned-from", str(source)] if (source := _pruned_from(cell, parent_dir, budget)) else []),
                # relative, as the suite names its run dirs (taken_from is absolute)
                *(
                    ["--sparse-from", os.path.relpath(m["sparse_training"]["taken_from"])]
                    if "taken_from" in m.get("sparse_training", {})
                    else []
                ),
                "--out",
                str(child_dir),
            ]
        ),
    }


def _distill_record(
    suite: Suite, cell: DistillCell, teacher: Parent, teacher_dir: Path, student_dir: Path, seed: int
) -> dict[str, Any]:
    m = RunDir(student_dir).load_metrics()
    return {
        # DESIGN.md: method distill-<loss>, model the student, teacher_* for the teacher (the
        # run's parent: parent_latency_ms_bs1 is the teacher's).
        "dataset": cell.dataset,
        "model": cell.student,
        "method": _distill_label(cell),
        "loss": cell.loss,
        "teacher_model": cell.model,
        "teacher_top1": m["teacher_top1"],
        "top1": m["top1"],
        "kappa": m["kappa"],
        "macs": m["macs"],
        "params": m["params"],
        "teacher_macs": m["teacher_macs"],
        "teacher_params": m["teacher_params"],
        "macs_kept": m["macs"] / m["teacher_macs"],
        "params_kept": m["params"] / m["teacher_params"],
        "img_size": m["img_size"],
        "epochs": m["epochs"],
        "teacher_epochs": RunDir(teacher_dir).load_metrics()["epochs"],
        "seed": seed,
        "split": "test",
        **teacher.precision(),
        **_latency(suite, teacher_dir, student_dir),
        "device": DEVICE,
        "cpu": cpu_name(),
        "commit": git_commit(),
        "command": shlex.join(
            [
                "rscompress",
                "distill",
                "--teacher",
                str(teacher_dir),
                "--student",
                cell.student,
                "--loss",
                cell.loss,
                *(["--small-input"] if cell.small_input else []),
                "--epochs",
                str(m["epochs"]),
                "--seed",
                str(seed),
                "--out",
                str(student_dir),
            ]
        ),
    }


def run_suite(
    path: Path,
    *,
    datasets: list[str] | None = None,
    seeds: list[int] | None = None,
    budgets: list[float] | None = None,
    models: list[str] | None = None,
    methods: list[str] | None = None,
    students: list[str] | None = None,
) -> int:
    """Run every missing cell; returns how many records were appended.

    ``datasets``/``seeds``/``budgets``/``models`` (parent or teacher)/``methods`` (record
    labels, e.g. ``bn-global`` or ``distill-dkd``; ``none``: the parents' own records)/``students``
    (distillation cells only) restrict the run to a slice of the grid (the headline cells first
    on a small machine); the records are the same ones the full run writes, so a later full
    run only adds what is missing.
    """
    suite = load_suite(path)
    git_commit()  # the code this process runs, for every record it appends (records.git_commit)
    for name, wanted, known in (
        ("dataset", datasets, {p.dataset for p in suite.parents}),
        ("seed", seeds, {s for p in suite.parents for s in p.seeds}),
        ("budget", budgets, {b for c in suite.cells for b in c.budgets}),
        ("model", models, {p.model for p in suite.parents}),
        (
            "method",
            methods,
            ({UNPRUNED} if suite.parent_records else set())
            | {label(c) for c in suite.cells}
            | {_distill_label(c) for c in suite.distill_cells},
        ),
        ("student", students, {c.student for c in suite.distill_cells}),
    ):
        if unknown := sorted(set(wanted or ()) - known):
            raise UserError(f"{name} {unknown} is not in {path} (it has {sorted(known)})")
    appended = 0
    parents = [
        p
        for p in suite.parents
        if (datasets is None or p.dataset in datasets) and (models is None or p.model in models)
    ]
    for parent in parents:
        for seed in (s for s in parent.seeds if seeds is None or s in seeds):
            parent_dir = None
            parent_key = {"dataset": parent.dataset, "model": parent.model, "method": UNPRUNED, "seed": seed}
            parent_key |= {"epochs": parent.epochs, "bf16": parent.bf16}
            record_parent = suite.parent_records and (methods is None or UNPRUNED in methods)
            if record_parent and budgets is None and students is None and not has_record(suite.results, parent_key):
                parent_dir = _parent_run(suite, parent, seed)
                append_record(suite.results, _parent_record(path, parent, parent_dir, seed))
                appended += 1
                print(f"done: {parent.dataset} {parent.model} s{seed} parent", flush=True)
            # A student slice is about distillation cells only.
            for cell in (
                c
                for c in suite.cells
                if (c.dataset, c.model) == (parent.dataset, parent.model)
                and (methods is None or label(c) in methods)
                and students is None
            ):
                for budget in (b for b in cell.budgets if budgets is None or b in budgets):
                    key = {
                        "dataset": cell.dataset,
                        "model": cell.model,
                        "method": label(cell),
                        **_budget_key(cell, budget),
                        "seed": seed,
                        "finetune_epochs": cell.epochs(suite),
                    }
                    if has_record(suite.results, key):
                        continue
                    parent_dir = parent_dir or _parent_run(suite, parent, seed)
                    child = parent_dir / _child_name(label(cell), cell, budget)
                    run = RunDir(child)
                    if not run.is_complete():
                        optim = suite.finetune.optim.model_copy(update={"lr": cell.lr(suite)})
                        finetune = suite.finetune.model_copy(
                            update={"seed": seed, "epochs": cell.epochs(suite), "optim": optim, **parent.precision()}
                        )
                        cfg = PruneConfig(
                            method=cell.method,
                            **_budget_key(cell, budget),
                            global_pruning=cell.global_pruning,
                            loss=cell.loss,
                            finetune=finetune,
                            **_options(suite, cell),
                        )
                        # Killed anywhere (sparse phase, after pruning, fine-tuning): continue.
                        api.prune(
                            parent_dir,
                            cfg,
                            child,
                            resume=child.is_dir(),
                            quiet=True,
                            pruned_from=_pruned_from(cell, parent_dir, budget),
                            sparse_from=_sparse_from(cell, parent_dir, budget, cfg),
                        )
                    append_record(suite.results, _record(suite, cell, parent, parent_dir, child, budget, seed))
                    appended += 1
                    print(f"done: {cell.dataset} {cell.model} s{seed} {label(cell)} {budget:g}", flush=True)
            if budgets is not None:
                continue  # a budget slice is about pruning cells only
            for dcell in (
                c
                for c in suite.distill_cells
                if (c.dataset, c.model) == (parent.dataset, parent.model)
                and (methods is None or _distill_label(c) in methods)
                and (students is None or c.student in students)
            ):
                key = {
                    "dataset": dcell.dataset,
                    "model": dcell.student,
                    "method": _distill_label(dcell),
                    "teacher_model": dcell.model,
                    "seed": seed,
                    "epochs": suite.distill.epochs,
                }
                if has_record(suite.results, key):
                    continue
                parent_dir = parent_dir or _parent_run(suite, parent, seed)
                student = parent_dir / f"distill-{dcell.loss}-{dcell.student}"
                if not RunDir(student).is_complete():
                    cfg = DistillConfig(
                        **suite.kd.model_dump(),
                        loss=dcell.loss,
                        small_input=dcell.small_input,
                        fit=suite.distill.model_copy(update={"seed": seed, **parent.precision()}),
                    )
                    api.distill(
                        parent_dir,
                        dcell.student,
                        cfg,
                        student,
                        resume=(RunDir(student).checkpoint_dir / "latest.json").is_file(),
                        quiet=True,
                    )
                append_record(suite.results, _distill_record(suite, dcell, parent, parent_dir, student, seed))
                appended += 1
                print(f"done: {dcell.dataset} {dcell.model} s{seed} distill-{dcell.loss} {dcell.student}", flush=True)
    return appended
