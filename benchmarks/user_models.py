"""Bring-your-own-model check (issue 32): every method on torchvision and timm classifiers,
through the Python API, to a MACs budget; the pruned model saved, reloaded in a fresh process
and exported.

    python -m benchmarks.user_models run [--models tv/resnet18 ...] [--methods l1 nas ...]
    python -m benchmarks.user_models table

Tiny random data (32 images at 64 px, 4 classes) and one epoch per phase: this measures
whether each method reaches the budget, rebuilds and exports on each architecture, not
accuracy. One record per (model, method, budget) in ``results/user_models.jsonl``; a cell with
a record is skipped. ``table`` writes ``results/user_models.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.records import append_record, cpu_name, git_commit, has_record, read_records
from rscompress.pruning.methods import METHODS as METHOD_TABLE

RESULTS = Path("benchmarks/results/user_models.jsonl")
TABLE = RESULTS.with_suffix(".md")
IMG_SIZE, NUM_CLASSES, TARGET = 64, 4, 0.35
METHODS = tuple(METHOD_TABLE)  # every method there is
# One epoch of each phase: enough to run every code path of a method.
PHASE_OPTIONS = {"slim": {"sparse_epochs": 1}, "l1rr": {"sparse_epochs": 1}, "nas": {"search_epochs": 1}}


def _torchvision(name: str) -> Callable[[], nn.Module]:
    import torchvision

    return lambda: torchvision.models.get_model(name, num_classes=NUM_CLASSES)


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, num_classes=NUM_CLASSES)

    return build


MODELS: dict[str, Callable[[], nn.Module]] = {
    "tv/resnet18": _torchvision("resnet18"),
    "tv/mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
    "tv/efficientnet_b0": _torchvision("efficientnet_b0"),
    "tv/regnet_x_400mf": _torchvision("regnet_x_400mf"),
    "timm/resnet18": _timm("resnet18"),
    "timm/seresnet18": _timm("seresnet18"),
    "timm/mobilenetv3_small_100": _timm("mobilenetv3_small_100"),
}


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, IMG_SIZE, IMG_SIZE, generator=g), torch.arange(32) % NUM_CLASSES
    return (
        DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
        DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16),
    )


# Loads the saved model in a new interpreter and prints its largest output difference from the
# outputs the pruned model gave in memory: nothing of the first process's state can help.
_FRESH_RELOAD = """
import sys, torch, rscompress as rsc
from safetensors.torch import load_file
saved = load_file(sys.argv[2])
model = rsc.load(sys.argv[1]).eval()
with torch.no_grad():
    print(float((model(saved["x"]) - saved["y"]).abs().max()))
"""


def fresh_reload_diff(model: nn.Module, model_dir: Path, x: torch.Tensor) -> float:
    """Max |outputs of ``rsc.load(model_dir)`` in a fresh process − ``model``'s in this one| on ``x``."""
    with torch.no_grad():
        expected = model.eval()(x)
    tensors = model_dir.parent / "reload-check.safetensors"
    save_file({"x": x.contiguous(), "y": expected.contiguous()}, str(tensors))
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_RELOAD, str(model_dir), str(tensors)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"reload in a fresh process failed: {done.stderr.strip().splitlines()[-1]}")
    return float(done.stdout.strip().splitlines()[-1])


def run_cell(model_name: str, method: str) -> dict[str, Any]:
    import rscompress as rsc

    train, val = _loaders()
    example = torch.zeros(1, 3, IMG_SIZE, IMG_SIZE)
    record: dict[str, Any] = {"model": model_name, "method": method, "target_macs": TARGET, "img_size": IMG_SIZE}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    try:
        result = rsc.prune(
            MODELS[model_name](),
            train,
            val,
            example_input=example,
            method=method,
            target_macs=TARGET,
            finetune_epochs=1,
            method_options=PHASE_OPTIONS.get(method),
        )
        record.update(macs_kept=result.macs_kept, params_kept=result.params_kept)
        x = next(iter(val))[0][:4]
        result.model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            saved = rsc.save(result.model, Path(tmp) / "model", example_input=example)
            record["reload_max_diff"] = fresh_reload_diff(result.model, Path(saved), x)
            record["reload"] = "fresh process"
            parity = rsc.export_onnx(result.model, Path(tmp) / "model.onnx", example_input=example, images=x)
            record["onnx_max_scaled_diff"] = parity.max_scaled_diff
    except Exception as error:  # recorded: which method fails on which model, and how, is the result
        record["error"] = f"{type(error).__name__}: {error}"
    record.update(
        seconds=time.perf_counter() - t0, threads=torch.get_num_threads(), cpu=cpu_name(), commit=git_commit()
    )
    return record


def table_text(results: Path | None = None) -> str:
    """The table of ``results`` (default ``RESULTS``): one row per model, one column per method."""
    records = {(r["model"], r["method"]): r for r in read_records(results or RESULTS)}
    models = [m for m in MODELS if any(key[0] == m for key in records)]
    lines = [
        "# Every method on models users bring (issue 32)",
        "",
        f"Python API (`rsc.prune`, `save`, `load`, `export_onnx`) to {TARGET:.0%} of the MACs at {IMG_SIZE} px;",
        "one epoch per phase on random data (reaching the budget, rebuilding and exporting is what is",
        "measured, not accuracy). Cell: MACs kept / params kept, in %; ✓ = reloaded in a fresh process",
        "≤ 1e-5 and ONNX parity passed. Generated by `python -m benchmarks.user_models table`.",
        "",
        "| model | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    errors = []
    for model in models:
        cells = []
        for method in METHODS:
            r = records.get((model, method))
            if r is None:
                cells.append("")
            elif "error" in r:
                errors.append(f"- {model}, {method}: {r['error']}")
                cells.append(f"error ({len(errors)})")
            else:
                ok = r["reload_max_diff"] <= 1e-5 and r["onnx_max_scaled_diff"] <= 1e-4
                cells.append(f"{100 * r['macs_kept']:.1f} / {100 * r['params_kept']:.1f} {'✓' if ok else '✗'}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if errors:
        lines += ["", "Errors, as the user sees them (numbered as in the table):", "", *errors]
    return "\n".join(lines) + "\n"


def write_table() -> Path:
    TABLE.write_text(table_text())
    return TABLE


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.user_models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="prune the missing cells, one record each")
    run.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    run.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    run.add_argument("--threads", type=int, default=1)
    sub.add_parser("table", help=f"write {TABLE}")
    args = parser.parse_args()
    if args.verb == "run":
        torch.set_num_threads(args.threads)
        git_commit()  # the records name the code this process started with
        for model in args.models:
            for method in args.methods:
                if has_record(RESULTS, {"model": model, "method": method, "target_macs": TARGET}):
                    continue
                record = run_cell(model, method)
                append_record(RESULTS, record)
                print(model, method, record.get("error") or f"{record['macs_kept']:.4f}", flush=True)
    print(f"wrote {write_table()}")


if __name__ == "__main__":
    main()
