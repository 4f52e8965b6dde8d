"""INT8 export with an accuracy check: an INT8 model is only written once it is known to be
(nearly) as accurate as the FP32 one, and every check is kept, passed or not.

``export_int8`` quantizes an FP32 ONNX file (quantize.py), runs both files in ONNX Runtime on
the validation and test images (top-1 of each, agreement of INT8's top-1 with FP32's), measures
their size and batch-1 latency on this CPU (interleaved, latency.py), and appends all of it to
a record (``RUN/int8.jsonl``) before deciding. A val top-1 drop above ``max_drop`` points is
refused (``Int8AccuracyError``, the file never appears) unless ``force``. ``export_int8_run``
does this for a run dir: calibration on its train split as evaluation prepares it (no
augmentation), the check on its val and test splits.

INT8 is not always faster: where this CPU runs it slower than FP32, the report says so and
names the CPU and its INT8 instruction flags (cpu.py) rather than leaving a number to be read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rscompress.artifacts import INT8_ONNX, INT8_RECORD, RunConfig, RunDir
from rscompress.config import DataConfig, Int8Config
from rscompress.data.prepare import prepare_data
from rscompress.deploy.cpu import CpuInfo, cpu_info
from rscompress.deploy.latency import p90, time_interleaved
from rscompress.deploy.onnx import check_destination, check_parity, export_onnx, run_metadata, spread_rows
from rscompress.deploy.quantize import REDUCE_RANGE, calibration_batches, quant_settings, quantize_int8
from rscompress.deploy.runtime import INPUT_NAME, OUTPUT_NAME, cpu_session
from rscompress.errors import UserError
from rscompress.io_utils import INT8_FP32_STAGING, INT8_STAGING, append_jsonl, fsync_dir, staging_dir
from rscompress.models.registry import model_task

LATENCY_WARMUP = 10
PARITY_IMAGES = 8  # val images the staged FP32 file is parity-checked on before it is the reference

Batches = Iterable[tuple[Any, Any]]  # (images N×3×S×S, labels N): tensors or arrays


@dataclass(frozen=True)
class SplitCheck:
    """FP32 and INT8 top-1 on one split, and how often INT8 picks FP32's class."""

    n_images: int
    correct_fp32: int
    correct_int8: int
    agree: int  # images whose INT8 top-1 is FP32's top-1

    @property
    def top1_fp32(self) -> float:
        return self.correct_fp32 / self.n_images

    @property
    def top1_int8(self) -> float:
        return self.correct_int8 / self.n_images

    @property
    def agreement(self) -> float:
        return self.agree / self.n_images

    @property
    def drop_points(self) -> float:
        """FP32 top-1 minus INT8 top-1, in percentage points (negative: INT8 is better)."""
        return 100.0 * (self.correct_fp32 - self.correct_int8) / self.n_images

    def headline(self) -> dict[str, float]:
        """The figures the benchmark records carry under these names (results/int8.jsonl)."""
        return {"top1_fp32": self.top1_fp32, "top1_int8": self.top1_int8}

    def describe(self) -> str:
        return f"top-1 {self.top1_fp32:.2%} FP32 -> {self.top1_int8:.2%} INT8"

    def detail(self) -> str:
        return f"top-1 agreement {self.agreement:.1%} over {self.n_images}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "top1_fp32": self.top1_fp32,
            "top1_int8": self.top1_int8,
            "agreement": self.agreement,
            "drop_points": self.drop_points,
        }


@dataclass(frozen=True)
class MapCheck:
    """FP32 and INT8 mAP of a detector on one split, each file's raw outputs decoded into boxes
    as the PyTorch detector decodes its own (models/detection.detections_from_raw)."""

    n_images: int
    map50_fp32: float
    map50_int8: float
    map_fp32: float  # mAP@0.5:0.95
    map_int8: float

    @property
    def drop_points(self) -> float:
        """FP32 mAP@0.5 minus INT8 mAP@0.5, in percentage points (negative: INT8 is better)."""
        return 100.0 * (self.map50_fp32 - self.map50_int8)

    def headline(self) -> dict[str, float]:
        return {"map50_fp32": self.map50_fp32, "map50_int8": self.map50_int8}

    def describe(self) -> str:
        return f"mAP@0.5 {self.map50_fp32:.4f} FP32 -> {self.map50_int8:.4f} INT8"

    def detail(self) -> str:
        return f"mAP@0.5:0.95 {self.map_fp32:.4f} -> {self.map_int8:.4f} over {self.n_images}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "map50_fp32": self.map50_fp32,
            "map50_int8": self.map50_int8,
            "map_fp32": self.map_fp32,
            "map_int8": self.map_int8,
            "drop_points": self.drop_points,
        }


