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


def run_steps(recipe: Recipe, quiet: bool = False) -> dict[str, Any]:
    from rscompress import api
    from rscompress.artifacts import INT8_ONNX, RunDir
    from rscompress.deploy.int8 import export_int8_run
    from rscompress.deploy.onnx import export_run

    done: dict[str, Path] = {}

    def ref(name: str) -> Path:
        return done.get(name, Path(name))

    results: dict[str, Any] = {}
    for step in recipe.steps:
        out = recipe.out / step.name
        run = RunDir(out)
        # A finished step is reused if the recipe still says what made it (an error if not);
        # one killed anywhere, sparse training and NAS search included, continues.
        again = {"resume": run.is_started(), "reuse_finished": True, "quiet": quiet}
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
            target = ref(step.export.run)
            onnx_path = target / (INT8_ONNX if step.export.int8 is not None else "model.onnx")
            if onnx_path.is_file():
                results[step.name] = {"skipped": "complete", "path": str(onnx_path)}
            elif step.export.int8 is not None:
                report = export_int8_run(
                    target,
                    cfg=step.export.int8,
                    parity_images=step.export.parity_images,
                    resplit=step.export.resplit,
                )
                results[step.name] = report.to_dict()
            else:
                results[step.name] = export_run(
                    target, n_images=step.export.parity_images, resplit=step.export.resplit
                ).to_dict()
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
