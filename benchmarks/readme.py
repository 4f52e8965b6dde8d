"""``benchmarks/README.md``: a hand-written template whose tables and measured numbers are all
generated from the committed records.

    python -m benchmarks tables      # every table from the records, then benchmarks/README.md

The template (``README.template.md``) holds the prose. Markers in it, HTML comments, are
replaced by what the records say, so no measured number is typed by hand:

``<!-- table: NAME [key=value ...] -->``, on a line of its own
    The command that reproduces the records, then the table made from them (``TABLES``).
``<!-- figure: STAT [CELL ...] [key=value ...] -->``, inside a sentence
    One figure computed from records (``FIGURES``): ``<!-- figure: delta nas@0.35 -->`` reads
    ``+1.67 ± 0.48``.
``<!-- defaults: source=... dataset=... model=... -->``, on a line of its own
    Replaced by nothing: which records later markers read unless they name theirs.
``<!-- note: ... -->``, from a line starting it to one ending it
    A note for whoever edits the template, left out of the README.

A CELL is ``METHOD@TARGET`` (``nas@0.35``: a MACs target; ``nas@params0.15``: a params target)
or ``METHOD`` alone (a student: no target). A ``source`` is a results file without its suffix,
relative to ``benchmarks/results`` (``pruning``, ``superseded/pruning-before-issue-31``). A marker
that names an unknown table or figure, or records that do not exist, is one ``ReadmeError``
naming the template line.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.records import UNPRUNED, read_records
from benchmarks.tables import (
    SCORES,
    by_method,
    markdown,
    plot_stem,
    points,
    points_mean_std,
    reference,
    summarise,
    task_of,
    write_tables,
)

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
DETECTION_SUITES = ("detection.yaml", "detection_parent_lr.yaml", "detection_finetune_lr.yaml")
RESULTS = BENCHMARKS / "results"
TEMPLATE = BENCHMARKS / "README.template.md"
README = BENCHMARKS / "README.md"
COMMAND = "python -m benchmarks tables"
# Superseded suite records that keep their own generated tables and plots (the rest are small).
SUPERSEDED_TABLES = ("pruning-before-issue-31", "distill-before-issue-31")
DATA = "../shared/data"  # where the harness commands find the datasets, as the README writes them

MARKER = re.compile(r"<!--\s*(table|figure|defaults):(.*?)-->")
OPTION = re.compile(r"([a-z_]+)=(.*)")


class ReadmeError(ValueError):
    """A template marker that cannot be filled in; the message says which, where and why."""


@dataclass
class Marker:
    kind: str
    name: str
    args: list[str]
    options: dict[str, str]
    text: str


@dataclass
class Context:
    """What the markers read: the results folder, the defaults so far, the current heading level."""

    results: Path
    defaults: dict[str, str] = field(default_factory=dict)
    level: int = 1
    _records: dict[Path, list[dict[str, Any]]] = field(default_factory=dict)

    def path(self, source: str) -> Path:
        for suffix in (".jsonl", ".json"):
            if (path := self.results / f"{source}{suffix}").is_file():
                return path
        return self.results / f"{source}.jsonl"

    def records(self, source: str, required: bool = True) -> list[dict[str, Any]]:
        path = self.path(source)
        if not path.is_file():
            if required:
                raise ReadmeError(f"no records: {self.name(path)} does not exist")
            return []
        if path not in self._records:
            self._records[path] = read_records(path)
        return self._records[path]

    def json(self, name: str) -> dict[str, Any]:
        path = self.results / name
        if not path.is_file():
            raise ReadmeError(f"no records: {self.name(path)} does not exist")
        return json.loads(path.read_text())

    def name(self, path: Path) -> str:
        """``results/...`` as the README, which sits beside ``results/``, links it."""
        return f"results/{path.relative_to(self.results).as_posix()}"

    def option(self, marker: Marker, key: str, default: str | None = None) -> str:
        value = marker.options.get(key, self.defaults.get(key, default))
        if value is None:
            raise ReadmeError(f"needs {key}=... (or a defaults marker above it)")
        return value


# --- formatting -------------------------------------------------------------------------------


def _share(value: float) -> str:
    return f"{100 * value:.1f} %"


def _commits(records: list[dict[str, Any]]) -> str:
    commits = list(dict.fromkeys(r["commit"][:7] for r in records if r.get("commit")))
    if not commits:
        return ""
    if len(commits) <= 4:
        return f" at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}"
    return f" at {len(commits)} commits, {commits[0]} … {commits[-1]}"


def _provenance(ctx: Context, commands: list[str], sources: list[Path], note: str = "") -> str:
    """The command block that reproduces the records, and which records the table below reads."""
    described = []
    for path in sources:
        if not path.is_file():
            described.append(f"`{ctx.name(path)}` (none yet)")
        elif path.suffix == ".jsonl":
            records = read_records(path)
            noun = "record" if len(records) == 1 else "records"
            described.append(f"`{ctx.name(path)}` ({len(records)} {noun}{_commits(records)})")
        else:
            described.append(f"`{ctx.name(path)}`{_commits([json.loads(path.read_text())])}")
    lines = ["```bash", *commands, "```", f"Records: {', '.join(described)}.{f' {note}' if note else ''}"]
    return "\n".join(lines)


def _nest(text: str, level: int, drop_title: bool = False) -> str:
    """An embedded document's headings moved under a section of ``level`` (its first level
    becomes ``level + 1``); ``drop_title`` leaves out its leading ``# title`` line."""
    lines = text.rstrip("\n").splitlines()
    if drop_title and lines and lines[0].startswith("# "):
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
    levels = [len(m.group(1)) for line in lines if (m := re.match(r"(#+) ", line))]
    if not levels:
        return "\n".join(lines)
    shift = level + 1 - min(levels)
    return "\n".join(
        "#" * (len(m.group(1)) + shift) + line[len(m.group(1)) :] if (m := re.match(r"(#+) ", line)) else line
        for line in lines
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(target: float | None) -> str:
    return "" if target is None else f"{100 * target:g} %"


# --- cells: records of one (dataset, model, method, target) -----------------------------------


def _parse_cell(cell: str) -> tuple[str, str | None, float | None]:
    """``nas@0.35`` -> (nas, macs, 0.35); ``nas@params0.15`` -> (nas, params, 0.15); ``distill-dkd``."""
    method, _, target = cell.partition("@")
    if not target:
        return method, None, None
    metric = "params" if target.startswith("params") else "macs"
    try:
        return method, metric, float(target.removeprefix("params"))
    except ValueError:
        raise ReadmeError(f"cell {cell!r}: the target after @ is a number, or params and a number") from None


def _same(a: float | None, b: float | None) -> bool:
    return (a is None) == (b is None) and (a is None or math.isclose(a, b, abs_tol=1e-9))


FILTERS = ("img_size", "epochs")  # further fields a cell marker may pin (baselines: two sizes)


def select(ctx: Context, marker: Marker, cell: str) -> list[dict[str, Any]]:
    """Records of ``cell`` (``SOURCE:METHOD@TARGET`` names its own source), by seed."""
    source, _, cell = cell.rpartition(":")
    source = source or ctx.option(marker, "source")
    dataset, model = ctx.option(marker, "dataset"), ctx.option(marker, "model")
    method, metric, target = _parse_cell(cell)
    seeds = {int(s) for s in marker.options["seed"].split(",")} if "seed" in marker.options else None
    found = [
        r
        for r in ctx.records(source)
        if (r["dataset"], r["model"], r["method"]) == (dataset, model, method)
        and _same(r.get("target_macs"), target if metric == "macs" else None)
        and _same(r.get("target_params"), target if metric == "params" else None)
        and (seeds is None or r["seed"] in seeds)
        and all(str(r.get(key)) == marker.options[key] for key in FILTERS if key in marker.options)
    ]
    if not found:
        raise ReadmeError(f"no records of {method} {cell.partition('@')[2]} on {dataset}/{model} in {source}")
    return sorted(found, key=lambda r: r["seed"])


# Per record: the value and how to write it (and one per seed, as a list, when seeds are joined).
VALUES: dict[str, tuple[Callable[[dict], float], Callable[[float], str], str]] = {
    "top1": (lambda r: r["top1"], points, ""),
    "delta": (lambda r: r["top1"] - reference(r), lambda v: points(v, True), ""),
    "parent": (reference, points, ""),
    "params_kept": (lambda r: r["params_kept"], lambda v: f"{100 * v:.1f}", " %"),
    "macs_kept": (lambda r: r["macs_kept"], lambda v: f"{100 * v:.1f}", " %"),
    "speedup": (lambda r: r["parent_latency_ms_bs1"] / r["latency_ms_bs1"], lambda v: f"{v:.1f}", "×"),
    "params": (lambda r: r["params"], lambda v: f"{v / 1e6:.1f}", " M"),
    # Share of the channels a sparse-training phase (slim, l1rr) left at zero, and what it aimed at.
    "sparsity": (lambda r: r["sparsity"], lambda v: f"{v:.2f}", ""),
    "target_sparsity": (lambda r: r["target_sparsity"], lambda v: f"{v:.2f}", ""),
}


def _cell_figure(stat: str, mode: str) -> Callable[[Context, Marker], str]:
    value, write, unit = VALUES[stat]

    def figure(ctx: Context, marker: Marker) -> str:
        want = 2 if mode == "gap" else 1
        if len(marker.args) != want:
            raise ReadmeError(f"takes {want} cell{'s' if want > 1 else ''} (METHOD@TARGET)")
        values = [[value(r) for r in select(ctx, marker, cell)] for cell in marker.args]
        if mode == "gap":  # the difference of two cells' means
            difference = statistics.fmean(values[0]) - statistics.fmean(values[1])
            return points(difference, True) if stat in ("top1", "delta", "parent") else write(difference) + unit
        (vs,) = values
        if mode == "seeds":
            return " / ".join(write(v) for v in vs) + unit
        if mode == "range":
            low, high = write(min(vs)), write(max(vs))
            return (low if low == high else f"{low}–{high}") + unit
        if mode == "" and stat in ("top1", "delta"):
            return points_mean_std(vs, signed=stat == "delta")
        return write(statistics.fmean(vs)) + unit

    return figure


def _fewer(ctx: Context, marker: Marker) -> str:
    """How many times fewer params than the parent (teacher): 1 / mean params kept."""
    (cell,) = marker.args or [""]
    return f"{1 / statistics.fmean(r['params_kept'] for r in select(ctx, marker, cell)):.1f}×"


def _seeds_count(ctx: Context, marker: Marker) -> str:
    (cell,) = marker.args or [""]
    return str(len(select(ctx, marker, cell)))


# --- figures from JSON results and record fields --------------------------------------------


def _walk(data: Any, path: str) -> Any:
    """``a/b/0/key=value/c``: keys, list indices, and the one list item whose key has that value."""
    for step in path.split("/"):
        if isinstance(data, list) and (m := OPTION.fullmatch(step)):
            matches = [item for item in data if str(item.get(m.group(1))) == m.group(2)]
            if len(matches) != 1:
                raise ReadmeError(f"{len(matches)} items with {step} in {path}")
            data = matches[0]
        elif isinstance(data, list):
            data = data[int(step)]
        elif isinstance(data, dict) and step in data:
            data = data[step]
        else:
            raise ReadmeError(f"no {step!r} in {path}")
    return data


def _format(value: Any, spec: str) -> str:
    """A Python format spec; one ending in % writes ``12.3 %`` (the README's spacing)."""
    if spec.endswith("%"):
        return f"{100 * value:{spec[:-1] or '.0'}f} %"
    return f"{value:{spec}}" if spec else str(value)


AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "mean": statistics.fmean,
    "min": min,
    "max": max,
    "first": lambda v: v[0],
    "last": lambda v: v[-1],
}


