"""Where do pruning criteria separate? Validation top-1 of each pruned model *before* fine-tuning.

    python -m benchmarks.before_finetune benchmarks/work/suite   # → results/before_finetune.jsonl

For every finished pruned run under the work dir (its ``pruned.safetensors``: the model right
after pruning), validation top-1 (a) as pruned and (b) after re-estimating the BatchNorm
running statistics on the training images (forward passes only, no weight changes, as in
EagleEye's adaptive BN). A criterion that keeps the useful channels should show it in (b);
(a) mostly measures how stale the BN statistics are once a layer's inputs lost channels.
Validation split only: this is a diagnostic for choosing settings, not a result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from benchmarks.records import append_record, has_record
from rscompress.artifacts import RunDir
from rscompress.config import DataConfig
from rscompress.data.prepare import prepare_data
from rscompress.engine.metrics import evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "before_finetune.jsonl"


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> nn.Module:
    """BN running statistics = their cumulative average over ``batches``; eval mode after."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for images, _ in batches:
        model(images)
    return model.eval()


def measure(child: Path) -> dict:
    run = RunDir(child)
    config = run.load_config()
    data = prepare_data(DataConfig.model_validate(config.data), run.split_path)
    model, _ = run.load_model(weights=run.pruned_weights_path)
    val = data.eval_batches(data.val_indices)
    as_pruned = evaluate(model.eval(), val, len(data.class_names)).top1
    recalibrated = evaluate(
        recalibrate_bn(model, data.eval_batches(data.train_indices)), val, len(data.class_names)
    ).top1
    prune_params = config.method_params or {}
    return {
        "run": str(child),
        "dataset": Path(config.data["path"]).name,
        "parent": Path(config.parent).name,
        "method": child.name.rsplit("-", 1)[0],
        "target_macs": prune_params.get("target_macs"),
        "val_top1_as_pruned": as_pruned,
        "val_top1_bn_recalibrated": recalibrated,
        "test_top1_after_finetune": run.load_metrics()["top1"],
    }


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("work", type=Path)
    args.add_argument("--threads", type=int, default=1)
    a = args.parse_args()
    torch.set_num_threads(a.threads)
    for pruned in sorted(a.work.glob("*/*/pruned.safetensors")):
        child = pruned.parent
        if not RunDir(child).is_complete() or has_record(RESULTS, {"run": str(child)}):
            continue
        record = measure(child)
        append_record(RESULTS, record)
        print(
            f"{record['parent']}/{child.name}: as pruned {record['val_top1_as_pruned']:.3f}, "
            f"BN recalibrated {record['val_top1_bn_recalibrated']:.3f}, "
            f"after fine-tuning (test) {record['test_top1_after_finetune']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
