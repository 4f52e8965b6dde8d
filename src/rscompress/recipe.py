"""Recipes: a whole pipeline (train → prune/distill → export → bench) in one YAML file.

Every step writes ``OUT/<step name>/`` and is validated by the same pydantic models as the
CLI. A step whose run dir is complete is skipped and an interrupted one resumes, so running
a recipe again continues where it stopped. Paths are relative to the working directory; a
step refers to an earlier step's run dir by its name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from rscompress.config import (
    DataConfig,
    DistillConfig,
    Int8Config,
    PruneConfig,
    StrictModel,
    TrainConfig,
)
from rscompress.errors import UserError
from rscompress.io_utils import write_json_atomic


class TrainStep(TrainConfig):
    data: DataConfig


class PruneStep(PruneConfig):
    parent: str  # an earlier step's name or a run dir
    pruned_from: str | None = None  # as `prune --pruned-from`: an earlier step's name or a run dir
    sparse_from: str | None = None  # as `prune --sparse-from`: likewise

    @model_validator(mode="after")
    def _method_takes_options(self) -> PruneStep:
        """The method and its options, checked before any step runs."""
        from rscompress.pruning.methods import check_config

        try:
            check_config(self)
        except UserError as err:
            raise ValueError(str(err)) from None
        return self


class DistillStep(DistillConfig):
    teacher: str
    student: str  # a model name, an earlier step's name or a run dir


class ExportStep(StrictModel):
    run: str
    parity_images: int = Field(64, gt=0)
    resplit: bool = False  # as `export --resplit`
    # INT8 (``rscompress export --int8``): RUN/model.int8.onnx, refused past its max_drop.
    int8: Int8Config | None = None


class BenchStep(StrictModel):
    runs: list[str]
    batch_sizes: list[int] = [1, 32]
    threads: list[int] = [1, 2]
    engines: list[str] = ["torch", "onnxruntime"]
    warmup: int = Field(10, ge=0)
    repeats: int = Field(50, gt=0)


STEP_KINDS = ("train", "prune", "distill", "export", "bench")


class Step(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    train: TrainStep | None = None
    prune: PruneStep | None = None
    distill: DistillStep | None = None
    export: ExportStep | None = None
    bench: BenchStep | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"step {self.name!r} needs exactly one of {', '.join(STEP_KINDS)}, got {kinds or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)


class Recipe(StrictModel):
    out: Path
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Recipe:
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"step names must be unique, repeated: {', '.join(dupes)}")
        return self


def load_recipe(path: Path) -> Recipe:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"recipe {path} does not exist") from None
    except OSError as err:  # a folder, unreadable
        raise UserError(f"cannot read recipe {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"recipe {path} is not a YAML text file (not UTF-8)") from None
    except yaml.YAMLError as err:
        raise UserError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"recipe {path}: {where}: {first['msg'].removeprefix('Value error, ')}") from None


def run_recipe(path: Path, quiet: bool = False) -> dict[str, Any]:
    """Run every step of the recipe file in order; returns {step name: its metrics / report}."""
    return run_steps(load_recipe(path), quiet)


def _references(step: Step) -> list[tuple[str, str]]:
    """(field, value) of every run ``step`` starts from: an earlier step's name or a run dir."""
    if step.prune is not None:
        fields = {"parent": step.prune.parent, "pruned_from": step.prune.pruned_from}
        return [(k, v) for k, v in {**fields, "sparse_from": step.prune.sparse_from}.items() if v is not None]
    if step.distill is not None:
        return [("teacher", step.distill.teacher), ("student", step.distill.student)]
    if step.export is not None:
        return [("run", step.export.run)]
    if step.bench is not None:
        return [("runs", r) for r in step.bench.runs]
    return []


def check_references(recipe: Recipe) -> None:
    """Every run a step starts from is an earlier step, a folder already there (a run dir, or
    an earlier step's by its path) or, for a student, a model name; checked before any step
    runs, so a typo is found before hours of training rather than after them."""
    from rscompress.models import is_known_model

    names = [s.name for s in recipe.steps]
    for i, step in enumerate(recipe.steps):
        earlier = names[:i]
        made_before = {(recipe.out / n).resolve() for n in earlier}
        for field, value in _references(step):
            if value in earlier or (field == "student" and is_known_model(value)):
                continue
            if value in names:
                raise UserError(
                    f"recipe step {step.name!r}: {field} {value!r} is a later step; a step uses only earlier ones"
                )
            if Path(value).is_dir() or Path(value).resolve() in made_before:
                continue
            raise UserError(
                f"recipe step {step.name!r}: {field} {value!r} is neither an earlier step nor an existing run dir"
                + (" nor a model name" if field == "student" else "")
            )


