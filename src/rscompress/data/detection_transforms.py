"""Geometry of detection images and their boxes: letterboxing to the run's square size, and the
flips and quarter turns of training augmentation applied to boxes exactly as
``transforms.apply_dihedral`` applies them to pixels.

Boxes are N×4 float ``x1, y1, x2, y2`` in pixels; an S×S image spans [0, S] on both axes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PAD_VALUE = 114  # the grey letterbox padding (YOLO's): far from both black and white


def letterbox_scale(width: int, height: int, size: int) -> float:
    """The factor that fits a width×height image into size×size with its aspect kept."""
    return size / max(width, height)


def letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 uint8 scaled by ``letterbox_scale`` (Pillow bilinear, antialiased) into the top-left
    corner of a size×size canvas of ``PAD_VALUE``: boxes map by the scale alone, no offset."""
    height, width = pixels.shape[:2]
    scale = letterbox_scale(width, height, size)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    resized = (
        pixels
        if (w, h) == (width, height)
        else np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR))
    )
    canvas[:h, :w] = resized
    return canvas


def dihedral_boxes(boxes: np.ndarray, size: int, hflip: bool, vflip: bool, quarter_turns: int) -> np.ndarray:
    """``boxes`` of an S×S image moved with it by ``apply_dihedral``'s draw (horizontal flip,
    vertical flip, then ``quarter_turns`` turns counter-clockwise as ``np.rot90``)."""
    x1, y1, x2, y2 = (boxes[:, i].copy() for i in range(4))
    if hflip ^ vflip:  # apply_dihedral's reduction: a vertical flip is a horizontal one + a half turn
        x1, x2 = size - x2, size - x1
    for _ in range((quarter_turns + 2 * int(vflip)) % 4):
        # np.rot90 sends pixel (row r, column c) to (S - 1 - c, r): x' = y, y' = S - x.
        x1, y1, x2, y2 = y1, size - x2, y2, size - x1
    return np.stack([x1, y1, x2, y2], axis=1).astype(boxes.dtype, copy=False)
