"""CPU latency and peak memory of several models, measured so they can be compared fairly.

For each setting (engine, batch size, threads) the models are timed interleaved in this one
process — A, B, A, B, … — after a warm-up, so a noisy neighbour or a clock change hits all of
them alike; the medians are then comparable and ``speedup = ref_median / median`` is reported
next to ``macs_ratio = ref_macs / macs`` (how much of the MAC saving turns into time). The
reference of a run is its parent when the parent is among the runs, else the first run.

Peak RSS is measured per model and setting in a fresh subprocess (rss.py).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rscompress.artifacts import INT8_ONNX, INT8_RECORD, RunDir
from rscompress.config import MAX_BATCH_SIZE, MAX_REPEATS, MAX_THREADS
from rscompress.deploy.onnx import ONNX_FILE, check_parity, export_onnx
from rscompress.deploy.runtime import INPUT_NAME, OUTPUT_NAME, cpu_session
from rscompress.errors import UserError
from rscompress.io_utils import read_jsonl
from rscompress.models.complexity import count_macs_params
from rscompress.models.detection import deployable

ENGINES = ("torch", "onnxruntime")
Clock = Callable[[], float]
RunSpec = RunDir | Path | str | tuple[str, nn.Module, int]


@dataclass(frozen=True)
class LatencyResult:
    """One model at one setting. Times are milliseconds per batch."""

    name: str
    engine: str
    batch_size: int
    threads: int
    median_ms: float
    p90_ms: float
    warmup: int
    repeats: int
    img_size: int
    macs: int  # per image (count_macs_params)
    params: int
    reference: str  # the model this one's speedup is relative to (itself for a reference)
    reference_is_parent: bool  # the reference is this run's parent (else: the first model given)
    ref_median_ms: float  # the reference's median at this same setting
    ref_macs: int
    peak_rss_mb: float | None = None  # fresh process running this setting; None: not measured
    run: str | None = None  # run dir, when the model came from one
    precision: str = "fp32"  # "int8": the run's INT8 ONNX model (ONNX Runtime only)
    size_mb: float | None = None  # the ONNX file timed; None for torch
    top1: float | None = None  # test top-1 its run recorded for this precision; None: none recorded
    map50: float | None = None  # a detector's test mAP@0.5, likewise

    @property
    def speedup(self) -> float:
        return self.ref_median_ms / self.median_ms

    @property
    def macs_ratio(self) -> float:
        return self.ref_macs / self.macs

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; a figure that was not measured is left out, never filled in."""
        row = {k: v for k, v in asdict(self).items() if v is not None}
        return {**row, "speedup": self.speedup, "macs_ratio": self.macs_ratio}


@dataclass
class _Model:
    name: str
    model: nn.Module  # FP32 (an INT8 twin keeps its run's: MACs are counted on it)
    img_size: int
    run: RunDir | None
    parent: Path | None  # resolved path of the parent run named in config.json
    int8: Path | None = None  # this entry is the run's INT8 ONNX model, timed in ONNX Runtime only

    @property
    def precision(self) -> str:
        return "fp32" if self.int8 is None else "int8"

    def accuracy(self) -> dict[str, float]:
        """Test top-1 (a detector: mAP@0.5) its run recorded in this precision (the last INT8
        model written); empty when none was recorded."""
        if self.run is None:
            return {}
        if self.int8 is None:
            metrics = self.run.load_metrics() if self.run.metrics_path.is_file() else {}
            return {k: metrics[k] for k in ("top1", "map50") if k in metrics}
        checks = self.run.path / INT8_RECORD
        written = [r for r in read_jsonl(checks) if r.get("written")] if checks.is_file() else []
        last = written[-1] if written else {}
        return {k: last[f"{k}_int8"] for k in ("top1", "map50") if f"{k}_int8" in last}