def run_steps(recipe: Recipe, quiet: bool = False) -> dict[str, Any]:
    from rscompress import api
    from rscompress.artifacts import RunDir

    check_references(recipe)
    done: dict[str, Path] = {}

    def ref(name: str) -> Path:
        return done.get(name, Path(name))

    results: dict[str, Any] = {}
    for step in recipe.steps:
        out = recipe.out / step.name
        run = RunDir(out)
        # A finished step is reused if the recipe still says what made it (an error if not);
        # one killed anywhere, sparse training and NAS search included, continues.
        again: dict[str, Any] = {"resume": run.is_started(), "reuse_finished": True, "quiet": quiet}
        if step.train is not None:
            train_step = step.train
            train_cfg = TrainConfig(**train_step.model_dump(exclude={"data"}))
            results[step.name] = api.train(train_step.data, train_cfg, out, **again)
        elif step.prune is not None:
            prune_cfg = PruneConfig(**step.prune.model_dump(exclude={"parent", "pruned_from", "sparse_from"}))
            pruned_from, sparse_from = (
                ref(name) if name else None for name in (step.prune.pruned_from, step.prune.sparse_from)
            )
            results[step.name] = api.prune(
                ref(step.prune.parent), prune_cfg, out, pruned_from=pruned_from, sparse_from=sparse_from, **again
            )
        elif step.distill is not None:
            distill_cfg = DistillConfig(**step.distill.model_dump(exclude={"teacher", "student"}))
            student = str(ref(step.distill.student)) if step.distill.student in done else step.distill.student
            results[step.name] = api.distill(ref(step.distill.teacher), student, distill_cfg, out, **again)
        elif step.export is not None:
            results[step.name] = _export_step(step.export, ref(step.export.run), out)
        else:
            assert step.bench is not None  # Step's validator: exactly one kind, and the others are handled above
            results[step.name] = _bench_step(step.bench, [ref(r) for r in step.bench.runs], out)
        done[step.name] = out
    return results


def _bench_step(b: BenchStep, runs: list[Path], out: Path) -> dict[str, Any]:
    """Latency of ``runs`` into ``out/bench.json``, or what a finished step measured."""
    from rscompress.artifacts import RunDir
    from rscompress.deploy.latency import bench_table, measure

    with RunDir(out).owned():
        if (out / "bench.json").is_file():
            return {"skipped": "complete", "rows": json.loads((out / "bench.json").read_text())}
        rows = bench_table(
            measure([RunDir(r).require() for r in runs], b.batch_sizes, b.threads, b.engines, b.warmup, b.repeats)
        )
        write_json_atomic(out / "bench.json", rows)
        return {"rows": rows}


EXPORT_RECORD = "export.json"  # OUT/<export step>/: what the step exported, with which settings


def _export_step(e: ExportStep, target: Path, out: Path) -> dict[str, Any]:
    """Export ``target`` as the step says, or what a finished step with these settings made.

    An export step edited since it ran is redone (its file replaced): the file is made from the
    run dir alone in seconds, and the recipe made it, so nothing of anyone's is lost, whereas a
    refusal would only send the user to delete it by hand. Training steps refuse instead
    (api._open_out_dir): redoing them would throw away their training. A file there that this
    step did not write (a manual `rscompress export`, an older recipe) is refused, as `export`
    refuses to overwrite without --overwrite: its settings are unknown.
    """
    from rscompress.artifacts import INT8_ONNX, RunDir
    from rscompress.deploy.int8 import export_int8_run
    from rscompress.deploy.onnx import export_run

    onnx_path = target / (INT8_ONNX if e.int8 is not None else "model.onnx")
    wanted = {"path": str(onnx_path.resolve()), "settings": e.model_dump(mode="json", exclude={"run"})}
    record_path = out / EXPORT_RECORD
    with RunDir(out).owned():
        record = _read_record(record_path)
        if onnx_path.is_file() or onnx_path.is_symlink():
            if record == wanted:
                return {"skipped": "complete", "path": str(onnx_path)}
            if record is None or record.get("path") != wanted["path"]:
                raise UserError(
                    f"{onnx_path} is there but this recipe's step did not write it ({record_path} says "
                    f"{'nothing' if record is None else 'another file'}); remove it to export it again"
                )
        overwrite = record is not None and record.get("path") == wanted["path"]
        if e.int8 is not None:
            report = export_int8_run(
                target, cfg=e.int8, parity_images=e.parity_images, overwrite=overwrite, resplit=e.resplit
            ).to_dict()
        else:
            report = export_run(target, n_images=e.parity_images, overwrite=overwrite, resplit=e.resplit).to_dict()
        # After the file: a kill between the two leaves the old record, and the next run exports again.
        write_json_atomic(record_path, wanted)
        return report


def _read_record(path: Path) -> dict[str, Any] | None:
    """An export step's record; None where there is none or it is spoilt (its file is then
    taken as not this step's: what made it is unknown)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