def _json_figure(ctx: Context, marker: Marker) -> str:
    """``json FILE PATH [AGGREGATE] [SPEC]``: a value of a JSON result (a list: one of its
    aggregates), formatted by SPEC."""
    if len(marker.args) < 2:
        raise ReadmeError("takes FILE PATH [mean|min|max|first|last] [FORMAT]")
    name, path, *rest = marker.args
    value = _walk(ctx.json(name), path)
    if rest and rest[0] in AGGREGATES:
        value = AGGREGATES[rest.pop(0)](value)
    return _format(value, rest[0] if rest else "")


def _field_values(ctx: Context, marker: Marker) -> list[Any]:
    if len(marker.args) != 1:
        raise ReadmeError("takes one record field, and filters as key=value")
    filters = {k: v for k, v in marker.options.items() if k not in ("source", "format")}
    records = [
        r for r in ctx.records(ctx.option(marker, "source")) if all(str(r.get(k)) == v for k, v in filters.items())
    ]
    values = sorted({r[marker.args[0]] for r in records if marker.args[0] in r})
    if not values:
        raise ReadmeError(f"no record with {marker.args[0]} where {filters}")
    return values


def _field(ctx: Context, marker: Marker) -> str:
    """``field NAME source=... key=value ...``: the one value the matching records agree on."""
    values = _field_values(ctx, marker)
    if len(values) > 1:
        raise ReadmeError(f"records disagree on {marker.args[0]}: {values}")
    return _format(values[0], marker.options.get("format", ",d" if isinstance(values[0], int) else ""))


def _image_points(ctx: Context, marker: Marker) -> str:
    """``image-points source=... dataset=...``: what one test image is worth, in points."""
    marker = Marker(marker.kind, marker.name, ["n_test"], marker.options, marker.text)
    (n_test,) = _field_values(ctx, marker)
    return f"{100 / n_test:.2f}"


FIGURES: dict[str, Callable[[Context, Marker], str]] = {
    "json": _json_figure,
    "field": _field,
    "image-points": _image_points,
    "fewer": _fewer,
    "n": _seeds_count,
}
for _stat in VALUES:
    for _mode in ("", "seeds", "range", "gap"):
        FIGURES[f"{_mode}.{_stat}" if _mode else _stat] = _cell_figure(_stat, _mode)
    FIGURES[f"{_stat}.mean"] = _cell_figure(_stat, "mean")


# --- tables -----------------------------------------------------------------------------------

TABLES: dict[str, Callable[[Context, Marker], str]] = {}


def table(name: str) -> Callable:
    def register(fn: Callable[[Context, Marker], str]) -> Callable[[Context, Marker], str]:
        TABLES[name] = fn
        return fn

    return register


def _suite_results(suite: str) -> Path:
    spec = yaml.safe_load((ROOT / suite).read_text())
    return ROOT / spec["results"]


def _suite_source(ctx: Context, suite: str) -> tuple[str, Path]:
    """A suite file and where its records are (under ``ctx.results``)."""
    if not (ROOT / suite).is_file():
        raise ReadmeError(f"no suite file {suite}")
    return suite, ctx.results / _suite_results(suite).name


def _suite_arg(ctx: Context, marker: Marker) -> tuple[str, Path]:
    """The marker's one suite file and where its records are."""
    (suite,) = marker.args or [""]
    return _suite_source(ctx, suite)


