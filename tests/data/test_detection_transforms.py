"""Boxes follow their pixels through letterboxing and every flip and quarter turn."""

import numpy as np
import pytest
import torch

from rscompress.data.detection_transforms import PAD_VALUE, dihedral_boxes, letterbox, letterbox_scale
from rscompress.data.transforms import DihedralParams, apply_dihedral


def _mask_box(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("vflip", [False, True])
@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_a_box_covers_the_same_pixels_after_every_symmetry(hflip, vflip, turns):
    size, box = 16, (3, 5, 9, 7)  # x1, y1, x2, y2: an asymmetric spot anywhere but the middle
    image = np.zeros((1, size, size, 1), dtype=np.uint8)
    image[0, box[1] : box[3], box[0] : box[2]] = 1
    params = DihedralParams(torch.tensor([hflip]), torch.tensor([vflip]), torch.tensor([turns]))
    moved = apply_dihedral(torch.from_numpy(image), params).numpy()[0, :, :, 0]
    expected = _mask_box(moved.astype(bool))
    assert dihedral_boxes(np.array([box], dtype=np.float32), size, hflip, vflip, turns)[0].tolist() == expected


def test_letterbox_keeps_the_aspect_pads_grey_and_boxes_scale_alone():
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[10:20, 40:50] = 255
    out = letterbox(pixels, 32)
    scale = letterbox_scale(60, 30, 32)
    assert out.shape == (32, 32, 3) and scale == pytest.approx(32 / 60)
    assert (out[16:, :] == PAD_VALUE).all()  # 30 rows become 16, the rest is padding
    x1, y1, x2, y2 = (v * scale for v in (40, 10, 50, 20))
    inside = out[int(np.ceil(y1)) : int(y2), int(np.ceil(x1)) : int(x2)]
    assert inside.size and (inside > 200).all()
