"""`rscompress train` against the plain reference loop (issue 31): variants of the recipe, and the table.

    python -m benchmarks.recipe_ablation run --data ../shared/data/ucmerced --model resnet18 --seeds 0 1 2
    python -m benchmarks.recipe_ablation run --data ../shared/data/ucmerced --variant aug-per-sample --seeds 0
    python -m benchmarks.recipe_ablation prune --data ../shared/data/ucmerced --method l1 --target-macs 0.1
    python -m benchmarks.recipe_ablation splits --data ../shared/data/ucmerced --seeds 0 1 2
    python -m benchmarks.recipe_ablation table

``run`` calls the CLI as a user would (``rscompress train --img-size 64 --epochs 60`` plus the
variant's flags, nothing else) and appends one record per finished seed to
``results/recipe.jsonl``; a killed cell resumes from its run dir's checkpoint, a cell with a
record is skipped. ``prune`` prunes the parents so made (``--parent-variant``, ``default``'s
unless given) with the default fine-tuning (``rscompress prune PARENT --method M --target-macs F``, nothing else) into
``results/recipe_prune.jsonl``. ``splits`` writes the split ``run`` makes for each seed to
``benchmarks/work/splits/DATASET-sSEED.json``, for the plain loop's ``--split-json``. ``table`` writes
``results/recipe_ablation.md`` from those records and the
plain loop's (``results/plain_reference.jsonl``, ``benchmarks/plain_reference.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.records import append_record, cpu_name, git_commit, has_record, read_records
from benchmarks.tables import points_mean_std

RESULTS = Path("benchmarks/results")
RECORDS = RESULTS / "recipe.jsonl"
PRUNE_RECORDS = RESULTS / "recipe_prune.jsonl"
PLAIN_RECORDS = RESULTS / "plain_reference.jsonl"
TABLE = RESULTS / "recipe_ablation.md"
WORK = Path("benchmarks/work/recipe")
SPLITS = Path("benchmarks/work/splits")

# Flags on top of `rscompress train --img-size 64 --epochs 60`. "default": the defaults before
# classifiers got CutMix by default (eae7dac), its records made with no flag then; the flag makes
# them so now. "cutmix1.0" gives what the defaults are since then.
VARIANTS: dict[str, list[str]] = {
    "default": ["--cutmix-alpha", "0"],
    # The suite's parent recipe before issue 31.
    "before-issue-31": [
        "--schedule",
        "cosine",
        "--warmup-epochs",
        "2",
        "--no-nesterov",
        "--augment-draw",
        "sample",
        "--drop-last",
    ],
    "cosine-warmup2": ["--schedule", "cosine", "--warmup-epochs", "2"],
    "no-nesterov": ["--no-nesterov"],
    "no-cycle-momentum": ["--no-cycle-momentum"],
    "aug-per-sample": ["--augment-draw", "sample"],
    "drop-last": ["--drop-last"],
    # Additions a modern recipe offers (issue 31 part 3), to be chosen on val.
    "ema0.99": ["--ema-decay", "0.99"],
    "ema0.995": ["--ema-decay", "0.995"],
    "cutmix1.0": ["--cutmix-alpha", "1.0"],
    "mixup0.2": ["--mixup-alpha", "0.2"],
}
IMG_SIZE, EPOCHS = 64, 60
# `rscompress train`'s defaults now, and before CutMix: each is paired with the plain reference.
DEFAULTS_VARIANTS = {"cutmix1.0": "defaults (CutMix)", "default": "defaults before CutMix"}
# Flags on top of `rscompress prune PARENT --method M --target-macs F`: the fine-tuning's peak
# rate against FINETUNE_LR and its loss, chosen on val. "default" adds none: the default loss, DKD
# from the parent (KD from 9cfd645, ce before it, whose records were labelled "default" then).
PRUNE_VARIANTS: dict[str, list[str]] = {
    "default": [],
    "ce": ["--loss", "ce"],
    "ft-lr0.05": ["--loss", "ce", "--lr", "0.05"],
    "ft-lr0.1": ["--loss", "ce", "--lr", "0.1"],
}


def _parent_dir(dataset: str, model: str, variant: str, seed: int) -> Path:
    return WORK / f"{dataset}-{model}-{variant}-s{seed}"


def _rscompress(command: list[str], out: Path) -> dict:
    """Run ``command`` (an rscompress CLI line) into ``out``, resuming a killed run; its metrics."""
    argv = [str(Path(sys.executable).with_name("rscompress")), *command[1:]]
    if (out / "checkpoint").is_dir():
        argv.append("--resume")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads((out / "metrics.json").read_text())


def _train_command(data: Path, model: str, variant: str, seed: int, threads: int, out: Path) -> list[str]:
    return [
        "rscompress",
        "train",
        "--data",
        str(data),
        "--model",
        model,
        "--img-size",
        str(IMG_SIZE),
        "--epochs",
        str(EPOCHS),
        "--seed",
        str(seed),
        "--split-seed",
        str(seed),
        *VARIANTS[variant],
        "--threads",
        str(threads),
        "--out",
        str(out),
        "--quiet",
        "--json",
    ]


def run_cell(data: Path, model: str, variant: str, seed: int, threads: int) -> None:
    dataset = data.resolve().name
    key = {"dataset": dataset, "model": model, "variant": variant, "seed": seed, "epochs": EPOCHS, "img_size": IMG_SIZE}
    if has_record(RECORDS, key):
        print(f"{dataset} {model} {variant} seed {seed}: has a record")
        return
    out = _parent_dir(dataset, model, variant, seed)
    command = _train_command(data, model, variant, seed, threads, out)
    metrics = _rscompress(command, out)
    append_record(
        RECORDS,
        {
            "source": "rscompress",
            **key,
            "split_seed": seed,
            "val_top1": metrics["val"]["top1"],
            "top1": metrics["top1"],
            "best_epoch": metrics["best_epoch"],
            "train_images_per_second": metrics["timings"]["train_images_per_second"],
            "threads": threads,
            "cpu": cpu_name(),
            "commit": git_commit(),
            "command": " ".join(command),
        },
    )
    print(f"{dataset} {model} {variant} seed {seed}: val {metrics['val']['top1']:.4f} test {metrics['top1']:.4f}")


def prune_cell(
    data: Path,
    model: str,
    method: str,
    target_macs: float,
    variant: str,
    seed: int,
    threads: int,
    train_parent: bool,
    parent_variant: str = "default",
) -> None:
    """``variant``: the fine-tuning's flags (PRUNE_VARIANTS); ``parent_variant``: the parent's
    (VARIANTS), named in the record unless "default", as no record before it was."""
    dataset = data.resolve().name
    key = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "target_macs": target_macs,
        "variant": variant,
        "seed": seed,
        **({} if parent_variant == "default" else {"parent_variant": parent_variant}),
    }
    name = f"{dataset} {model} {method} {target_macs} {variant} seed {seed} (parent {parent_variant})"
    if has_record(PRUNE_RECORDS, key):
        print(f"{name}: has a record")
        return
    parent = _parent_dir(dataset, model, parent_variant, seed)
    if not (parent / "metrics.json").is_file():
        if not train_parent:
            raise SystemExit(
                f"no finished parent at {parent}: run `run --model {model} --seeds {seed}` first, "
                "or give --train-parent (its run dir is gone where its record is kept)"
            )
        # Trained again as `run` made it; the prune record keeps the parent's test top-1 it used.
        _rscompress(_train_command(data, model, parent_variant, seed, threads, parent), parent)
    out = (
        WORK / f"{parent.name}-{method}-{target_macs:g}"
        if variant == "default"
        else WORK / f"{parent.name}-{method}-{target_macs:g}-{variant}"
    )
    command = [
        "rscompress",
        "prune",
        str(parent),
        "--method",
        method,
        "--target-macs",
        str(target_macs),
        *PRUNE_VARIANTS[variant],
        "--threads",
        str(threads),
        "--out",
        str(out),
        "--quiet",
        "--json",
    ]
    metrics = _rscompress(command, out)
    append_record(
        PRUNE_RECORDS,
        {
            "source": "rscompress",
            **key,
            "macs_kept": metrics["macs_kept"],
            "params_kept": metrics["params_kept"],
            "val_top1": metrics["val"]["top1"],
            "top1": metrics["top1"],
            "parent_top1": metrics["parent_top1"],
            "finetune_epochs": metrics["epochs"],
            "threads": threads,
            "cpu": cpu_name(),
            "commit": git_commit(),
            "command": " ".join(command),
        },
    )
    print(f"{name}: val {metrics['val']['top1']:.4f} test {metrics['top1']:.4f} (parent {metrics['parent_top1']:.4f})")


def _split(record: dict) -> str:
    """Whose split a record was trained on: rscompress's, or the plain loop's own."""
    return "rscompress" if record.get("source") == "rscompress" else record.get("split", "plain")


def table_text(plain: Path | None = None, recipe: Path | None = None, pruned_records: Path | None = None) -> str:
    """One row per (dataset, model, source, split, variant): val and test top-1 over seeds, and
    Δ val against the same source's reference row on the same split and the seeds both have;
    then rscompress's default against the plain reference where both ran on the same split.
    Records from ``PLAIN_RECORDS``, ``RECORDS`` and ``PRUNE_RECORDS`` unless given."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    pruned: dict[tuple, list[dict]] = defaultdict(list)
    for record in read_records(plain or PLAIN_RECORDS) + read_records(recipe or RECORDS):
        if record["epochs"] != EPOCHS or record["img_size"] != IMG_SIZE:
            continue
        if "target_macs" in record:  # the plain loop's parent pruned by Torch-Pruning
            key = (
                record["dataset"],
                record["model"],
                record["method"],
                record["target_macs"],
                "plain loop",
                "reference",
            )
            pruned[key].append(record)
            continue
        source = record.get("source", "plain-reference")
        groups[(record["dataset"], record["model"], source, _split(record), record["variant"])][record["seed"]] = record
    lines = [
        "# `rscompress train` against the plain reference loop (issue 31)",
        "",
        f"{IMG_SIZE} px, {EPOCHS} epochs, split seed = seed. Top-1 in %, mean ± std over seeds. split: whose",
        "seeded 70/10/20 split (rscompress's keeps exact duplicates together; the plain loop's own does not).",
        "Δ val: the row's val top-1 minus its source's baseline row (plain loop: `reference`; rscompress:",
        "`default`) on the same split and the seeds both have. Generated by",
        "`python -m benchmarks.recipe_ablation table`; records in `recipe.jsonl` and `plain_reference.jsonl`.",
        "",
        "| dataset | model | source | split | variant | seeds | val top-1 | Δ val | test top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, model, source, split, variant), by_seed in sorted(groups.items()):
        base = groups.get(
            (dataset, model, source, split, "reference" if source == "plain-reference" else "default"), {}
        )
        shared = sorted(set(by_seed) & set(base))
        delta = ""
        if shared and base is not by_seed:
            diffs = [by_seed[s]["val_top1"] - base[s]["val_top1"] for s in shared]
            delta = f"{100 * statistics.mean(diffs):+.2f} ({len(shared)})"
        seeds = sorted(by_seed)
        lines.append(
            f"| {dataset} | {model} | {source} | {split} | {variant} | {','.join(map(str, seeds))} | "
            f"{points_mean_std([by_seed[s]['val_top1'] for s in seeds])} | {delta} | "
            f"{points_mean_std([by_seed[s]['top1'] for s in seeds])} |"
        )
    paired = []
    for (dataset, model, source, _, variant), ours in sorted(groups.items()):
        plain = groups.get((dataset, "resnet18", "plain-reference", "rscompress", "reference"), {})
        seeds = sorted(set(ours) & set(plain))
        if source != "rscompress" or variant not in DEFAULTS_VARIANTS or not seeds:
            continue
        paired.append(
            f"| {dataset} | {model} | {DEFAULTS_VARIANTS[variant]} | {','.join(map(str, seeds))} | "
            f"{points_mean_std([plain[s]['top1'] for s in seeds])} | "
            f"{points_mean_std([ours[s]['top1'] for s in seeds])} | "
            f"{100 * statistics.mean(ours[s]['val_top1'] - plain[s]['val_top1'] for s in seeds):+.2f} | "
            f"{100 * statistics.mean(ours[s]['top1'] - plain[s]['top1'] for s in seeds):+.2f} |"
        )
    if paired:
        lines += [
            "",
            "## `rscompress train` (defaults) against the plain reference (resnet18), same split and seeds",
            "",
            "| dataset | rscompress model | recipe | seeds | plain test top-1 | rscompress test top-1 "
            "| Δ val | Δ test |",
            "|---|---|---|---|---|---|---|---|",
            *paired,
        ]
    for record in read_records(pruned_records or PRUNE_RECORDS):
        parents = record.get("parent_variant", "default")
        pruned[
            (record["dataset"], record["model"], record["method"], record["target_macs"], record["variant"], parents)
        ].append(record)
    if pruned:
        lines += [
            "",
            "## Pruned from rscompress's parents by `rscompress prune`, and the plain loop's by Torch-Pruning",
            "",
            "Fine-tuning: `default` = `rscompress prune`'s defaults (DKD from the parent since af57a58), `ce` =",
            "cross-entropy alone (the default before 9cfd645), else ce at the peak rate named; `plain loop`:",
            "`tp-l1` is Torch-Pruning's MetaPruner (L1, uniform, ratio bisected to the MACs) on the plain",
            "loop's parents on rscompress's split, fine-tuned by the plain loop (OneCycle, peak 0.02, 20 epochs).",
            "A row's parents are those its records were pruned from: the `default` rows' were trained again",
            "(`prune --train-parent`, same command and seed) on another CPU after the first ones' run dirs",
            "were gone, so their parents' column differs from the other rows'. parents: the variant the",
            "parents were trained by (the table above), the plain loop's `reference` for `tp-l1`.",
            "",
            "| dataset | model | method | target MACs | parents | fine-tuning | seeds | MACs kept | val top-1 | "
            "test top-1 | parents' test top-1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (dataset, model, method, target, variant, parents), records in sorted(pruned.items()):
            records.sort(key=lambda r: r["seed"])
            lines.append(
                f"| {dataset} | {model} | {method} | {100 * target:g} % | {parents} | {variant} | "
                f"{','.join(str(r['seed']) for r in records)} | "
                f"{100 * statistics.mean(r['macs_kept'] for r in records):.2f} % | "
                f"{points_mean_std([r['val_top1'] for r in records])} | "
                f"{points_mean_std([r['top1'] for r in records])} | "
                f"{points_mean_std([r['parent_top1'] for r in records])} |"
            )
    return "\n".join(lines) + "\n"


def write_table() -> Path:
    """``TABLE`` from the records (``table_text``)."""
    TABLE.write_text(table_text())
    return TABLE


def write_split(data: Path, seed: int) -> Path:
    """The split ``rscompress train --data DATA --seed S --split-seed S`` makes, as its split.json."""
    from rscompress.config import DataConfig
    from rscompress.data.prepare import prepare_data

    out = SPLITS / f"{data.resolve().name}-s{seed}.json"
    prepare_data(DataConfig(path=data, img_size=IMG_SIZE, split_seed=seed)).split.to_json(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe_ablation", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="train the missing cells, one record each")
    run.add_argument("--data", type=Path, required=True, help="class-folder dataset root")
    run.add_argument("--model", default="resnet18")
    run.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run.add_argument("--threads", type=int, default=2)
    prune = sub.add_parser(
        "prune", help="prune a variant's parents (default: `default`'s) with the default fine-tuning"
    )
    prune.add_argument("--data", type=Path, required=True, help="the parents' dataset root")
    prune.add_argument("--model", default="resnet18")
    prune.add_argument("--method", default="l1")
    prune.add_argument("--target-macs", type=float, default=0.1)
    prune.add_argument("--variant", choices=sorted(PRUNE_VARIANTS), default="default", help="the fine-tuning's")
    prune.add_argument("--parent-variant", choices=sorted(VARIANTS), default="default", help="the parents'")
    prune.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    prune.add_argument("--threads", type=int, default=2)
    prune.add_argument(
        "--train-parent", action="store_true", help="train a missing parent first (as `run` does, no new record)"
    )
    splits = sub.add_parser("splits", help=f"write rscompress's split of each seed under {SPLITS}")
    splits.add_argument("--data", type=Path, required=True, help="class-folder dataset root")
    splits.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sub.add_parser("table", help=f"write {TABLE}")
    args = parser.parse_args()
    if args.verb == "splits":
        for seed in args.seeds:
            print(f"wrote {write_split(args.data, seed)}")
        return
    if args.verb in ("run", "prune"):
        if not args.data.is_dir():
            parser.error(f"--data {args.data} is not a folder")
        git_commit()  # the records name the code this process started with
        for seed in args.seeds:
            if args.verb == "run":
                run_cell(args.data, args.model, args.variant, seed, args.threads)
            else:
                prune_cell(
                    args.data,
                    args.model,
                    args.method,
                    args.target_macs,
                    args.variant,
                    seed,
                    args.threads,
                    args.train_parent,
                    args.parent_variant,
                )
    print(f"wrote {write_table()}")


if __name__ == "__main__":
    main()
