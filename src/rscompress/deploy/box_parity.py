"""Parity of an exported detector at the level a user sees: boxes. The file holds the raw head
outputs (models/detection.RawPredictions); decoded by the detector's own post-processing
(``detections_from_raw``), its boxes must be the PyTorch model's: each matched by class and IoU,
its score within a tolerance. A box may go unmatched only where a rounding-sized score change
can legitimately drop it: within ``score_atol`` of the detector's score threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from rscompress.deploy.runtime import INPUT_NAME, OUTPUT_NAME, cpu_session
from rscompress.errors import UserError

MIN_IOU = 0.99
SCORE_ATOL = 1e-3
SAME_CORNERS_PX = 1e-3


class BoxParityError(UserError):
    """The exported detector's boxes are not the PyTorch model's."""


@dataclass(frozen=True)
class BoxParity:
    n_images: int
    boxes_torch: int  # boxes PyTorch kept over all images
    matched: int  # of those, found in the ONNX file's boxes (same class, IoU >= min_iou)
    unmatched_at_threshold: int  # unmatched, but scored within score_atol of the threshold
    worst_iou: float  # the lowest IoU of a matched pair (1.0 when there is none)
    max_score_diff: float
    min_iou: float
    score_atol: float

    @property
    def ok(self) -> bool:
        return (
            self.matched + self.unmatched_at_threshold == self.boxes_torch
            and self.worst_iou >= self.min_iou
            and self.max_score_diff <= self.score_atol
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pairs(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[tuple[int, int, float]]:
    """Greedy matches (ref index, got index, IoU), highest-scored reference box first, each got
    box used once, same class only."""
    if len(ref["boxes"]) == 0 or len(got["boxes"]) == 0:
        return []
    iou = box_iou(ref["boxes"], got["boxes"])
    # Degenerate (zero-area) boxes have no IoU even with themselves: the same corners are a match.
    iou[(ref["boxes"][:, None, :] - got["boxes"][None, :, :]).abs().amax(-1) <= SAME_CORNERS_PX] = 1.0
    iou[ref["labels"][:, None] != got["labels"][None, :]] = -1.0
    pairs, used = [], set()
    for i in torch.argsort(ref["scores"], descending=True).tolist():
        candidates = [(float(iou[i, j]), j) for j in range(iou.shape[1]) if j not in used and iou[i, j] > 0.5]
        if candidates:
            best, j = max(candidates)
            used.add(j)
            pairs.append((i, j, best))
    return pairs


def check_box_parity(
    detector: nn.Module,
    onnx_path: Path | str,
    images: torch.Tensor,
    min_iou: float = MIN_IOU,
    score_atol: float = SCORE_ATOL,
) -> BoxParity:
    """``detector``'s boxes on ``images`` (N×3×S×S, normalised) against those decoded from
    ``onnx_path``'s raw outputs in ONNX Runtime; BoxParityError when they differ."""
    from rscompress.models.detection import detections_from_raw

    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad():
            reference = detector(list(images))
        session = cpu_session(onnx_path, threads=torch.get_num_threads())
        raw = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy().astype(np.float32)})[0])
        decoded = detections_from_raw(detector, raw, images.shape[-1])
    finally:
        detector.train(was_training)
    threshold = float(getattr(detector, "score_thresh", 0.0))
    total = matched = near_threshold = 0
    worst_iou, max_diff = 1.0, 0.0
    for ref, got in zip(reference, decoded, strict=True):
        pairs = _pairs(ref, got)
        total += len(ref["boxes"])
        matched += len(pairs)
        for i, j, iou in pairs:
            worst_iou = min(worst_iou, iou)
            max_diff = max(max_diff, abs(float(ref["scores"][i]) - float(got["scores"][j])))
        unmatched = set(range(len(ref["boxes"]))) - {i for i, _, _ in pairs}
        near_threshold += sum(1 for i in unmatched if float(ref["scores"][i]) - threshold <= score_atol)
    parity = BoxParity(len(images), total, matched, near_threshold, worst_iou, max_diff, min_iou, score_atol)
    if not parity.ok:
        raise BoxParityError(
            f"box parity failed for {onnx_path}: {parity.matched} of {parity.boxes_torch} PyTorch boxes found "
            f"in the file's ({parity.unmatched_at_threshold} more at the score threshold), worst IoU "
            f"{parity.worst_iou:.4f} (min {min_iou:g}), largest score difference {parity.max_score_diff:.2g} "
            f"(atol {score_atol:g}) over {parity.n_images} images"
        )
    return parity
