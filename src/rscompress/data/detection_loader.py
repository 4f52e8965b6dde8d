"""Batches of a prepared detection dataset: normalised float images and, per image, a target
dict (``boxes`` N×4 float32 pixel x1, y1, x2, y2; ``labels`` N int64), as torchvision's
detectors take them. Training batches are reshuffled each epoch (seeded) and moved by one
random flip / quarter turn per batch, boxes included (detection_transforms.dihedral_boxes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rscompress.data.detection_prepare import PreparedDetection
from rscompress.data.detection_transforms import dihedral_boxes
from rscompress.data.transforms import DihedralParams, apply_dihedral, normalize_batch, sample_dihedral
from rscompress.seeding import derived_seed

Targets = list[dict[str, torch.Tensor]]


class DetectionBatches:
    def __init__(
        self,
        data: PreparedDetection,
        indices: Sequence[int] | np.ndarray,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.data, self.indices = data, np.asarray(indices, dtype=np.int64)
        self.batch_size, self.mean, self.std = batch_size, tuple(mean), tuple(std)
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Targets]]:
        generator = torch.Generator().manual_seed(derived_seed("detection-batches", self.seed, self.epoch))
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=generator).numpy()]
        size = self.data.img_size
        for start in range(0, len(order), self.batch_size):
            rows = np.sort(order[start : start + self.batch_size])  # ascending reads suit the memmap
            pixels = torch.from_numpy(np.asarray(self.data.images[rows]))
            boxes = [self.data.boxes[i] for i in rows]
            if self.augment:  # one draw for the whole batch, as the classification loader does by default
                one = sample_dihedral(1, generator)
                n = len(rows)
                pixels = apply_dihedral(
                    pixels, DihedralParams(*(t.expand(n) for t in (one.hflip, one.vflip, one.quarter_turns)))
                )
                hflip, vflip, turns = bool(one.hflip[0]), bool(one.vflip[0]), int(one.quarter_turns[0])
                boxes = [dihedral_boxes(b, size, hflip, vflip, turns) for b in boxes]
            targets = [
                {"boxes": torch.from_numpy(b.copy()), "labels": torch.from_numpy(self.data.labels[i].copy())}
                for b, i in zip(boxes, rows, strict=True)
            ]
            yield normalize_batch(pixels, self.mean, self.std), targets
