"""``rscompress demo``: the whole flow on the bundled UC Merced sample, as one recipe.

A recipe of its own module: recipes run the run-dir API (``api``), and the API does not
import recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rscompress.errors import UserError

# Keep `make demo` (set-up included) under 10 minutes on 2 cores.
DEMO_EPOCHS = 8
DEMO_FINETUNE_EPOCHS = 6
# The INT8 export's settings: Int8Config's defaults, so past a 1-point val drop the step fails
# (a demo must not ship a bad model).
DEMO_INT8: dict[str, Any] = {}


def bundled_sample() -> Path:
    """The downscaled UC Merced copy shipped in the repo (``sample/ucmerced128``)."""
    path = Path(__file__).resolve().parents[2] / "sample" / "ucmerced128"
    if not path.is_dir():
        raise UserError(f"bundled sample not found at {path}: run from a source checkout (pip install -e .)")
    return path


def run_demo(out: Path, quiet: bool = False) -> tuple[dict[str, Any], Path]:
    """The whole flow on the bundled UC Merced sample at 64 px, offline, in minutes on 2 cores:
    SE-ResNet-18 → RemoteTrimmer to 15 % of its MACs with AML + CE fine-tuning → a G-GhostNet
    student distilled with DKD → ONNX export (the pruned model also INT8, accuracy-checked) →
    HTML report. ``results["rt15-int8"]`` holds the INT8 check; ``int8_speedup`` says how
    much faster it runs than the FP32 parent.

    Returns the recipe results and the report path. Re-running resumes: finished steps are reused.
    """
    from rscompress.recipe import Recipe, run_steps
    from rscompress.report.report import build_report

    # The recommended recipe: config.py's defaults (SGD + nesterov under OneCycle, label
    # smoothing 0.1), fine-tuning at FINETUNE_LR.
    tune = {"epochs": DEMO_FINETUNE_EPOCHS}
    recipe = Recipe.model_validate(
        {
            "out": out,
            "steps": [
                {
                    "name": "base",
                    "train": {
                        "data": {"path": bundled_sample(), "img_size": 64},
                        "model": "se_resnet18",
                        "epochs": DEMO_EPOCHS,
                        # No CutMix (train's default for 60 epochs): in these 8 its base step reached
                        # val top-1 61.90 and 61.90 against 71.90 and 77.14 without (seeds 0, 1).
                        "cutmix_alpha": 0.0,
                    },
                },
                # Channel counts in multiples of 8: the same MACs run faster (benchmarks/results/speedup.json).
                {
                    "name": "rt15",
                    "prune": {
                        "parent": "base",
                        "method": "remotetrimmer",
                        "target_macs": 0.15,
                        "round_to": 8,
                        "loss": "aml+ce",
                        "finetune": tune,
                    },
                },
                {
                    "name": "ggnet-dkd",
                    "distill": {
                        "teacher": "base",
                        "student": "g_ghost_regnetx_tiny",
                        "small_input": True,
                        "loss": "dkd",
                        "kd_warmup_epochs": 2,
                        "fit": {"epochs": DEMO_EPOCHS},
                    },
                },
                {"name": "base-onnx", "export": {"run": "base"}},
                {"name": "rt15-onnx", "export": {"run": "rt15"}},
                {"name": "rt15-int8", "export": {"run": "rt15", "int8": DEMO_INT8}},
                {"name": "ggnet-onnx", "export": {"run": "ggnet-dkd"}},
            ],
        }
    )
    results = run_steps(recipe, quiet=quiet)
    report = build_report([out / "base", out / "rt15", out / "ggnet-dkd"], out / "report.html")
    return results, report


def int8_speedup(out: Path, threads: int = 1, repeats: int = 50) -> float:
    """Batch-1 latency of the FP32 parent's ONNX over its pruned model's INT8 ONNX (interleaved)."""
    from rscompress.artifacts import INT8_ONNX, RunDir
    from rscompress.deploy.int8 import latency_bs1

    img_size = RunDir(out / "base").load_config().img_size
    return latency_bs1(out / "base" / "model.onnx", out / "rt15" / INT8_ONNX, img_size, threads, repeats).speedup
