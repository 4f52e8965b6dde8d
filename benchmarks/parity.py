"""ONNX parity of every registry architecture, each one pruned by the engine, and every
trained benchmark run (issue 7).

    python -m benchmarks.parity [--img-size 64] [--images 32] [--train resnet50 ...]
    # → benchmarks/results/parity.{json,md}

Registry models get random weights (training 19 models is not the point) with every
BatchNorm's running statistics from train-mode passes over real bundled UC Merced images, so
an exporter that dropped or mis-folded a BN would show. Float32 error grows with the logits'
magnitude, which random weights leave arbitrary (10³ and more), so the classifier is scaled to
make the largest |logit| 10, the size trained models here produce (the trained runs' own scale
is recorded next to theirs). Trained runs (``benchmarks/work/**/model.safetensors``) are
exported as the CLI does, on their own test images; ``--train MODEL ...`` first trains those
registry models a few epochs on the bundled sample (a run dir in the work dir, resumable), so
they are measured with trained weights too. Parity: ``check_parity`` (ONNX Runtime one
image at a time and as one batch vs PyTorch): max |logit difference| and top-1 agreement.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.records import DEVICE, git_commit
from rscompress import api
from rscompress.artifacts import RunDir
from rscompress.config import DataConfig, TrainConfig
from rscompress.data.datasets import decode_image, scan_folder
from rscompress.data.transforms import normalize_batch
from rscompress.deploy.onnx import (
    ParityError,
    ParityReport,
    check_parity,
    export_onnx,
    export_run,
    parity_images,
)
from rscompress.models import count_macs_params, create_model, list_models
from rscompress.pruning import prune

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample" / "ucmerced128"
OUT = ROOT / "benchmarks" / "results" / "parity.json"
PRUNE_RATIO = 0.5  # uniform L1: odd per-layer channel counts, the hard case for an exporter
LOGIT_SCALE = 10.0


def real_images(n: int, img_size: int) -> torch.Tensor:
    """``n`` bundled images spread over the classes, resized, normalised (N×3×S×S float32)."""
    index = scan_folder(SAMPLE)
    picks = np.linspace(0, len(index.files) - 1, n).round().astype(int)
    batch = torch.from_numpy(np.stack([decode_image(SAMPLE / index.files[i]) for i in picks]))
    x = normalize_batch(batch, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return nn.functional.interpolate(x, size=img_size, mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def calibrate_bn(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Running statistics = the cumulative average over ``images`` (momentum None); eval mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for chunk in images.split(8):
        model(chunk)
    return model.eval()


@torch.no_grad()
def scale_logits(model: nn.Module, images: torch.Tensor, largest: float = LOGIT_SCALE) -> nn.Module:
    """Scale the last Linear so the largest |logit| over ``images`` is ``largest``."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    factor = largest / model(images).abs().max().item()
    head.weight.mul_(factor)
    head.bias.mul_(factor)
    return model


def _row(name: str, report: ParityReport, logit_max: float, macs: int, params: int) -> dict:
    return {
        "model": name,
        "max_abs_diff": report.max_abs_diff,
        "top1_agree": report.top1_agree,
        "ok": report.ok,
        "logit_max": logit_max,
        "relative_diff": report.max_abs_diff / logit_max,
        "n_images": report.n_images,
        "batch_sizes": list(report.batch_sizes),
        "macs": macs,
        "params": params,
    }


def measure(name: str, model: nn.Module, images: torch.Tensor, img_size: int, tmp: Path) -> dict:
    model = scale_logits(calibrate_bn(model, images), images)
    path = export_onnx(model, img_size, tmp / "model.onnx")
    try:
        report = check_parity(model, path, images)
    except ParityError as failed:  # a figure to report, not a reason to stop
        report = failed.report
    return _row(name, report, LOGIT_SCALE, *count_macs_params(model, img_size))


def measure_run(run_dir: Path, tmp: Path) -> dict:
    run = RunDir(run_dir)
    model, config = run.load_model()
    try:
        export = export_run(run, out=tmp / "model.onnx", n_images=32)
        report = export.parity
    except ParityError as failed:
        report = failed.report
    images, _ = parity_images(run, config, 32, None)
    with torch.no_grad():
        logit_max = model.eval()(images).abs().max().item()
    return _row(str(run_dir.relative_to(ROOT)), report, logit_max, *count_macs_params(model, config.img_size))


def markdown(rows: list[dict]) -> str:
    """One line per measured model: its parity figures."""
    lines = [
        "| model | max abs logit diff | max abs logit | diff / max logit | top-1 agree | passes export's check |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['max_abs_diff']:.2e} | {r['logit_max']:.1f} | {r['relative_diff']:.1e} "
        f"| {100 * r['top1_agree']:.0f} % | {'yes' if r['ok'] else 'no'} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def write_table(results: Path = OUT) -> Path:
    """``parity.md`` beside ``results`` (``parity.json``), from its rows."""
    table = results.with_suffix(".md")
    table.write_text(markdown(json.loads(results.read_text())["rows"]))
    return table


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--img-size", type=int, default=64)
    args.add_argument("--images", type=int, default=32)
    args.add_argument("--train", nargs="*", default=[], help="registry models to train briefly, then measure")
    args.add_argument("--train-epochs", type=int, default=3)
    args.add_argument("--tmp", type=Path, default=ROOT / "benchmarks" / "work" / "parity")
    a = args.parse_args()
    for name in a.train:  # their run dirs land in the work dir, where the glob below finds them
        out = a.tmp / f"trained-{name}-e{a.train_epochs}"
        if not RunDir(out).is_complete():
            api.train(
                DataConfig(path=SAMPLE, img_size=a.img_size),
                TrainConfig(model=name, epochs=a.train_epochs),
                out,
                resume=(RunDir(out).checkpoint_dir / "latest.json").is_file(),
                quiet=True,
            )
    a.tmp.mkdir(parents=True, exist_ok=True)
    images = real_images(a.images, a.img_size)
    rows = []
    for name in list_models(task="classification"):
        torch.manual_seed(0)
        rows.append(measure(name, create_model(name, 21), images, a.img_size, a.tmp))
        pruned = create_model(name, 21)
        prune(pruned, "l1", images[:1], ratio=PRUNE_RATIO)
        rows.append(measure(f"{name} pruned l1 {PRUNE_RATIO:g}", pruned, images, a.img_size, a.tmp))
        print(f"{name}: {rows[-2]['max_abs_diff']:.2e} / pruned {rows[-1]['max_abs_diff']:.2e}", flush=True)
    for weights in sorted((ROOT / "benchmarks" / "work").glob("**/model.safetensors")):
        if not RunDir(weights.parent).is_complete():  # a run still training
            continue
        rows.append(measure_run(weights.parent, a.tmp))
        print(
            f"{rows[-1]['model']}: {rows[-1]['max_abs_diff']:.2e} (|logit| <= {rows[-1]['logit_max']:.1f})", flush=True
        )
    OUT.write_text(
        json.dumps(
            {
                "img_size": a.img_size,
                "device": DEVICE,
                "commit": git_commit(),
                "registry_models": "random weights, BN statistics from real bundled UC Merced "
                f"images, largest |logit| scaled to {LOGIT_SCALE:g}",
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {OUT} and {write_table()}")


if __name__ == "__main__":
    main()