Check = SplitCheck | MapCheck


@dataclass(frozen=True)
class LatencyPair:
    """Batch-1 ONNX Runtime latency of both files, timed interleaved in this process (ms)."""

    fp32_median_ms: float
    fp32_p90_ms: float
    int8_median_ms: float
    int8_p90_ms: float
    threads: int
    repeats: int

    @property
    def speedup(self) -> float:
        return self.fp32_median_ms / self.int8_median_ms

    @property
    def int8_slower(self) -> bool:
        return self.int8_median_ms >= self.fp32_median_ms


@dataclass(frozen=True)
class Int8Report:
    path: Path  # the INT8 file: where it was written, or where it would have gone
    written: bool
    max_drop: float
    forced: bool  # force was given (it matters only when the drop is past max_drop)
    calib_images: int  # images actually used
    calib_source: str
    quantize_seconds: float  # quant_pre_process + calibration + quantize_static
    val: Check  # top-1 of a classifier, mAP of a detector
    test: Check | None  # None: no test split
    size_bytes_fp32: int
    size_bytes_int8: int
    latency: LatencyPair
    cpu: CpuInfo
    quantization: dict[str, str] = field(default_factory=quant_settings)  # the settings, in words
    notes: tuple[str, ...] = ()
    record: Path | None = None  # the file this check was appended to
    extra: dict[str, Any] = field(default_factory=dict)  # the run dir, the model's name, ...

    @property
    def val_drop(self) -> float:
        return self.val.drop_points

    @property
    def past_max_drop(self) -> bool:
        # A small tolerance: a drop of exactly max_drop (one image of 100 at 1 point) passes.
        return self.val_drop > self.max_drop + 1e-9

    def to_dict(self) -> dict[str, Any]:
        lat = self.latency
        return {
            **self.extra,
            "path": str(self.path),
            "written": self.written,
            "refused": not self.written,
            "max_drop": self.max_drop,
            "val_drop_points": self.val_drop,
            "forced": self.forced and self.past_max_drop,
            "val": self.val.to_dict(),
            "test": self.test.to_dict() if self.test is not None else None,
            # The test figures under the benchmark records' names (benchmarks/results/int8.jsonl).
            **(self.test.headline() if self.test is not None else {}),
            "size_bytes_fp32": self.size_bytes_fp32,
            "size_bytes_int8": self.size_bytes_int8,
            "latency_ms_bs1_fp32": lat.fp32_median_ms,
            "latency_ms_bs1_int8": lat.int8_median_ms,
            "latency_p90_ms_bs1_fp32": lat.fp32_p90_ms,
            "latency_p90_ms_bs1_int8": lat.int8_p90_ms,
            "latency_threads": lat.threads,
            "latency_repeats": lat.repeats,
            "speedup": lat.speedup,
            "int8_slower": lat.int8_slower,
            "cpu": self.cpu.name,
            "cpu_flags": list(self.cpu.flags),
            "calib_images": self.calib_images,
            "calib_source": self.calib_source,
            "quantize_seconds": self.quantize_seconds,
            "quantization": dict(self.quantization),
            "notes": list(self.notes),
            **({"record": str(self.record)} if self.record is not None else {}),
        }


class Int8AccuracyError(UserError):
    """The INT8 model lost more val top-1 than allowed: it was not written (the check was recorded)."""

    def __init__(self, message: str, report: Int8Report):
        super().__init__(message)
        self.report = report


