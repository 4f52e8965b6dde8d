"""FP32 ONNX → INT8 ONNX: ONNX Runtime static quantization, calibrated on real images.

``quantize_int8`` only converts; whether the result may be used is int8.py's accuracy check.
The settings, and why:

- ``quant_pre_process`` first (shape inference and ONNX Runtime's graph optimisations, so BN
  and the like are folded before ranges are taken and QDQ pairs placed where the fused op
  will run), as ONNX Runtime's quantization guide asks.
- QDQ format: a standard ONNX graph (QuantizeLinear/DequantizeLinear around float ops) that
  any runtime can read; ONNX Runtime fuses each pattern into an integer kernel.
- Weights QInt8, symmetric, per output channel: a pruned or BN-folded conv's channels have
  very different ranges, and one scale per tensor would crush the small ones.
- Activations QUInt8 (U8S8), measured: on a resnet18 at 64 px (Xeon with AVX-512 VNNI and
  AMX, ONNX Runtime 1.32, batch 1, 1 thread) S8S8 QDQ ran no faster than FP32 (8.8 vs 8.8 ms)
  while U8S8 took 1.5 ms, at the same val top-1 and agreement with FP32. U8S8 is the pairing
  ONNX Runtime's x86 integer kernels are built around (VPMADDUBSW / VPDPBUSD multiply
  unsigned by signed bytes).
- ``reduce_range`` (7-bit weights, against U8S8's VPMADDUBSW overflow on CPUs without VNNI):
  on, see REDUCE_RANGE below for what it did where measured.
- MinMax calibration: the ranges the images really reach. Percentile / entropy cut outliers
  but keep every activation of every image for their histograms (memory in the number of
  images), and on the UC Merced sample MinMax stayed within one val image of FP32 from 32
  calibration images up (benchmarks/int8_calibration.py).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx

from rscompress.deploy.runtime import INPUT_NAME

# 7-bit weights, measured on an AVX-512 VNNI CPU (benchmarks/int8_calibration.py, the export's
# selection at 16-512 images, 210 val images): resnet18's val drop 0.08 points on average with
# them, -0.16 without (noise: one image is 0.48); se_resnet18's 0.08 with, 1.11 without (worst
# 1.90, past the default --max-drop; agreement with FP32 0.983 vs 0.974). Without VNNI they
# also keep U8S8's VPMADDUBSW from saturating, so the same file is safe on either kind of CPU.
REDUCE_RANGE = True


def quant_settings(reduce_range: bool = REDUCE_RANGE) -> dict[str, str]:
    """The settings in words, for the INT8 file's metadata and the export record."""
    return {
        "format": "QDQ",
        "weights": "QInt8, symmetric, per channel" + (", 7-bit range" if reduce_range else ""),
        "activations": "QUInt8, asymmetric",
        "calibration": "MinMax",
        "pre_process": "quant_pre_process",
    }


# Images per calibration step: ONNX Runtime runs its calibration graph (the model plus a
# ReduceMin/ReduceMax per tensor, of which MinMax keeps only those results) one step at a time,
# so the step's batch bounds the memory whatever the number of images.
CALIB_BATCH = 16


class _Reader:
    """ONNX Runtime's CalibrationDataReader over batches of already normalised images."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def calibration_batches(images: np.ndarray, batch: int = CALIB_BATCH) -> list[np.ndarray]:
    """``images`` (N×3×H×W float32, normalised as the model expects) in slices of ``batch``."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"calibration images must be a non-empty N×3×H×W array, got shape {images.shape}")
    return [images[i : i + batch] for i in range(0, images.shape[0], batch)]


def quantize_int8(
    fp32: Path, out: Path, calibration: Iterable[np.ndarray], *, reduce_range: bool = REDUCE_RANGE
) -> Path:
    """Write the INT8 QDQ model of ``fp32`` at ``out`` (a new file, written directly: the caller
    stages it) calibrated on ``calibration``'s image batches; metadata_props carried over.
    ``reduce_range``: for the calibration benchmark, which measured the default."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="rscompress-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # ONNX Runtime logs every tensor it leaves in float at WARNING; what matters is the
        # accuracy that follows, which is checked and reported.
        quant_logger = logging.getLogger("onnxruntime.quantization")
        level = quant_logger.level
        quant_logger.setLevel(logging.ERROR)
        try:
            quant_pre_process(str(fp32), str(pre))
            quantize_static(
                str(pre),
                str(out),
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"WeightSymmetric": True},
            )
        finally:
            quant_logger.setLevel(level)
    _copy_metadata(fp32, out, quant_settings(reduce_range))
    onnx.checker.check_model(str(out), full_check=True)
    return out


def _copy_metadata(source: Path, target: Path, settings: dict[str, str]) -> None:
    """quantize_static writes a new graph without the FP32 file's metadata_props (mean, std,
    class names): a deployed INT8 file needs them as much as the FP32 one."""
    props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    model = onnx.load(str(target))
    props["quantization"] = "; ".join(f"{k}: {v}" for k, v in settings.items())
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(target))