@table("suite")
def _suite(ctx: Context, marker: Marker) -> str:
    """``suite benchmarks/suite.yaml [view=pivot|cells]``: the records that suite writes, as
    pivots of the task's score and of the score minus the parent's (``tables.by_method``), or
    one line per cell."""
    suite, results = _suite_arg(ctx, marker)
    head = _provenance(ctx, [f"python -m benchmarks suite {suite}"], [results])
    # The parents' own records (--methods none) have their table: `parents`.
    records = [r for r in ctx.records(results.stem, required=False) if r["method"] != UNPRUNED]
    if not records:
        return head + f"\n\nNo cells yet: the command above writes `{ctx.name(results)}` cell by cell."
    rows = summarise(records)
    name, key = rows[0]["metric"], rows[0]["score_key"]
    detail = f"[`{ctx.name(results.with_suffix('.md'))}`]({ctx.name(results.with_suffix('.md'))})"
    plots = ", ".join(
        f"[{d}]({ctx.name(Path(f'{plot_stem(results.parent, results.stem, d, key)}_macs.png'))})"
        for d in sorted({r["dataset"] for r in records})
    )
    if marker.options.get("view", "pivot") == "cells":
        return f"{head}\n\n{markdown(rows).rstrip()}\n\nPlots of {name} against MACs kept: {plots}."
    return "\n\n".join(
        [
            head,
            f"Test {name} (%), mean ± std over seeds (n seeds):",
            _nest(by_method(rows), ctx.level),
            f"Test {name} minus each seed's own parent's (points):",
            _nest(by_method(rows, "delta"), ctx.level),
            f"Every cell with its params, bs1 speedup and speedup ÷ MACs ratio: {detail}; "
            f"{name} against MACs kept: {plots}.",
        ]
    )


def _parent_order(record: dict[str, Any]) -> tuple:
    return (record["dataset"], record["model"], record["seed"], record["lr"], record.get("clip_grad_norm") or 0)


@table("parents")
def _parents(ctx: Context, marker: Marker) -> str:
    """``parents SUITE.yaml [SUITE.yaml ...]``: each suite's parents as their own records say
    (``--methods none``): rate, gradient clipping, epochs, precision, BatchNorm statistics, the val
    score they were selected on and the test scores, one line per seed. Several suites side by
    side: a recipe's arms, e.g. two peak rates."""
    if not marker.args:
        raise ReadmeError("takes one or more suite files")
    sources = [_suite_source(ctx, suite) for suite in marker.args]
    found = [r for _, results in sources for r in ctx.records(results.stem, required=False)]
    records = [r for r in found if r["method"] == UNPRUNED]
    commands = [f"python -m benchmarks suite {suite} --methods {UNPRUNED}" for suite, _ in sources]
    head = _provenance(ctx, commands, [results for _, results in sources])
    if not records:
        return head + "\n\nNo parent records yet."
    key, _, name = SCORES[task_of(records)]
    # The task's other test scores, as records.scores writes them.
    extra = [k for k in ("map", "map_small", "kappa") if k in records[0]]
    titles = {"map": "test mAP (%)", "map_small": "test mAP small (%)", "kappa": "test kappa"}
    header = ["dataset", "model", "seed", "peak lr", "grad-norm clip", "epochs", "precision", "BN statistics"]
    header += [f"val {name} (%)", f"test {name} (%)", *(titles[k] for k in extra), "commit"]

    def shown(field: str, value: float) -> str:
        if field == "kappa":
            return f"{value:.3f}"
        return "–" if value < 0 else points(value)  # torchmetrics' -1: no object of that size

    rows = [
        [
            r["dataset"],
            r["model"],
            str(r["seed"]),
            f"{r['lr']:g}",
            "–" if r.get("clip_grad_norm") is None else f"{r['clip_grad_norm']:g}",
            str(r["epochs"]),
            "bf16" if r.get("bf16") else "fp32",
            # Records made before --precise-bn-batches name none: those runs kept running averages.
            f"{r['precise_bn_batches']} plain batches" if r.get("precise_bn_batches") else "running",
            points(r[f"val_{key}"]),
            points(r[key]),
            *(shown(k, r[k]) for k in extra),
            r["commit"][:7],
        ]
        for r in sorted(records, key=_parent_order)
    ]
    return head + "\n\n" + _table(header, rows)


@table("pruning-bars")
def _pruning_bars(ctx: Context, marker: Marker) -> str:
    """``pruning-bars benchmarks/<suite>.yaml``: the bars judged on that suite's records
    (``bars.table_text``: issues 4 and 5 for classifiers, 33 for detectors), each open until
    its cells have every seed."""
    from benchmarks.bars import table_text
    from benchmarks.suite import label, load_suite
    from rscompress.models.registry import model_task

    suite_path, results = _suite_arg(ctx, marker)
    planned: dict[str, set[tuple[str, float]]] = defaultdict(set)
    cells = load_suite(ROOT / suite_path).cells
    for cell in cells:
        if cell.budget_metric == "macs":
            planned[cell.dataset] |= {(label(cell), b) for b in cell.budgets}
    tasks = {model_task(cell.model) for cell in cells}
    if len(tasks) != 1:
        raise ReadmeError(f"{suite_path}'s cells are of tasks {sorted(tasks)}: a bars table judges one task's grid")
    return table_text(ctx.records(results.stem, required=False), dict(planned), tasks.pop())


@table("option-study")
def _option_study(ctx: Context, marker: Marker) -> str:
    """``option-study benchmarks/<study>.yaml benchmarks/<suite>.yaml``: the arms of a study of
    one setting (option_study.py), the study's records beside the suite's own cells of that method."""
    from benchmarks.option_study import default_value, settings, studied, table_text
    from benchmarks.suite import load_suite

    if len(marker.args) != 2:
        raise ReadmeError("takes a study file and the suite file it is paired with")
    (study_path, study), (paired_path, paired) = (_suite_source(ctx, path) for path in marker.args)
    spec, suite = load_suite(ROOT / study_path), load_suite(ROOT / paired_path)
    method, option = studied(settings(spec.cells), spec.prune)
    if suite.finetune is None:
        raise ReadmeError(f"{paired_path} has no fine-tuning recipe, so no cells to pair a study with")
    default = default_value(method, option, suite.finetune.optim.lr)
    head = _provenance(ctx, [f"python -m benchmarks suite {study_path}"], [study])
    records = ctx.records(paired.stem, required=False)
    return head + "\n\n" + table_text(records, ctx.records(study.stem, required=False), method, option, default)


def _seeds_arg(seeds: list[int]) -> str:
    return " ".join(str(s) for s in sorted(seeds))