def _int8_twins(models: Sequence[_Model]) -> list[_Model]:
    """An INT8 entry for every run with an INT8 model (``rscompress export RUN --int8``)."""
    twins = [
        _Model(f"{m.name} int8", m.model, m.img_size, m.run, m.parent, int8=m.run.path / INT8_ONNX)
        for m in models
        if m.run is not None and (m.run.path / INT8_ONNX).is_file()
    ]
    if not twins:
        raise UserError("--int8: none of these runs has an INT8 model; make one with `rscompress export RUN --int8`")
    return twins


def _as_model(spec: RunSpec) -> _Model:
    if isinstance(spec, tuple):
        name, model, img_size = spec
        return _Model(name, model.eval(), img_size, None, None)
    run = spec if isinstance(spec, RunDir) else RunDir(spec)
    model, config = run.load_model()
    parent = Path(config.parent).resolve() if config.parent else None
    return _Model(str(run.path), deployable(model), config.img_size, run, parent)


def _references(models: Sequence[_Model]) -> list[tuple[int, bool]]:
    """(index, is parent) of each model's reference: its parent run (FP32) if given here, else
    the first model."""
    index_of = {m.run.path.resolve(): i for i, m in enumerate(models) if m.run is not None and m.int8 is None}
    parents = [index_of.get(m.parent) if m.parent is not None else None for m in models]
    return [(0, False) if p is None else (p, True) for p in parents]


def time_interleaved(
    calls: Sequence[Callable[[], object]], warmup: int, repeats: int, clock: Clock = time.perf_counter
) -> list[list[float]]:
    """Milliseconds of each call, ``repeats`` times, in the order A, B, …, A, B, … after warm-up."""
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, own in zip(calls, times, strict=True):
            start = clock()
            call()
            own.append((clock() - start) * 1e3)
    return times


def p90(times: Sequence[float]) -> float:
    return float(np.percentile(times, 90))


