"""Which BatchNorm statistics a trained detector scores best with on val (issue 33; the default of
``--precise-bn-batches``, config.DETECTION_PRECISE_BN_BATCHES).

    python -m benchmarks.detection_bn_statistics RUN [RUN ...] [--batches 4 8 16 0]
    python -m benchmarks.detection_bn_statistics RUN --weights CHECKPOINT.safetensors

Each finished detector run dir (a parent or a pruned, fine-tuned one) is scored on its val and
test splits (mAP@0.5) with the statistics it was saved with (running averages of augmented
training batches), then with them recomputed (engine/batchnorm_statistics.py) over the first K
plain (un-augmented) shuffled train batches for each ``--batches`` K (0: all of them), and over
all augmented train batches, as training draws them. Only the statistics change; the weights
are the run's, or ``--weights``' (a checkpoint of the run's architecture, such as an epoch of a
sparse-training phase). A run measured already is skipped (one row per run and weights: the
command resumes).
Writes benchmarks/results/detection_bn_statistics.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

from benchmarks.records import cpu_name, git_commit
from rscompress.artifacts import RunDir
from rscompress.config import DataConfig
from rscompress.data.detection_loader import DetectionBatches
from rscompress.data.detection_prepare import prepare_detection, split_from_json
from rscompress.engine.batchnorm_statistics import recompute_batchnorm_statistics
from rscompress.engine.detection import Detection
from rscompress.io_utils import write_json_atomic
from rscompress.models.weights import read_state_dict

RESULTS = Path("benchmarks/results/detection_bn_statistics.json")
BATCH_SIZE = 8  # the detection benchmark's training batch


def _scores(model: nn.Module, task: Detection, batches: dict[str, DetectionBatches]) -> dict[str, float]:
    return {split: task.evaluate(model, batches[split], False).map50 for split in ("val", "test")}


def _recomputed(model: nn.Module, task: Detection, batches: DetectionBatches, n_batches: int) -> nn.Module:
    model = copy.deepcopy(model)
    recompute_batchnorm_statistics(model, batches, n_batches, task.forward, lambda x, y: (x, y))
    return model.eval()


def measure(run_path: Path, ks: list[int], weights: Path | None = None) -> dict:
    run = RunDir(run_path).require()
    model, cfg = run.load_model()
    if weights is not None:
        model.load_state_dict(read_state_dict(weights))
    data_cfg = DataConfig.model_validate(cfg.data)
    data = split_from_json(prepare_detection(data_cfg.path, data_cfg.img_size, cache_dir=data_cfg.cache_dir),
                           run.split_path)  # fmt: skip
    seed = int(cfg.train.get("seed", 0))

    def batches(split: str, shuffle: bool = False, augment: bool = False) -> DetectionBatches:
        return DetectionBatches(data, data.split[split], batch_size=BATCH_SIZE, mean=cfg.mean, std=cfg.std,
                                shuffle=shuffle, augment=augment, seed=seed)  # fmt: skip

    task = Detection(data.class_names)
    scored = {"val": batches("val"), "test": batches("test")}
    plain, augmented = batches("train", shuffle=True), batches("train", shuffle=True, augment=True)
    arms = {"stored": _scores(model, task, scored)}
    for k in ks:
        n = k or len(plain)
        arms[f"plain {k or 'all'}"] = _scores(_recomputed(model, task, plain, n), task, scored)
    arms["augmented all"] = _scores(_recomputed(model, task, augmented, len(augmented)), task, scored)
    return {
        "run": str(run_path),
        **({"weights": str(weights)} if weights is not None else {}),
        "dataset": Path(data_cfg.path).name,
        "model": cfg.model,
        "pruned": cfg.architecture is not None,
        "n_train": len(data.split["train"]),
        "n_val": len(data.split["val"]),
        "map50": arms,
        "commit": git_commit(),
        "cpu": cpu_name(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection_bn_statistics")
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 8, 16, 0], help="K plain batches; 0: all")
    parser.add_argument("--weights", type=Path, help="score these weights (.safetensors) instead of the run's")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else []
    weights = None if args.weights is None else str(args.weights)
    for run in args.runs:
        if any(row["run"] == str(run) and row.get("weights") == weights for row in rows):
            print(f"{run}: measured already")
            continue
        rows.append(measure(run, args.batches, args.weights))
        write_json_atomic(RESULTS, {"batch_size": BATCH_SIZE, "commit": git_commit(), "rows": rows})
        print(run, rows[-1]["map50"])


if __name__ == "__main__":
    main()