@table("recipe-ablation")
def _recipe_ablation(ctx: Context, marker: Marker) -> str:
    """``recipe-ablation``: ``recipe_ablation.table_text``, each group of records with the
    harness command that writes it."""
    from benchmarks import recipe_ablation

    plain, ours, pruned = (ctx.path(s) for s in ("plain_reference", "recipe", "recipe_prune"))
    commands, split_seeds = [], defaultdict(set)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for r in ctx.records("plain_reference"):
        # target_macs: a parent pruned by Torch-Pruning and fine-tuned (--prune-macs), None: the parent alone.
        key = (r["dataset"], r["variant"], r.get("split", "plain"), r["epochs"], r["img_size"], r["threads"])
        groups[(*key, r.get("target_macs"))].append(r["seed"])
    for key, seeds in groups.items():
        if key[2] == "rscompress":
            split_seeds[key[0]].update(seeds)
    for dataset, seeds in split_seeds.items():
        commands.append(
            f"python -m benchmarks.recipe_ablation splits --data {DATA}/{dataset} --seeds {_seeds_arg(seeds)}"
        )
    for (dataset, variant, split, epochs, img_size, threads, target_macs), seeds in groups.items():
        commands.append(
            f"python -m benchmarks.plain_reference --data {DATA}/{dataset} --seeds {_seeds_arg(seeds)}"
            + (f" --variant {variant}" if variant != "reference" else "")
            + (f" --split-json benchmarks/work/splits/{dataset}-s{{seed}}.json" if split == "rscompress" else "")
            + (f" --epochs {epochs}" if epochs != recipe_ablation.EPOCHS else "")
            + (f" --img-size {img_size}" if img_size != recipe_ablation.IMG_SIZE else "")
            + (f" --threads {threads}" if threads != 2 else "")
            + (f" --prune-macs {target_macs:g}" if target_macs is not None else "")
        )
    runs: dict[tuple, list[int]] = defaultdict(list)
    for r in ctx.records("recipe"):
        runs[(r["dataset"], r["model"], r["variant"], r["threads"])].append(r["seed"])
    for (dataset, model, variant, threads), seeds in runs.items():
        commands.append(
            f"python -m benchmarks.recipe_ablation run --data {DATA}/{dataset} --model {model}"
            + (f" --variant {variant}" if variant != "default" else "")
            + f" --seeds {_seeds_arg(seeds)}"
            + (f" --threads {threads}" if threads != 2 else "")
        )
    prunes: dict[tuple, list[int]] = defaultdict(list)
    for r in ctx.records("recipe_prune", required=False):
        parents = r.get("parent_variant", "default")
        key = (r["dataset"], r["model"], r["method"], r["target_macs"], r["variant"], parents, r["threads"])
        prunes[key].append(r["seed"])
    for (dataset, model, method, target, variant, parents, threads), seeds in prunes.items():
        commands.append(
            f"python -m benchmarks.recipe_ablation prune --data {DATA}/{dataset} --model {model} --method {method}"
            f" --target-macs {target:g}"
            + (f" --variant {variant}" if variant != "default" else "")
            + (f" --parent-variant {parents}" if parents != "default" else "")
            + f" --seeds {_seeds_arg(seeds)}"
            + (f" --threads {threads}" if threads != 2 else "")
        )
    text = recipe_ablation.table_text(plain, ours, pruned)
    return _provenance(ctx, commands, [plain, ours, pruned]) + "\n\n" + _nest(text, ctx.level, drop_title=True)


@table("user-models")
def _user_models(ctx: Context, marker: Marker) -> str:
    """``user-models``: ``user_models.table_text``."""
    from benchmarks import user_models

    path = ctx.path("user_models")
    records = ctx.records("user_models")
    command = "python -m benchmarks.user_models run"
    models, methods = list(dict.fromkeys(r["model"] for r in records)), {r["method"] for r in records}
    if set(models) != set(user_models.MODELS):
        command += " --models " + " ".join(models)
    if methods != set(user_models.METHODS):
        command += " --methods " + " ".join(m for m in user_models.METHODS if m in methods)
    threads = {r["threads"] for r in records}
    if threads != {1}:
        command += f" --threads {max(threads)}"
    return _provenance(ctx, [command], [path]) + "\n\n" + _nest(user_models.table_text(path), ctx.level, True)


@table("api-reproduction")
def _api_reproduction(ctx: Context, marker: Marker) -> str:
    """``api-reproduction``: ``api_reproduction.table_text`` beside the suite's records."""
    from benchmarks import api_reproduction

    path, records = ctx.path("api_reproduction"), ctx.records("api_reproduction")
    commands = [
        f"python -m benchmarks.api_reproduction run --dataset {dataset} --seeds {_seeds_arg(sorted(seeds))}"
        for dataset, seeds in _seeds_by_dataset(records).items()
    ]
    return _provenance(ctx, commands, [path]) + "\n\n" + api_reproduction.table_text(path).rstrip("\n")


def _seeds_by_dataset(records: list[dict[str, Any]]) -> dict[str, set[int]]:
    seeds: dict[str, set[int]] = {}
    for r in records:
        seeds.setdefault(r["dataset"], set()).add(r["seed"])
    return seeds


@table("baselines")
def _baselines(ctx: Context, marker: Marker) -> str:
    """``baselines``: the unpruned parents of ``baselines.jsonl``."""
    records = ctx.records("baselines")
    commands = [
        "python -m benchmarks.baselines" + (f" --seed {s}" if s else "") for s in sorted({r["seed"] for r in records})
    ]
    rows = [
        [
            r["dataset"],
            r["model"],
            str(r["img_size"]),
            str(r["epochs"]),
            str(r["seed"]),
            points(r["top1"]),
            f"{r['kappa']:.3f}",
            f"{r['macs'] / 1e6:.1f}",
            f"{r['params'] / 1e6:.2f}",
        ]
        for r in records
    ]
    header = ["dataset", "model", "px", "epochs", "seed", "test top-1 (%)", "kappa", "MMACs", "params (M)"]
    note = "Each record keeps the `rscompress train` command it ran."
    return _provenance(ctx, commands, [ctx.path("baselines")], note) + "\n\n" + _table(header, rows)


def _parity_group(model: str) -> str:
    if model.startswith("benchmarks/work/parity/"):
        return "registry models trained a few epochs on the bundled sample (`--train`)"
    if model.startswith("benchmarks/work/"):
        return "the benchmark's trained runs (parents, pruned models)"
    if " pruned " in model:
        return "the same, each pruned by the engine (uniform L1)"
    return "registry architectures, random weights"


@table("parity")
def _parity(ctx: Context, marker: Marker) -> str:
    """``parity``: ``parity.json`` summarised by group of models; every model in ``parity.md``."""
    data = ctx.json("parity.json")
    rows = data["rows"]
    trained = [
        m.group(1, 2) for r in rows if (m := re.fullmatch(r"benchmarks/work/parity/trained-(.+)-e(\d+)", r["model"]))
    ]
    command = "python -m benchmarks.parity"
    if data["img_size"] != 64:
        command += f" --img-size {data['img_size']}"
    if rows and rows[0]["n_images"] != 32:
        command += f" --images {rows[0]['n_images']}"
    if trained:
        command += " --train " + " ".join(name for name, _ in trained)
        if trained[0][1] != "3":
            command += f" --train-epochs {trained[0][1]}"
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[_parity_group(r["model"])].append(r)
    body = []
    for group, rs in groups.items():
        diffs, rel, logit = (sorted(r[k] for r in rs) for k in ("max_abs_diff", "relative_diff", "logit_max"))
        failing = [r["model"] for r in rs if not r["ok"]]
        body.append(
            [
                group,
                str(len(rs)),
                f"{diffs[0]:.1e} – {diffs[-1]:.1e}",
                f"{logit[0]:.1f} – {logit[-1]:.1f}",
                f"{rel[0]:.1e} – {rel[-1]:.1e}",
                f"{100 * min(r['top1_agree'] for r in rs):.0f} %",
                f"{len(rs) - len(failing)} of {len(rs)}" + (f" (not: {', '.join(failing)})" if failing else ""),
            ]
        )
    header = [
        "models",
        "n",
        "max abs logit diff",
        "largest abs logit",
        "diff ÷ largest logit",
        "top-1 agree (lowest)",
        "pass the export's check",
    ]
    note = f"Every model: [`{ctx.name(ctx.results / 'parity.md')}`]({ctx.name(ctx.results / 'parity.md')})."
    return _provenance(ctx, [command], [ctx.results / "parity.json"], note) + "\n\n" + _table(header, body)


