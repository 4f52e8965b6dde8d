"""A candidate's batch-1 latency as a share of its parent's, measured on this machine in ONNX
Runtime (FP32, or INT8 quantized as ``export --int8`` does): what a latency budget is hit on.

The two are timed interleaved (parent, candidate, parent, ...) in rounds, so load that comes
and goes hits both alike; each round gives a ratio of medians, and rounds are added until the
ratio's standard error is below ``spread`` (or ``MAX_ROUNDS``). The parent is exported once.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rscompress.config import Int8Config, PruneConfig
from rscompress.deploy.latency import time_interleaved
from rscompress.deploy.onnx import check_parity, export_onnx
from rscompress.deploy.quantize import calibration_batches, quantize_int8
from rscompress.deploy.runtime import INPUT_NAME, OUTPUT_NAME, cpu_session
from rscompress.models.detection import deployable
from rscompress.pruning.latency_budget import Measured

ROUND = 25  # timed calls of each model per round
WARMUP = 10
MIN_ROUNDS, MAX_ROUNDS = 4, 16
SPREAD = 0.02  # relative standard error of the ratio a measurement stops at


class LatencyProbe:
    """Times models against ``parent`` at batch 1 with ``threads`` ONNX Runtime threads.
    ``int8_calibration``: normalised train images (N×3×S×S); given, every model is quantized
    to INT8 first and the INT8 models are timed."""

    def __init__(
        self, parent: nn.Module, img_size: int, *, threads: int = 1, int8_calibration: np.ndarray | None = None
    ) -> None:
        self.threads, self.img_size = threads, img_size
        self._calibration = None if int8_calibration is None else calibration_batches(int8_calibration)
        self._dir = tempfile.TemporaryDirectory(prefix="rscompress-latency-")
        self._count = 0
        self._parent = self._session(parent)
        x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
        self._input = x.numpy()

    @property
    def precision(self) -> str:
        return "fp32" if self._calibration is None else "int8"

    def _session(self, model: nn.Module) -> Any:
        self._count += 1
        path = Path(self._dir.name) / f"model{self._count}.onnx"
        model = deployable(model)  # a detector is timed as it is exported: up to its raw head outputs
        export_onnx(model, self.img_size, path)
        check_parity(model, path, torch.randn(2, 3, self.img_size, self.img_size))
        if self._calibration is not None:
            path = quantize_int8(path, path.with_suffix(".int8.onnx"), self._calibration)
        return cpu_session(path, self.threads)

    def _calls(self, *sessions: Any) -> list[Any]:
        return [lambda s=s: s.run([OUTPUT_NAME], {INPUT_NAME: self._input}) for s in sessions]

    def parent_ms(self) -> float:
        """The parent's median over ``MIN_ROUNDS`` rounds (what an absolute target is a share of)."""
        call = self._calls(self._parent)
        times = time_interleaved(call, WARMUP, ROUND * MIN_ROUNDS)[0]
        return statistics.median(times)

    def __call__(self, candidate: nn.Module) -> Measured:
        calls = self._calls(self._parent, self._session(candidate))
        ratios: list[float] = []
        parent_ms: list[float] = []
        candidate_ms: list[float] = []
        warmup = WARMUP
        while len(ratios) < MAX_ROUNDS:
            parent, cand = time_interleaved(calls, warmup, ROUND)
            warmup = 0
            parent_ms.append(statistics.median(parent))
            candidate_ms.append(statistics.median(cand))
            ratios.append(candidate_ms[-1] / parent_ms[-1])
            if len(ratios) >= MIN_ROUNDS and _relative_error(ratios) <= SPREAD:
                break
        return Measured(
            ratio=statistics.median(ratios),
            spread=_relative_error(ratios),
            candidate_ms=statistics.median(candidate_ms),
            parent_ms=statistics.median(parent_ms),
            repeats=ROUND * len(ratios),
        )

    def close(self) -> None:
        self._dir.cleanup()


def _relative_error(ratios: list[float]) -> float:
    """Standard error of the rounds' mean ratio, relative to their median."""
    return float(np.std(ratios, ddof=1) / np.sqrt(len(ratios)) / statistics.median(ratios))


def latency_meter_for(
    cfg: PruneConfig, img_size: int, calibration: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> Callable[[nn.Module], LatencyProbe]:
    """What ``prepare_and_prune`` times a latency budget's candidates with, as ``cfg`` asks:
    ``cfg.latency_threads`` threads, INT8 (calibrated on the first ``calib_images`` of the
    plain train ``calibration`` batches, as ``export --int8``) when ``cfg.latency_int8``."""
    images = None
    if cfg.latency_int8:
        images = torch.cat([x for x, _ in calibration])[: Int8Config().calib_images].float().numpy()

    def meter(parent: nn.Module) -> LatencyProbe:
        return LatencyProbe(parent, img_size, threads=cfg.latency_threads, int8_calibration=images)

    return meter