def _inputs(img_size: int, batch_size: int) -> torch.Tensor:
    # The values do not change a CNN's compute; a fixed seed keeps repeated benchmarks identical.
    return torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _torch_calls(models: Sequence[_Model], batch_size: int) -> list[Callable[[], object]]:
    def call(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        return lambda: model(x)

    return [call(m.model, _inputs(m.img_size, batch_size)) for m in models]


def _onnx_calls(sessions: Sequence[Any], models: Sequence[_Model], batch_size: int) -> list[Callable[[], object]]:
    def call(session: Any, x: np.ndarray) -> Callable[[], object]:
        return lambda: session.run([OUTPUT_NAME], {INPUT_NAME: x})

    return [call(s, _inputs(m.img_size, batch_size).numpy()) for s, m in zip(sessions, models, strict=True)]


def _onnx_file(m: _Model, folder: Path, index: int) -> Path:
    """The run's INT8 model for an INT8 entry; else the run's own parity-checked model.onnx,
    or a fresh export checked on random inputs."""
    if m.int8 is not None:
        return m.int8
    if m.run is not None and (m.run.path / ONNX_FILE).is_file():
        return m.run.path / ONNX_FILE
    path = export_onnx(m.model, m.img_size, folder / f"model{index}.onnx")
    check_parity(m.model, path, _inputs(m.img_size, 2))
    return path


def _rss_probe(m: _Model, engine: str, onnx_path: Path | None, batch_size: int, threads: int) -> float | None:
    """Peak RSS of a fresh process running this setting; None where it cannot be measured."""
    if engine == "torch":
        if m.run is None:
            return None  # an in-memory model cannot be handed to another process without pickle
        source = ["--run", str(m.run.path)]
    else:
        source = ["--onnx", str(onnx_path), "--img-size", str(m.img_size)]
    command = [
        sys.executable,
        "-m",
        "rscompress.deploy.rss",
        "--engine",
        engine,
        "--batch-size",
        str(batch_size),
        "--threads",
        str(threads),
        *source,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed ({' '.join(command)}): {done.stderr.strip()[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def _check_settings(
    engines: Iterable[str], batch_sizes: Iterable[int], threads: Iterable[int], warmup: int, repeats: int
) -> None:
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise UserError(f"unknown engine {unknown[0]!r}; known: {', '.join(ENGINES)}")
    for label, values, top in (("batch size", batch_sizes, MAX_BATCH_SIZE), ("threads", threads, MAX_THREADS)):
        if bad := [v for v in values if not 1 <= v <= top]:
            raise UserError(f"{label} must be 1 to {top}, got {bad[0]}")
    if not (1 <= repeats <= MAX_REPEATS and 0 <= warmup <= MAX_REPEATS):
        raise UserError(
            f"need repeats of 1 to {MAX_REPEATS} and warmup of 0 to that, got repeats={repeats}, warmup={warmup}"
        )


def measure(
    runs: Sequence[RunSpec],
    batch_sizes: Sequence[int] = (1, 32),
    threads: Sequence[int] = (1, 2),
    engines: Sequence[str] = ENGINES,
    warmup: int = 10,
    repeats: int = 50,
    *,
    peak_rss: bool = True,
    int8: bool = False,
    clock: Clock = time.perf_counter,
) -> list[LatencyResult]:
    """Time every model at every (engine, threads, batch size) setting on this CPU.

    ``runs``: run dirs (their ``model.onnx`` is used when present, else one is exported to a
    temp dir) or ``(name, model, img_size)`` tuples of CPU models (put in eval mode). PyTorch
    runs eager under ``inference_mode`` with ``torch.set_num_threads(threads)`` (restored
    afterwards); ONNX Runtime with ``threads`` intra-op threads, one inter-op thread, all graph
    optimisations. Results are ordered by setting, then by model as given.

    ``peak_rss``: probe each model's peak memory per setting in a fresh process (rss.py; a
    torch probe needs a run dir, so in-memory models get none). ``int8``: also time each run's
    INT8 model (ONNX Runtime only), interleaved with the FP32 ones, against the same reference
    (the FP32 parent). ``clock``: for tests.
    """
    _check_settings(engines, batch_sizes, threads, warmup, repeats)
    if not runs:
        raise UserError("measure needs at least one run")
    models = [_as_model(spec) for spec in runs]
    if int8:
        models += _int8_twins(models)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"a model is given twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
    for m in models:
        if any(p.device.type != "cpu" for p in m.model.parameters()):
            raise ValueError(f"{m.name} is not on the CPU; latency here is CPU latency")
    counts = [count_macs_params(m.model, m.img_size) for m in models]
    refs = _references(models)

    if int8 and "onnxruntime" not in engines:
        raise UserError("--int8 models run in ONNX Runtime: add the onnxruntime engine")
    accuracy = [m.accuracy() for m in models]
    with tempfile.TemporaryDirectory(prefix="rscompress-bench-") as tmp:
        wants_onnx = "onnxruntime" in engines
        onnx_paths = [_onnx_file(m, Path(tmp), i) if wants_onnx else None for i, m in enumerate(models)]
        timings = []
        for engine in engines:
            # torch runs the FP32 modules only; the INT8 entries are ONNX files.
            timed = [i for i, m in enumerate(models) if engine != "torch" or m.int8 is None]
            paths = [onnx_paths[i] for i in timed]
            for t in threads:
                for batch_size, times in _time_engine(
                    engine, [models[i] for i in timed], paths, batch_sizes, t, warmup, repeats, clock
                ):
                    timings.append((engine, t, batch_size, dict(zip(timed, times, strict=True))))
        # Probes start only after all timing is done: a subprocess must not disturb a timing.
        results = []
        for engine, t, batch_size, times_of in timings:
            medians = {i: statistics.median(own) for i, own in times_of.items()}
            for i, own in times_of.items():
                m = models[i]
                ref, ref_is_parent = refs[i]
                results.append(
                    LatencyResult(
                        name=m.name,
                        engine=engine,
                        batch_size=batch_size,
                        threads=t,
                        median_ms=medians[i],
                        p90_ms=p90(own),
                        warmup=warmup,
                        repeats=repeats,
                        img_size=m.img_size,
                        macs=counts[i][0],
                        params=counts[i][1],
                        reference=models[ref].name,
                        reference_is_parent=ref_is_parent,
                        ref_median_ms=medians[ref],
                        ref_macs=counts[ref][0],
                        peak_rss_mb=_rss_probe(m, engine, onnx_paths[i], batch_size, t) if peak_rss else None,
                        run=str(m.run.path) if m.run is not None else None,
                        precision=m.precision,
                        size_mb=_size_mb(onnx_paths[i]) if engine == "onnxruntime" else None,
                        **accuracy[i],
                    )
                )
    return results


def _size_mb(path: Path | None) -> float | None:
    return path.stat().st_size / 1e6 if path is not None else None


def _time_engine(
    engine: str,
    models: Sequence[_Model],
    onnx_paths: Sequence[Path | None],
    batch_sizes: Sequence[int],
    threads: int,
    warmup: int,
    repeats: int,
    clock: Clock,
) -> Iterator[tuple[int, list[list[float]]]]:
    """(batch size, per-model times) for one engine at one thread count."""
    if engine == "torch":
        with _torch_threads(threads), torch.inference_mode():
            for batch_size in batch_sizes:
                yield batch_size, time_interleaved(_torch_calls(models, batch_size), warmup, repeats, clock)
    else:
        sessions = []
        for path in onnx_paths:
            assert path is not None  # measure exports every model when onnxruntime is asked for
            sessions.append(cpu_session(path, threads))
        for batch_size in batch_sizes:
            yield batch_size, time_interleaved(_onnx_calls(sessions, models, batch_size), warmup, repeats, clock)


def measure_bs1(runs: Sequence[RunSpec], repeats: int = 50) -> list[LatencyResult]:
    """The latency of benchmark records and reports (DESIGN.md): ONNX Runtime, batch 1,
    1 thread, all runs interleaved in this process."""
    return measure(runs, batch_sizes=(1,), threads=(1,), engines=("onnxruntime",), repeats=repeats, peak_rss=False)


def bench_table(results: Iterable[LatencyResult]) -> list[dict[str, Any]]:
    """One row per model × setting, rounded for people (``to_dict`` keeps full precision)."""
    return [
        {
            "model": r.name,
            "precision": r.precision,
            "engine": r.engine,
            "batch_size": r.batch_size,
            "threads": r.threads,
            "median_ms": round(r.median_ms, 3),
            "p90_ms": round(r.p90_ms, 3),
            "images_per_s": round(r.batch_size * 1e3 / r.median_ms, 1),
            "mmacs": round(r.macs / 1e6, 2),
            "reference": r.reference,
            "speedup": round(r.speedup, 2),
            "macs_ratio": round(r.macs_ratio, 2),
            **({"peak_rss_mb": round(r.peak_rss_mb, 1)} if r.peak_rss_mb is not None else {}),
            **({"size_mb": round(r.size_mb, 2)} if r.size_mb is not None else {}),
            **({"test_top1": round(r.top1, 4)} if r.top1 is not None else {}),
            **({"test_map50": round(r.map50, 4)} if r.map50 is not None else {}),
        }
        for r in results
    ]


def record_fields(results: Iterable[LatencyResult], name: str) -> dict[str, float]:
    """``latency_ms_bs1`` (and ``parent_latency_ms_bs1``) of ``name`` for a benchmark record.

    DESIGN.md: ONNX Runtime, 1 thread, batch 1, measured in the same process as the parent's.
    The parent's figure is there only when the parent run was measured with it.
    """
    for r in results:
        if r.name == name and r.engine == "onnxruntime" and r.batch_size == 1 and r.threads == 1:
            fields = {"latency_ms_bs1": r.median_ms}
            if r.reference_is_parent:
                fields["parent_latency_ms_bs1"] = r.ref_median_ms
            return fields
    raise ValueError(f"no onnxruntime / 1 thread / batch 1 result for {name!r}")