@table("speedup")
def _speedup(ctx: Context, marker: Marker) -> str:
    """``speedup``: speedup ÷ MACs ratio (and median bs1 ms) per MACs target and way of pruning."""
    data = ctx.json("speedup.json")
    names = {"tp-plain": "plain Torch-Pruning", "ours": "ours", "ours-round8": "ours `--round-to 8`"}
    names["ours-round16"] = "ours `--round-to 16`"
    cells: dict[str, dict[str, dict]] = defaultdict(dict)
    parent = None
    for row in data["rows"]:
        if row["model"] == "parent":
            parent = row
            continue
        way, _, target = row["model"].partition("@")
        cells[target][way] = row
    ways = [w for w in names if any(w in c for c in cells.values())]
    body = [
        [f"{100 * float(t):g} %"]
        + [
            f"{c[w]['efficiency']:.2f} ({c[w]['median_ms']:.2f} ms, {100 * c[w]['macs_kept']:.1f} % kept)"
            if w in c
            else ""
            for w in ways
        ]
        for t, c in cells.items()
    ]
    text = _table(["MACs target", *(names[w] for w in ways)], body)
    if parent:
        text += f"\n\nCell: speedup ÷ MACs ratio (median bs1 latency, MACs kept); parent {parent['median_ms']:.2f} ms."
    if split := data.get("op_time_split"):
        ops = list(dict.fromkeys(op for shares in split.values() for op in shares))
        text += "\n\nShare of ONNX Runtime's kernel time by operator (its profiler):\n\n" + _table(
            ["model", *ops], [[model, *(_share(s.get(op, 0.0)) for op in ops)] for model, s in split.items()]
        )
    note = f"{data['setting']}; CPU {data.get('cpu', 'not recorded')}."
    return _provenance(ctx, [data["command"]], [ctx.results / "speedup.json"], note) + "\n\n" + text


@table("detection-speedup")
def _detection_speedup(ctx: Context, marker: Marker) -> str:
    """``detection-speedup``: each detector's bs1 speedup ÷ MACs ratio at 35 % of its MACs, per rounding."""
    data = ctx.json("detection_speedup.json")
    body = [
        [row["name"], "35 % not reachable within ±1 % at this multiple", "", "", "", ""]
        if "unreachable" in row
        else [
            row["name"],
            f"{row['median_ms']:.1f}",
            f"{row['macs'] / 1e9:.2f}",
            f"{row['speedup']:.2f}",
            f"{row['macs_ratio']:.2f}",
            f"{row['efficiency']:.2f}",
        ]
        for row in data["rows"]
    ]
    text = _table(["model", "bs1 ms", "GMACs", "speedup", "MACs ratio", "speedup ÷ MACs ratio"], body)
    note = f"{data['img_size']} px, random weights, ONNX Runtime, 1 thread; CPU {data.get('cpu', 'not recorded')}."
    if data.get("note"):
        note += f" {data['note']}"
    command = "python -m benchmarks.detection_speedup"
    return _provenance(ctx, [command], [ctx.results / "detection_speedup.json"], note) + "\n\n" + text


@table("detection-bn-statistics")
def _detection_bn_statistics(ctx: Context, marker: Marker) -> str:
    """``detection-bn-statistics``: a trained detector's val / test mAP@0.5 with its saved BatchNorm
    statistics and with them recomputed over plain or augmented train batches."""
    data = ctx.json("detection_bn_statistics.json")
    arms = list(dict.fromkeys(arm for row in data["rows"] for arm in row["map50"]))
    ks = " ".join(arm.split()[1].replace("all", "0") for arm in arms if arm.startswith("plain "))

    def name(row: dict[str, Any]) -> str:
        checkpoint = f" ({Path(row['weights']).parent.name})" if "weights" in row else ""
        return row["run"].removeprefix("benchmarks/work/") + checkpoint

    body = [
        [name(row), split] + [f"{100 * row['map50'][arm][split]:.2f}" if arm in row["map50"] else "" for arm in arms]
        for row in data["rows"]
        for split in ("val", "test")
    ]
    header = ["run", "split", *(f"{arm} batches" if arm != "stored" else "saved statistics" for arm in arms)]
    note = (
        f"mAP@0.5 in %; batches of {data['batch_size']} train images, shuffled; CPU "
        f"{', '.join(sorted({row['cpu'] for row in data['rows']}))}."
    )
    command = "python -m benchmarks.detection_bn_statistics"
    commands = [f"{command} {' '.join(row['run'] for row in data['rows'] if 'weights' not in row)} --batches {ks}"]
    commands += [
        f"{command} {row['run']} --weights {row['weights']} --batches {ks}" for row in data["rows"] if "weights" in row
    ]
    provenance = _provenance(ctx, commands, [ctx.results / "detection_bn_statistics.json"], note)
    return provenance + "\n\n" + _table(header, body)


@table("latency-targets")
def _latency_targets(ctx: Context, marker: Marker) -> str:
    """``latency-targets``: each target speedup against the median of its fresh-process re-measurements."""
    path = ctx.path("latency_targets")
    return _latency_targets_text(ctx, path, ctx.records("latency_targets"))


def _latency_targets_text(ctx: Context, path: Path, records: list[dict[str, Any]]) -> str:
    body = [
        [
            r["parent"],
            f"×{r['target_speedup']:g}",
            f"×{r['speedup_achieved']:.2f}",
            f"{100 * r['error']:+.1f} %",
            f"{100 * r['spread']:.0f} %",
            _share(r["macs_kept"]),
            "yes" if r["within_bar"] else "no",
        ]
        for r in records
    ]
    header = ["parent", "target", "achieved", "error", "spread of 3", "MACs kept", "within ±10 %"]
    commands = list(dict.fromkeys(
        f"python -m benchmarks.latency_targets run {r['parent']} --threads {r['threads']}" for r in records
    ))  # fmt: skip
    return _provenance(ctx, commands, [path]) + "\n\n" + _table(header, body)


@table("int8")
def _int8(ctx: Context, marker: Marker) -> str:
    """``int8``: FP32 against INT8 per run and thread count (a refused check as such)."""
    records = ctx.records("int8")
    body = []
    for r in records:
        accuracy = f"{points(r['top1_fp32'])} → {points(r['top1_int8'])}"
        if r.get("refused"):
            body.append([r["run"], str(r["threads"]), accuracy, f"refused (val −{r['val_drop_points']:.2f})", "", ""])
            continue
        body.append(
            [
                r["run"],
                str(r["threads"]),
                accuracy,
                f"{r['latency_ms_bs1_fp32']:.2f} → {r['latency_ms_bs1_int8']:.2f}",
                f"×{r['speedup_int8_over_fp32']:.2f}",
                f"×{r['speedup_int8_over_parent']:.1f}",
            ]
        )
    header = ["run", "threads", "test top-1 FP32 → INT8", "bs1 ms FP32 → INT8", "INT8 ÷ own FP32", "over FP32 parent"]
    commands = list(dict.fromkeys(f"python -m benchmarks.int8 {r['run']}" for r in records))
    note = f"CPU {records[0]['cpu']}." if records else ""
    return _provenance(ctx, commands, [ctx.path("int8")], note) + "\n\n" + _table(header, body)


def _flags(data: dict[str, Any], defaults: dict[str, Any]) -> str:
    return "".join(
        f" --{key.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in ((k, data[k]) for k in defaults if k in data)
        if value != defaults[key]
    )


