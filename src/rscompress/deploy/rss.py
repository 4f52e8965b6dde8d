"""``python -m rscompress.deploy.rss``: the peak memory of one model in a fresh process.

Peak RSS only ever grows, so two models measured in one process would hide the smaller one
behind the larger; latency.py therefore starts this probe once per model and setting. It
loads the model, runs one batch and prints one JSON line: ``peak_rss_mb`` (the whole process,
as a deployment would see it) and ``import_rss_mb`` (the peak after the engine's imports,
before the model: the floor every model of that engine pays).

The ONNX Runtime probe never imports torch, so its figure is that of a torch-free deployment.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    On Linux from ``VmHWM``, not ``getrusage``: ``ru_maxrss`` survives fork and exec, so a
    probe started by a big process (a benchmark holding torch and several models) would
    report its parent's peak instead of its own.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, else KiB


def _run_onnxruntime(onnx_path: str, batch_size: int, img_size: int, threads: int) -> float:
    import numpy as np

    from rscompress.deploy.runtime import INPUT_NAME, OUTPUT_NAME, cpu_session

    floor = peak_rss_mb()
    session = cpu_session(onnx_path, threads)
    x = np.random.default_rng(0).standard_normal((batch_size, 3, img_size, img_size), dtype=np.float32)
    session.run([OUTPUT_NAME], {INPUT_NAME: x})
    return floor


def _run_torch(run_path: str, batch_size: int, threads: int) -> float:
    import torch

    from rscompress.artifacts import (
        RunDir,  # imports the model zoo too: part of the floor
    )

    torch.set_num_threads(threads)
    floor = peak_rss_mb()
    model, config = RunDir(run_path).load_model()
    x = torch.randn(batch_size, 3, config.img_size, config.img_size)
    with torch.inference_mode():
        model(x)
    return floor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rscompress.deploy.rss", description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("torch", "onnxruntime"), required=True)
    parser.add_argument("--onnx", help="ONNX file (engine onnxruntime)")
    parser.add_argument("--run", help="run dir (engine torch)")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--img-size", type=int, help="input size (engine onnxruntime)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.engine == "onnxruntime":
        if not args.onnx or not args.img_size:
            parser.error("engine onnxruntime needs --onnx and --img-size")
        floor = _run_onnxruntime(args.onnx, args.batch_size, args.img_size, args.threads)
    else:
        if not args.run:
            parser.error("engine torch needs --run")
        floor = _run_torch(args.run, args.batch_size, args.threads)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "import_rss_mb": floor}))


if __name__ == "__main__":
    main()
