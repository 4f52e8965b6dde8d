"""Unpruned baselines (issue: foundation): resnet18 and se_resnet18 trained from scratch.

    python -m benchmarks.baselines [--seed S] [--img-size PX] [--threads N]

Resumable: each cell is a run dir under benchmarks/work/; a finished cell is skipped, an
interrupted one continues with --resume. Records go to benchmarks/results/baselines.jsonl.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks.records import append_record, git_commit, has_record, train_record
from rscompress.artifacts import RunDir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "baselines.jsonl"
WORK = ROOT / "benchmarks" / "work" / "baselines"
DATASETS = {
    "ucmerced": ROOT / "sample" / "ucmerced128",
    "rsscn7": ROOT.parent / "shared" / "data" / "rsscn7",
}
# (dataset, img_size, epochs): 128 px costs 4x the MACs of 64 px, so it gets half the epochs
# to fit the 2-core CPU budget; every record states its epochs.
CELLS = [
    ("ucmerced", 64, 30),
    ("rsscn7", 64, 30),
    ("ucmerced", 128, 15),
]
MODELS = ("resnet18", "se_resnet18")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--img-size", type=int, help="Run only the cells of this input size.")
    parser.add_argument("--threads", type=int, help="torch threads per training run.")
    args = parser.parse_args()
    git_commit()  # the code this process runs, for every record it appends (records.git_commit)
    cells = [c for c in CELLS if args.img_size in (None, c[1])]
    for dataset, img_size, epochs in cells:
        for model in MODELS:
            key = {"dataset": dataset, "model": model, "img_size": img_size, "epochs": epochs, "seed": args.seed}
            if has_record(RESULTS, key):
                continue
            out = WORK / f"{dataset}-{model}-{img_size}px-e{epochs}-s{args.seed}"
            cmd = [
                "rscompress",
                "train",
                "--data",
                str(DATASETS[dataset]),
                "--model",
                model,
                "--img-size",
                str(img_size),
                "--epochs",
                str(epochs),
                "--seed",
                str(args.seed),
                "--batch-size",
                "64",
                "--lr",
                "0.1",
                "--warmup-epochs",
                "2",
                "--label-smoothing",
                "0.1",
                # The defaults when these records were made (before issue 31), now spelled out.
                *("--schedule", "cosine", "--no-nesterov", "--augment-draw", "sample", "--drop-last"),
                *("--cutmix-alpha", "0"),
                "--out",
                str(out),
                "--quiet",
                *(["--threads", str(args.threads)] if args.threads else []),
            ]
            run = RunDir(out)
            if not run.is_complete():
                resume = ["--resume"] if (run.checkpoint_dir / "latest.json").is_file() else []
                print("running:", shlex.join(cmd + resume), flush=True)
                subprocess.run([sys.executable, "-m", "rscompress", *cmd[1:], *resume], check=True)
            # Paths as a user types them from the repo root.
            command = shlex.join(cmd).replace(str(ROOT) + "/", "").replace(str(ROOT.parent) + "/", "../")
            append_record(RESULTS, train_record(run, dataset, command))
            print(f"done: {dataset} {model} {img_size}px", flush=True)


if __name__ == "__main__":
    main()