@table("train-step")
def _train_step(ctx: Context, marker: Marker) -> str:
    """``train-step [OUT]``: a training step's speedup over fp32 per model and precision/layout,
    from results/OUT.json (train_step.json by default)."""
    name = f"{marker.args[0]}.json" if marker.args else "train_step.json"
    data = ctx.json(name)
    defaults = {"img_size": 64, "batch_size": 64, "rounds": 3, "steps": 3, "out": "train_step"}
    command = "python -m benchmarks.train_step --models " + " ".join(data["models"]) + _flags(data, defaults)
    variants = list(next(iter(data["models"].values())))
    body = [
        [model, *(f"{v[name]['speedup_vs_fp32']:.2f}× ({v[name]['median_s']:.2f} s)" for name in variants)]
        for model, v in data["models"].items()
    ]
    note = f"{data['what']}; CPU {data.get('cpu', 'not recorded')}."
    text = _table(["model", *variants], body) + "\n\nCell: speedup over fp32 (median seconds per step)."
    return _provenance(ctx, [command], [ctx.results / name], note) + "\n\n" + text


@table("phase-step")
def _phase_step(ctx: Context, marker: Marker) -> str:
    """``phase-step``: an epoch of the NAS search / L1RR sparse training, fp32 against bf16."""
    data = ctx.json("phase_step.json")
    defaults = {"img_size": 64, "rounds": 2, "batches": 3}
    command = "python -m benchmarks.phase_step --models " + " ".join(data["models"]) + _flags(data, defaults)
    body = [
        [model, phase, *(f"{v['speedup_vs_fp32']:.2f}× ({v['median_s']:.1f} s)" for v in variants.values())]
        for model, phases in data["models"].items()
        for phase, variants in phases.items()
    ]
    names = list(next(iter(next(iter(data["models"].values())).values())))
    note = f"{data['what']}; CPU {data.get('cpu', 'not recorded')}."
    text = _table(["model", "phase", *names], body) + "\n\nCell: speedup over fp32 (median seconds per epoch)."
    return _provenance(ctx, [command], [ctx.results / "phase_step.json"], note) + "\n\n" + text


def _throughput(
    ctx: Context, name: str, module: str, defaults: dict[str, Any], derived: Callable[[dict], dict[str, Any]]
) -> str:
    """Images/s of two feeds or recipes timed in alternating rounds; ``derived``: settings the
    file implies (the rounds it holds) rather than states."""
    data = ctx.json(f"{name}.json")
    data = {**data, **derived(data)}
    command = f"python -m benchmarks.{module}" + _flags(data, defaults)
    rates = data["images_per_second"]
    body = [
        [feed, f"{data['median_images_per_second'][feed]:.1f}", " / ".join(f"{v:.1f}" for v in rates[feed])]
        for feed in rates
    ]
    note = f"{data['model']}, {data['img_size']} px, batch {data['batch_size']}, {data['threads']} thread(s)"
    note += f"; CPU {data.get('cpu', 'not recorded')}."
    text = _table(["", "median images/s", "each round"], body)
    return _provenance(ctx, [command], [ctx.results / f"{name}.json"], note) + "\n\n" + text


@table("pipeline-throughput")
def _pipeline(ctx: Context, marker: Marker) -> str:
    """``pipeline-throughput``: training images/s fed by the data pipeline against tensors in memory."""
    defaults = {"img_size": 64, "batch_size": 64, "rounds": 3, "model": "resnet18"}
    text = _throughput(
        ctx,
        "pipeline_throughput",
        "pipeline_throughput",
        defaults,
        lambda d: {"rounds": len(d["images_per_second"]["pipeline"])},
    )
    cost = ctx.json("pipeline_throughput.json")["pipeline_cost"]
    return text + f"\n\nThe pipeline's cost: {_share(cost)} of the in-memory rate."


@table("recipe-speed")
def _recipe_speed(ctx: Context, marker: Marker) -> str:
    """``recipe-speed``: training images/s of the recipe before issue 31 against after, and with CutMix."""
    defaults = {"img_size": 64, "batch_size": 64, "rounds": 5, "threads": 2, "model": "resnet18"}
    text = _throughput(
        ctx, "recipe_speed", "recipe_speed", defaults, lambda d: {"rounds": len(d["images_per_second"]["after"])}
    )
    speeds = ctx.json("recipe_speed.json")
    return (
        text
        + f"\n\nAfter ÷ before: {speeds['after_over_before']:.2f}; CutMix ÷ after: {speeds['cutmix_over_after']:.2f}."
    )