def _numpy(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


def first_images(batches: Batches, n: int, name: str) -> np.ndarray:
    """The first ``n`` images of ``batches`` (fewer if it holds fewer), as one float32 array;
    ``name`` says which loader in the error when it holds none."""
    taken: list[np.ndarray] = []
    count = 0
    for x, _ in batches:
        taken.append(_numpy(x, np.float32)[: n - count])
        count += taken[-1].shape[0]
        if count >= n:
            break
    if count == 0:
        raise UserError(f"{name} holds no images")
    return np.concatenate(taken)


def compare_on(fp32: Any, int8: Any, batches: Batches) -> SplitCheck | None:
    """Both sessions over ``batches``; None when they hold no image."""
    n = correct_fp32 = correct_int8 = agree = 0
    for x, y in batches:
        feed = {INPUT_NAME: _numpy(x, np.float32)}
        labels = _numpy(y, np.int64)
        top_fp32 = fp32.run([OUTPUT_NAME], feed)[0].argmax(axis=1)
        top_int8 = int8.run([OUTPUT_NAME], feed)[0].argmax(axis=1)
        n += labels.size
        correct_fp32 += int((top_fp32 == labels).sum())
        correct_int8 += int((top_int8 == labels).sum())
        agree += int((top_int8 == top_fp32).sum())
    return SplitCheck(n, correct_fp32, correct_int8, agree) if n else None


def compare_detections(fp32: Any, int8: Any, batches: Batches, detector: nn.Module, img_size: int) -> MapCheck | None:
    """``compare_on`` for a detector: both sessions' raw outputs decoded into boxes and scored
    against the true ones by COCO mAP (torchmetrics, as evaluate_detection scores the model)."""
    from torchmetrics.detection import MeanAveragePrecision

    from rscompress.models.detection import detections_from_raw

    metrics = [MeanAveragePrecision(iou_type="bbox", backend="pycocotools", sync_on_compute=False) for _ in range(2)]
    n = 0
    for x, targets in batches:
        feed = {INPUT_NAME: _numpy(x, np.float32)}
        for session, metric in zip((fp32, int8), metrics, strict=True):
            raw = torch.from_numpy(session.run([OUTPUT_NAME], feed)[0])
            metric.update(detections_from_raw(detector, raw, img_size), targets)
        n += len(targets)
    if not n:
        return None
    (fp, q) = (metric.compute() for metric in metrics)
    return MapCheck(n, float(fp["map_50"]), float(q["map_50"]), float(fp["map"]), float(q["map"]))


def latency_bs1(fp32: Path, int8: Path, img_size: int, threads: int, repeats: int) -> LatencyPair:
    """Batch-1 latency of both files, A, B, A, B, … after a warm-up (latency.py's way)."""
    x = np.random.default_rng(0).standard_normal((1, 3, img_size, img_size), dtype=np.float32)
    sessions = [cpu_session(fp32, threads), cpu_session(int8, threads)]
    calls = [lambda s=s: s.run([OUTPUT_NAME], {INPUT_NAME: x}) for s in sessions]
    fp32_times, int8_times = time_interleaved(calls, LATENCY_WARMUP, repeats)
    return LatencyPair(
        fp32_median_ms=float(np.median(fp32_times)),
        fp32_p90_ms=p90(fp32_times),
        int8_median_ms=float(np.median(int8_times)),
        int8_p90_ms=p90(int8_times),
        threads=threads,
        repeats=repeats,
    )


def slower_note(latency: LatencyPair, cpu: CpuInfo) -> str:
    """INT8 slower than FP32 here, said plainly with the likely reason for this CPU."""
    why = (
        "without VNNI, ONNX Runtime's 8-bit convolutions multiply in several steps and the "
        "quantize/dequantize work around them costs more than the narrower arithmetic saves"
        if cpu.flags_known and not cpu.has_vnni
        else "at this model's size the quantize/dequantize work around each layer costs more "
        "than the 8-bit arithmetic saves"
    )
    return (
        f"INT8 is slower than FP32 on this CPU: {latency.int8_median_ms:.3g} ms vs "
        f"{latency.fp32_median_ms:.3g} ms at batch 1, {latency.threads} thread(s) "
        f"({1 / latency.speedup:.2f}x the FP32 time) on {cpu.describe()}; {why}"
    )


def export_int8(
    fp32: Path,
    dest: Path,
    calibration: np.ndarray,
    val: Batches,
    test: Batches | None,
    record: Path,
    cfg: Int8Config,
    *,
    img_size: int,
    calib_source: str,
    extra: dict[str, Any] | None = None,
    notes: tuple[str, ...] = (),
    reduce_range: bool = REDUCE_RANGE,
    compare: Callable[[Any, Any, Batches], Check | None] | None = None,
) -> Int8Report:
    """Quantize ``fp32`` (calibrated on ``calibration``, N×3×S×S normalised images), check the
    INT8 model against it on ``val`` and ``test``, record the check in ``record``, and move the
    INT8 file to ``dest`` unless its val top-1 fell more than ``cfg.max_drop`` points (then
    ``Int8AccuracyError``, and nothing at ``dest`` changes) and ``cfg.force`` is not given.
    ``calibration`` is used whole (``cfg.calib_images`` is the run-dir export's to choose).
    ``compare(fp32 session, int8 session, batches)``: the check on a split, its val score the
    one ``max_drop`` is in points of; default ``compare_on`` (top-1; a detector's is mAP,
    ``compare_detections``).

    ``fp32`` is only read. The INT8 file is built in a temp dir beside ``dest`` and renamed
    into place, so ``dest`` is never a half-written or unchecked file.
    """
    if calibration.ndim != 4 or calibration.shape[0] == 0:
        raise UserError(f"calibration must hold at least one N×3×S×S image, got shape {calibration.shape}")
    with staging_dir(dest, INT8_STAGING) as staging:
        start = time.perf_counter()
        staged = quantize_int8(fp32, staging / dest.name, calibration_batches(calibration), reduce_range=reduce_range)
        quantize_seconds = time.perf_counter() - start
        eval_threads = max(1, torch.get_num_threads())
        sessions = cpu_session(fp32, eval_threads), cpu_session(staged, eval_threads)
        compare = compare or compare_on
        val_check = compare(*sessions, val)
        if val_check is None:
            raise UserError("the INT8 accuracy check needs validation images, and the val split is empty")
        test_check = compare(*sessions, test) if test is not None else None
        del sessions
        latency = latency_bs1(fp32, staged, img_size, cfg.threads, cfg.repeats)
        cpu = cpu_info()
        all_notes = list(notes)
        if latency.int8_slower:
            all_notes.append(slower_note(latency, cpu))
        report = Int8Report(
            path=dest,
            written=False,
            max_drop=cfg.max_drop,
            forced=cfg.force,
            calib_images=int(calibration.shape[0]),
            calib_source=calib_source,
            quantize_seconds=quantize_seconds,
            val=val_check,
            test=test_check,
            size_bytes_fp32=fp32.stat().st_size,
            size_bytes_int8=staged.stat().st_size,
            latency=latency,
            cpu=cpu,
            quantization=quant_settings(reduce_range),
            record=record,
            extra=dict(extra or {}),
        )
        refused = report.past_max_drop and not cfg.force
        if report.past_max_drop and cfg.force:
            all_notes.append(
                f"written past --max-drop {cfg.max_drop:g} because of --force: val {report.val.describe()}, fell "
                f"{report.val_drop:.2f} points"
            )
        report = replace(report, written=not refused, notes=tuple(all_notes))
        if refused:
            _record(record, report)  # a refused check leaves its numbers, and no file
            raise Int8AccuracyError(_refusal(report, dest), report)
        os.replace(staged, dest)
        fsync_dir(dest.parent)
        _record(record, report)  # after the move: a record that says written was
    return report


def _record(record: Path, report: Int8Report) -> None:
    append_jsonl(record, {"time": datetime.now(UTC).isoformat(timespec="seconds"), **report.to_dict()})


def _refusal(report: Int8Report, dest: Path) -> str:
    kept = f"; the file already at {dest} is left as it was" if dest.exists() else ""
    return (
        f"INT8 model refused: val {report.val.describe()}, "
        f"a drop of {report.val_drop:.2f} points > --max-drop {report.max_drop:g} "
        f"({report.val.detail()} val images); "
        f"nothing written to {dest}{kept}; the check is recorded in {report.record}; "
        "another --calib-images may do better; --force writes it anyway"
    )


def export_int8_run(
    run_dir: Path | str | RunDir,
    out: Path | str | None = None,
    cfg: Int8Config | None = None,
    *,
    parity_images: int = PARITY_IMAGES,
    overwrite: bool = False,
    resplit: bool = False,
) -> Int8Report:
    """INT8 export of a finished run to ``RUN/model.int8.onnx`` (or ``out``), checked as
    ``export_int8`` says on the run's own val and test splits, recorded in ``RUN/int8.jsonl``.

    The FP32 reference is exported afresh into the staging dir and parity-checked on val
    images; ``RUN/model.onnx`` is neither read nor written. ``out`` and ``overwrite``: as
    onnx.check_destination says; the run dir is held (RunDir.owned) while its record is written.
    ``resplit``: the run's split.json is gone, split its data anew (RunDir.split_for; recorded).
    """
    cfg = cfg or Int8Config()
    if parity_images < 1:
        raise UserError(f"--parity-images must be at least 1, got {parity_images}")
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    model, config = run.require().load_model()
    dest = Path(out) if out is not None else run.path / INT8_ONNX
    with run.owned():  # RUN/int8.jsonl is written whatever the destination
        check_destination(run, dest, overwrite)
        return _export_int8_run(run, model, config, dest, cfg, parity_images, resplit)


def _export_int8_run(
    run: RunDir, model: nn.Module, config: RunConfig, dest: Path, cfg: Int8Config, parity_images: int, resplit: bool
) -> Int8Report:
    """``export_int8_run`` once the destination is checked and the run held."""
    if model_task(config.model) == "detection":
        return _export_int8_detector(run, model, config, dest, cfg, parity_images)
    data_cfg = DataConfig.model_validate(config.data) if config.data.get("path") else None
    if data_cfg is None:
        raise UserError(f"cannot quantize {run.path}: its config.json names no data folder to calibrate on")
    for folder in (data_cfg.path, data_cfg.test_path):
        if folder is not None and not Path(folder).is_dir():
            raise UserError(
                f"cannot quantize {run.path}: its data folder {folder} is not there (INT8 export calibrates "
                "on the run's train split and checks on its val and test splits)"
            )
    data = prepare_data(data_cfg, run.split_for(resplit))
    data = data.with_normalisation(config.mean, config.std)
    if data.val_indices.size == 0:
        raise UserError(f"cannot check an INT8 model of {run.path}: its val split is empty")
    rows = spread_rows(data.train_indices, cfg.calib_images)  # every class gets a share
    calibration = np.concatenate([x.numpy() for x, _ in data.eval_batches(rows)])
    notes = []
    if rows.size < cfg.calib_images:
        notes.append(f"the train split holds {rows.size} images: calibrated on all of them, not {cfg.calib_images}")
    val = data.eval_batches(data.val_indices)
    test = data.eval_batches(data.test_indices) if data.test_indices.size else None
    with staging_dir(dest, INT8_FP32_STAGING) as tmp:
        fp32 = export_onnx(model, config.img_size, tmp / "fp32.onnx", metadata=run_metadata(config))
        parity_x = next(iter(data.eval_batches(data.val_indices[:parity_images])))[0]
        check_parity(model, fp32, parity_x)
        return export_int8(
            fp32,
            dest,
            calibration,
            val,
            test,
            run.path / INT8_RECORD,
            cfg,
            img_size=config.img_size,
            calib_source=f"{rows.size} train images of {data_cfg.path}, spread over the classes"
            + (" (split anew: --resplit)" if resplit else ""),
            extra={"run": str(run.path), "model": config.model, "resplit": resplit},
            notes=tuple(notes),
        )


def _export_int8_detector(
    run: RunDir, model: nn.Module, config: RunConfig, dest: Path, cfg: Int8Config, parity_images: int
) -> Int8Report:
    """``_export_int8_run`` for a detector: calibrated on its train images (letterboxed, no
    augmentation), checked by mAP@0.5 on its val and test splits; the file holds the raw head
    outputs, as the FP32 export does (models/detection.RawPredictions)."""
    from rscompress.data.detection_loader import DetectionBatches
    from rscompress.data.detection_prepare import prepare_detection, split_from_json
    from rscompress.models.detection import deployable

    root = Path(config.data.get("path") or "")
    if not config.data.get("path") or not root.is_dir():
        raise UserError(
            f"cannot quantize {run.path}: its data folder {root} is not there (INT8 export calibrates on the "
            "run's train split and checks on its val and test splits)"
        )
    data = split_from_json(prepare_detection(root, config.img_size), run.split_path)
    if data.split["val"].size == 0:
        raise UserError(f"cannot check an INT8 model of {run.path}: its val split is empty")

    def batches(rows: np.ndarray) -> DetectionBatches:
        return DetectionBatches(data, rows, batch_size=8, mean=config.mean, std=config.std)

    rows = spread_rows(data.split["train"], cfg.calib_images)
    calibration = np.concatenate([x.numpy() for x, _ in batches(rows)])
    notes = []
    if rows.size < cfg.calib_images:
        notes.append(f"the train split holds {rows.size} images: calibrated on all of them, not {cfg.calib_images}")
    test = batches(data.split["test"]) if data.split["test"].size else None
    model.eval()
    with staging_dir(dest, INT8_FP32_STAGING) as tmp:
        fp32 = export_onnx(deployable(model), config.img_size, tmp / "fp32.onnx", metadata=run_metadata(config))
        check_parity(deployable(model), fp32, next(iter(batches(data.split["val"][:parity_images])))[0])
        return export_int8(
            fp32,
            dest,
            calibration,
            batches(data.split["val"]),
            test,
            run.path / INT8_RECORD,
            cfg,
            img_size=config.img_size,
            calib_source=f"{rows.size} train images of {root}, spread over the split",
            extra={"run": str(run.path), "model": config.model, "task": "detection"},
            notes=tuple(notes),
            compare=partial(compare_detections, detector=model, img_size=config.img_size),
        )
