"""The headline numbers through the Python API (issue 32): the suite's se_resnet18 parent and
its l1 model at 10 % of the MACs, trained with ``rsc.train``/``rsc.prune`` on the same images,
split, seed and recipe as ``python -m benchmarks suite benchmarks/suite.yaml`` trains them
through the CLI, compared with the suite's records.

    python -m benchmarks.api_reproduction run --dataset ucmerced --seeds 0 [--threads 1]
    python -m benchmarks.api_reproduction table

Loaders are rscompress's own (``api.train_loader`` and ``PreparedData.eval_batches`` over
``prepare_data``), as a user who wants the CLI's data path in Python builds them; the API does
the rest. One record per
(dataset, seed) in ``results/api_reproduction.jsonl``; ``table`` writes its table beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.records import append_record, cpu_name, git_commit, has_record, read_records
from benchmarks.suite import load_suite

RESULTS = Path("benchmarks/results/api_reproduction.jsonl")
SUITE = Path("benchmarks/suite.yaml")
WORK = Path("benchmarks/work/api_reproduction")
MODEL, METHOD, TARGET, ROUND_TO = "se_resnet18", "l1", 0.1, 8


def run_seed(dataset_name: str, seed: int) -> dict[str, Any]:
    import rscompress as rsc
    from rscompress.api import train_loader
    from rscompress.data.prepare import prepare_data

    suite = load_suite(SUITE)
    parent = next(p for p in suite.parents if (p.dataset, p.model) == (dataset_name, MODEL))
    dataset = suite.datasets[dataset_name]
    data_cfg = dataset.model_copy(update={"path": dataset.path.resolve()})  # the suite's images and split
    data = prepare_data(data_cfg)
    recipe = suite.train.model_copy(update={"seed": seed})
    if suite.finetune is None:
        raise ValueError(f"{SUITE} has no fine-tuning recipe")
    finetune = suite.finetune.model_copy(update={"seed": seed})
    val, test = data.eval_batches(data.val_indices), data.eval_batches(data.test_indices)
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # the model's init, as `rscompress train` seeds it
    model = rsc.create_model(MODEL, len(data.class_names))
    options = recipe.optim.model_dump(exclude={"lr"})
    rsc.train(
        model,
        train_loader(data, data_cfg, recipe),
        val,
        epochs=parent.epochs,
        lr=recipe.optim.lr,
        seed=seed,
        label_smoothing=recipe.label_smoothing,
        mixup_alpha=recipe.mixup_alpha,
        cutmix_alpha=recipe.cutmix_alpha,
        out=WORK / f"{parent.dataset}-{MODEL}-s{seed}",
        resume=True,
        **options,
    )
    parent_top1 = rsc.evaluate(model, test).top1
    example = torch.zeros(1, 3, dataset.img_size, dataset.img_size)
    pruned = rsc.prune(
        model,
        train_loader(data, data_cfg, finetune),
        val,
        example_input=example,
        method=METHOD,
        target_macs=TARGET,
        round_to=ROUND_TO,
        loss="ce",  # the suite's cells fine-tune with cross-entropy alone (suite.yaml)
        finetune_epochs=finetune.epochs,
        lr=finetune.optim.lr,
        seed=seed,
        label_smoothing=finetune.label_smoothing,
        calibration_loader=data.eval_batches(data.train_indices, batch_size=64),
        out=WORK / f"{parent.dataset}-{MODEL}-s{seed}-{METHOD}-{TARGET}",
        resume=True,
        **finetune.optim.model_dump(exclude={"lr"}),
    )
    return {
        "dataset": parent.dataset,
        "model": MODEL,
        "seed": seed,
        "source": "python-api",
        "parent_top1": parent_top1,
        "method": METHOD,
        "target_macs": TARGET,
        "macs_kept": pruned.macs_kept,
        "top1": rsc.evaluate(pruned.model, test).top1,
        "seconds": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "commit": git_commit(),
    }


def table_text(results: Path | None = None) -> str:
    """API records beside the suite's (CLI) records of the same dataset, seed and cell."""
    cli = read_records(Path(load_suite(SUITE).results))
    lines = [
        "| dataset | seed | parent: CLI | parent: API | l1 10 %: CLI | l1 10 %: API |",
        "|---|---|---|---|---|---|",
    ]
    for r in read_records(results or RESULTS):
        same = [
            c
            for c in cli
            if (c["dataset"], c["model"], c["method"], c["seed"], c.get("target_macs"))
            == (r["dataset"], r["model"], r["method"], r["seed"], r["target_macs"])
        ]
        c = same[-1] if same else {}
        shown = [f"{100 * v:.2f}" if v is not None else "–" for v in (c.get("parent_top1"), r["parent_top1"])]
        shown += [f"{100 * v:.2f}" if v is not None else "–" for v in (c.get("top1"), r["top1"])]
        lines.append(f"| {r['dataset']} | {r['seed']} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api_reproduction")
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run")
    run.add_argument("--dataset", required=True, help="a dataset of benchmarks/suite.yaml")
    run.add_argument("--seeds", type=int, nargs="+", default=[0])
    run.add_argument("--threads", type=int, default=1)
    sub.add_parser("table")
    args = parser.parse_args()
    if args.verb == "run":
        torch.set_num_threads(args.threads)
        for seed in args.seeds:
            key = {"dataset": args.dataset, "model": MODEL, "seed": seed, "method": METHOD}
            if has_record(RESULTS, key):
                continue
            append_record(RESULTS, run_seed(args.dataset, seed))
    RESULTS.with_suffix(".md").write_text(table_text())


if __name__ == "__main__":
    main()