@table("teacher-cache")
def _teacher_cache(ctx: Context, marker: Marker) -> str:
    """``teacher-cache``: what a hit of ``--cache-teacher-logits`` saves, and how often lookups hit."""
    data = ctx.json("teacher_cache.json")
    shares = data["hit_share_per_epoch"]
    body = [
        [
            name.replace("_", " "),
            str(len(v)),
            _share(statistics.fmean(v)),
            " / ".join(f"{100 * v[i]:.0f}" for i in range(0, len(v), max(len(v) // 6, 1))),
        ]
        for name, v in shares.items()
    ]
    text = (
        f"A DKD step: {data['step_ms_teacher_run']:.0f} ms with the teacher run, {data['step_ms_cache_hit']:.0f} ms"
        f" from the cache; a hit saves {_share(data['saving_per_hit_step'])} of the step.\n\n"
        + _table(["augmentation", "epochs", "lookups that hit (all epochs)", "hit % by epoch (every few)"], body)
    )
    note = f"Teacher {data['teacher']}, student {data['student']}, {data['img_size']} px, batch {data['batch_size']}."
    return _provenance(ctx, [data["command"]], [ctx.results / "teacher_cache.json"], note) + "\n\n" + text


@table("before-finetune")
def _before_finetune(ctx: Context, marker: Marker) -> str:
    """``before-finetune dataset=D``: val top-1 as pruned / BN re-estimated, test after fine-tuning."""
    dataset = marker.options.get("dataset")
    records = [r for r in ctx.records("before_finetune") if dataset in (None, r["dataset"])]
    if not records:
        raise ReadmeError(f"no before_finetune records of {dataset}")
    targets = sorted({r["target_macs"] for r in records}, reverse=True)
    cell = {(r["method"], r["target_macs"]): r for r in records}
    body = [
        [method]
        + [
            f"{points(c['val_top1_as_pruned'])} / {points(c['val_top1_bn_recalibrated'])} / "
            f"{points(c['test_top1_after_finetune'])}"
            if (c := cell.get((method, t)))
            else ""
            for t in targets
        ]
        for method in sorted({r["method"] for r in records})
    ]
    parents = ", ".join(sorted({r["parent"] for r in records}))
    command = "python -m benchmarks.before_finetune benchmarks/work/suite"
    note = f"Parents: {parents}."
    return (
        _provenance(ctx, [command], [ctx.path("before_finetune")], note)
        + "\n\n"
        + _table(["method", *(_pct(t) for t in targets)], body)
        + "\n\nCell (%): val top-1 as pruned / val top-1 with BN statistics re-estimated / test top-1 after"
        " fine-tuning."
    )


@table("cpus")
def _cpus(ctx: Context, marker: Marker) -> str:
    """``cpus source=A,B``: how many records each CPU wrote."""
    sources = ctx.option(marker, "source").split(",")
    body = []
    for source in sources:
        counts = Counter(r.get("cpu", "not recorded") for r in ctx.records(source))
        body += [[f"`{ctx.name(ctx.path(source))}`", cpu, str(n)] for cpu, n in counts.most_common()]
    return _provenance_of(ctx, marker, [f"{s}:" for s in sources]) + "\n\n" + _table(["records", "CPU", "n"], body)


def _method_label(entry: str) -> str:
    source, _, method = entry.rpartition(":")
    return f"{method} (`{source.rpartition('/')[2]}`)" if source else method


SUPERSEDED_NOTE = (
    "Superseded (section [Superseded records](#superseded-records)): each record keeps the commit and the "
    "`rscompress` command it ran; today's suite does not reproduce them."
)


def _suite_commands(ctx: Context, path: Path) -> list[str]:
    """The suite run(s) that wrote a suite results file: the detection suites for a detection
    file, ``distill.yaml`` for distillation cells (a teacher's loss on a student or a pruned
    model), ``suite.yaml`` for the rest."""
    superseded = path.relative_to(ctx.results).as_posix().startswith("superseded/")
    where = f"   # at the commits of {ctx.name(path)}" if superseded else ""
    if path.stem.startswith("detection"):  # the grid and its two rate studies
        return [f"python -m benchmarks suite benchmarks/{suite}{where}" for suite in DETECTION_SUITES]
    distill = "distill" in path.stem
    kinds = {
        distill or "dkd" in r["method"] or "distill" in r["method"]
        for r in ctx.records(str(path.relative_to(ctx.results).with_suffix("")))
    }
    suites = [f"benchmarks/{'distill' if d else 'suite'}.yaml" for d in sorted(kinds)]
    return [f"python -m benchmarks suite {suite}{where}" for suite in suites]


def _provenance_of(ctx: Context, marker: Marker, entries: list[str]) -> str:
    """The provenance of a table over suite records of one or more sources (``SOURCE:METHOD``)."""
    sources = list(dict.fromkeys(e.rpartition(":")[0] or ctx.option(marker, "source") for e in entries))
    paths = [ctx.path(s) for s in sources]
    commands = [command for path in paths for command in _suite_commands(ctx, path)]
    superseded = any(p.relative_to(ctx.results).as_posix().startswith("superseded/") for p in paths)
    return _provenance(ctx, list(dict.fromkeys(commands)), paths, SUPERSEDED_NOTE if superseded else "")


def _column(dataset: str, target: str, with_dataset: bool) -> str:
    """A pivot column's title: ``35 %``, ``15 % params``, or with its dataset first."""
    if target == "-":
        return dataset
    budget = f"{_pct(float(target[6:]))} params" if target.startswith("params") else _pct(float(target))
    return f"{dataset} {budget}" if with_dataset else budget


@table("pivot")
def _pivot(ctx: Context, marker: Marker) -> str:
    """``pivot methods=A,B,SOURCE:C targets=0.35,0.1 [datasets=D,E] [stat=top1|delta|params_kept|
    macs_kept|speedup] [seeds=1] [best=A,B]``: one row per method, one column per (dataset,
    target); ``seeds=1`` adds each seed's value, ``best`` a row naming the best of those methods
    in each column; top-1 pivots end with the parents' row."""
    methods = ctx.option(marker, "methods").split(",")
    targets = [t for t in ctx.option(marker, "targets", "-").split(",")]
    datasets = (marker.options.get("datasets") or ctx.option(marker, "dataset")).split(",")
    stat = marker.options.get("stat", "top1")
    if stat not in VALUES:
        raise ReadmeError(f"stat={stat}: one of {', '.join(VALUES)}")
    value, write, unit = VALUES[stat]
    columns = [(d, t) for d in datasets for t in targets]

    def records(entry: str, dataset: str, target: str) -> list[dict]:
        source, _, method = entry.rpartition(":")
        cell = method if target == "-" else f"{method}@{target}"
        options = {**marker.options, "dataset": dataset}
        try:
            return select(ctx, Marker(marker.kind, marker.name, [], options, marker.text), f"{source}:{cell}")
        except ReadmeError as missing:
            if str(missing).startswith("no records of"):
                return []
            raise

    def text(rs: list[dict]) -> str:
        vs = [value(r) for r in rs]
        if not vs:
            return ""
        main = points_mean_std(vs, stat == "delta") if stat in ("top1", "delta") else write(statistics.fmean(vs)) + unit
        if marker.options.get("seeds") == "1" and len(vs) > 1:
            main += " (" + " / ".join(f"s{r['seed']} {write(v)}" for r, v in zip(rs, vs, strict=True)) + ")"
        return main

    grid = {(m, c): records(m, *c) for m in methods for c in columns}
    columns = [c for c in columns if any(grid[(m, c)] for m in methods)]  # no records: no column
    grid = {(m, c): rs for (m, c), rs in grid.items() if c in columns}
    header = ["method", *(_column(d, t, len(datasets) > 1) for d, t in columns)]
    body = [[_method_label(m), *(text(grid[(m, c)]) for c in columns)] for m in methods]
    if best := marker.options.get("best"):
        row = ["best of " + ", ".join(best.split(","))]
        for c in columns:
            scored = [(statistics.fmean(value(r) for r in rs), b) for b in best.split(",") if (rs := records(b, *c))]
            row.append(f"{max(scored)[1]} {text(records(max(scored)[1], *c))}" if scored else "")
        body.append(row)
    if stat == "top1":  # the parents' mean; a range where the methods' cells had different parents
        parents = []
        for c in columns:
            means = sorted(
                {points(statistics.fmean(reference(r) for r in rs)) for m in methods if (rs := grid[(m, c)])}
            )
            parents.append(means[0] if len(means) == 1 else f"{means[0]}–{means[-1]} (by method)")
        teacher = any("teacher_top1" in r for rs in grid.values() for r in rs)
        body.append(["teacher" if teacher else "parent", *parents])
    counts = Counter(len(rs) for rs in grid.values() if rs)
    typical = counts.most_common(1)[0][0] if counts else 0
    odd = [(m, c) for (m, c), rs in grid.items() if rs and len(rs) != typical]
    note = ""
    if odd:
        exceptions = "; ".join(f"{_method_label(m)}, {_column(*c, True)}: {len(grid[(m, c)])}" for m, c in odd)
        note = f"\n\n{typical} seeds a cell, except {exceptions}."
    return _provenance_of(ctx, marker, methods) + "\n\n" + _table(header, body) + note


@table("seeds")
def _seeds_table(ctx: Context, marker: Marker) -> str:
    """``seeds methods=A,SOURCE:B targets=0.35,0.1``: one line per record, by method, target, seed."""
    methods = ctx.option(marker, "methods").split(",")
    targets = ctx.option(marker, "targets", "-").split(",")
    body = []
    for entry in methods:
        source, _, method = entry.rpartition(":")
        for target in targets:
            cell = method if target == "-" else f"{method}@{target}"
            try:
                records = select(ctx, marker, f"{source}:{cell}")
            except ReadmeError as missing:
                if str(missing).startswith("no records of"):
                    continue
                raise
            for r in records:
                body.append(
                    [
                        _method_label(entry),
                        "" if target == "-" else target,
                        *_result_cells(r),
                        f"{r['parent_latency_ms_bs1'] / r['latency_ms_bs1']:.1f}×",
                    ]
                )
    if not body:
        raise ReadmeError("no records of any of those cells")
    teacher = "teacher" if any("teacher_top1" in r for r in ctx.records(ctx.option(marker, "source"))) else "parent"
    header = ["method", "target", "seed", "top-1 (%)", f"{teacher} (%)", "Δ (points)", "params kept", "MACs kept"]
    return _provenance_of(ctx, marker, methods) + "\n\n" + _table([*header, "bs1 speedup"], body)


def superseded_reasons(results: Path) -> dict[str, str]:
    """``superseded/README.md``'s sections: ``## FILE.jsonl`` and why those records were set aside."""
    readme = results / "superseded" / "README.md"
    sections = re.split(r"^## +(\S+)\s*$", readme.read_text(), flags=re.MULTILINE)
    return {name: body.strip() for name, body in zip(sections[1::2], sections[2::2], strict=True)}


@table("superseded")
def _superseded(ctx: Context, marker: Marker) -> str:
    """``superseded``: every file of ``results/superseded``, why it was set aside, its records."""
    reasons = superseded_reasons(ctx.results)
    files = sorted(p.name for p in (ctx.results / "superseded").glob("*.jsonl"))
    if missing := [f for f in files if f not in reasons]:
        raise ReadmeError(f"results/superseded/README.md has no '## NAME' section for {', '.join(missing)}")
    if unknown := [f for f in reasons if f not in files]:
        raise ReadmeError(f"results/superseded/README.md has a section for {', '.join(unknown)}, not in the folder")
    parts = []
    heading = "#" * (ctx.level + 1)
    for name in reasons:  # in the README's order
        path = ctx.results / "superseded" / name
        records = read_records(path)
        parts.append(f"{heading} `{name}`\n\n**Superseded**: {reasons[name]}")
        note = "Each record keeps the commit and the `rscompress` command it ran."
        if path.stem in SUPERSEDED_TABLES:
            table_md = path.with_suffix(".md")
            datasets = sorted({r["dataset"] for r in records})
            plots = ", ".join(f"[{d}]({ctx.name(path.parent / f'{path.stem}_{d}_top1_vs_macs.png')})" for d in datasets)
            note += f" Every cell: [`{ctx.name(table_md)}`]({ctx.name(table_md)}); top-1 against MACs kept: {plots}."
            parts.append(_provenance(ctx, _suite_commands(ctx, path), [path], note))
            continue
        if path.stem.startswith("latency_targets"):
            parts.append(_latency_targets_text(ctx, path, records))
            continue
        if path.stem.startswith("user_models"):  # the bring-your-own-model grid, as its own table
            from benchmarks import user_models

            command = ["python -m benchmarks.user_models run"]
            table_md = _nest(user_models.table_text(path), ctx.level + 1, True)
            parts.append(_provenance(ctx, command, [path], note) + "\n\n" + table_md)
            continue
        task = task_of(records)
        # A detector's file: also the val score its rates were chosen on, and the peak rate each
        # record trained (a parent) or fine-tuned at, where it names one.
        chosen = task == "detection"
        body = [
            [
                r["dataset"],
                r["model"],
                r["method"],
                _target_text(r),
                *_result_cells(r),
                *(
                    [points(r["val_map50"]), _g(r.get("lr" if r["method"] == UNPRUNED else "finetune_lr"))]
                    if chosen
                    else []
                ),
                r["commit"][:7],
            ]
            for r in records
        ]
        score = SCORES[task][2]
        header = ["dataset", "model", "method", "target", "seed", score, "parent", "Δ", "params kept", "MACs kept"]
        header += [f"val {score}", "peak lr"] if chosen else []
        parts.append(
            _provenance(ctx, _suite_commands(ctx, path), [path], note) + "\n\n" + _table([*header, "commit"], body)
        )
    return "\n\n".join(parts)


def _result_cells(r: dict[str, Any]) -> list[str]:
    """seed, the record's task score (``SCORES``: top-1, mAP@0.5), its reference's (a pruned
    model's parent, a student's teacher, an unpruned parent itself), the difference, params
    kept, MACs kept."""
    key = SCORES[r.get("task", "classification")][0]
    judged_against = reference(r)
    return [
        str(r["seed"]),
        points(r[key]),
        points(judged_against),
        points(r[key] - judged_against, True),
        _share(r.get("params_kept", 1.0)),
        _share(r.get("macs_kept", 1.0)),
    ]


def _g(value: float | None) -> str:
    """A number as Python's ``g`` writes it; blank when a record does not name it."""
    return "" if value is None else f"{value:g}"


def _target_text(record: dict[str, Any]) -> str:
    if record.get("target_params") is not None:
        return f"params {_pct(record['target_params'])}"
    return _pct(record.get("target_macs"))


# --- the template -----------------------------------------------------------------------------


def _parse(kind: str, body: str) -> Marker:
    try:
        tokens = shlex.split(body)
    except ValueError as bad:
        raise ReadmeError(f"cannot split: {bad}") from None
    if kind == "defaults":
        tokens = ["defaults", *tokens]
    if not tokens:
        raise ReadmeError("names nothing")
    args, options = [], {}
    for token in tokens[1:]:
        if m := OPTION.fullmatch(token):
            options[m.group(1)] = m.group(2)
        else:
            args.append(token)
    return Marker(kind, tokens[0], args, options, f"<!-- {kind}:{body}-->")


def _fill(ctx: Context, marker: Marker) -> str:
    if marker.kind == "defaults":
        if marker.args:
            raise ReadmeError("takes key=value only")
        ctx.defaults.update(marker.options)
        return ""
    known = TABLES if marker.kind == "table" else FIGURES
    if marker.name not in known:
        raise ReadmeError(f"unknown {marker.kind} {marker.name!r}; known: {', '.join(sorted(known))}")
    return known[marker.name](ctx, marker)


def render(results: Path | None = None, template: Path | None = None) -> str:
    """The README: ``template`` with every marker filled in from the records under ``results``."""
    results, template = results or RESULTS, template or TEMPLATE
    ctx = Context(results)
    where = template.relative_to(ROOT).as_posix() if template.is_relative_to(ROOT) else str(template)
    out = [
        f"*Generated by `{COMMAND}` from [`{template.name}`]({template.name}) and the records in "
        "[`results/`](results/). Edit the template, then run the command; a test fails when this file "
        "differs from what it generates.*",
        "",
    ]
    fenced, note = False, False
    for number, line in enumerate(template.read_text().splitlines(), start=1):
        try:
            if note:
                note = "-->" not in line
                continue
            if line.lstrip().startswith("```"):
                fenced = not fenced
            if fenced:
                out.append(line)
                continue
            if line.strip().startswith("<!-- note:"):
                note = "-->" not in line
                continue
            if m := re.match(r"(#+) ", line):
                ctx.level = len(m.group(1))
            whole = MARKER.fullmatch(line.strip())
            if whole and whole.group(1) in ("table", "defaults"):
                filled = _fill(ctx, _parse(*whole.groups()))
                if filled or whole.group(1) == "table":
                    out.append(filled)
                continue

            def figure(m: re.Match) -> str:
                if m.group(1) != "figure":
                    raise ReadmeError(f"a {m.group(1)} marker takes a line of its own")
                return _fill(ctx, _parse(*m.groups()))

            out.append(MARKER.sub(figure, line))
        except ReadmeError as error:
            raise ReadmeError(f"{where}:{number}: {error}") from None
    if note:
        raise ReadmeError(f"{where}: a note marker is never closed (-->)")
    return "\n".join(out).rstrip("\n") + "\n"


def regenerate(results: Path | None = None, template: Path | None = None, readme: Path | None = None) -> list[Path]:
    """Every table from the committed records, then the README: ``python -m benchmarks tables``.
    The README is rendered first, so a bad marker stops it before anything is written."""
    from benchmarks import parity, recipe_ablation, user_models

    results = results or RESULTS
    text = render(results, template)
    written: list[Path] = []
    suites = sorted(BENCHMARKS.glob("*.yaml"))
    sources = [results / _suite_results(s.relative_to(ROOT).as_posix()).name for s in suites]
    sources += [results / "superseded" / f"{stem}.jsonl" for stem in SUPERSEDED_TABLES]
    for source in dict.fromkeys(sources):
        if source.is_file():
            table_md, plots = write_tables(source)
            written += [table_md, *plots]
    ablation = results / "recipe_ablation.md"
    ablation.write_text(
        recipe_ablation.table_text(
            results / "plain_reference.jsonl", results / "recipe.jsonl", results / "recipe_prune.jsonl"
        )
    )
    users = results / "user_models.md"
    users.write_text(user_models.table_text(results / "user_models.jsonl"))
    written += [ablation, users, parity.write_table(results / "parity.json")]
    (readme or README).write_text(text)
    return [*written, readme or README]
