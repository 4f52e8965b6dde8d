"""Batches straight from the decoded uint8 array: gather, augment, normalise, all vectorised.

The order and augmentation of epoch ``e`` are drawn from a generator seeded by ``(seed, e)``
alone, so a run resumed at epoch ``e`` in a fresh process sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rscompress.config import AugmentDraw, DataConfig
from rscompress.data.transforms import (
    DihedralParams,
    apply_dihedral,
    normalize_batch,
    sample_dihedral,
)
from rscompress.seeding import derived_seed


class BatchLoader:
    """Yields ``(x, y)``: x float32 B×3×H×W normalised, y int64 B.

    ``indices`` are rows of ``images``/``labels`` that form this split. With ``world_size > 1``
    each rank takes every ``world_size``-th position of the epoch's permutation, padded by
    wrapping around so all ranks get the same number of batches (as ``DistributedSampler``);
    the padding repeats a few samples, so evaluate on a single rank for exact metrics.
    ``augment_draw="sample"`` draws the augmentation per position of the global permutation,
    so a sample's view does not depend on ``world_size``; ``"batch"`` draws one symmetry per
    batch (of each rank) and moves the whole batch with it.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        indices: np.ndarray | Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        augment_draw: AugmentDraw = DataConfig.model_fields["augment_draw"].default,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be N×H×W×3 uint8, got {images.shape} {images.dtype}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if augment and images.shape[1] != images.shape[2]:
            raise ValueError(f"augmentation needs square images, got {images.shape[1:3]}")
        if augment_draw not in ("batch", "sample"):
            raise ValueError(f"augment_draw must be 'batch' or 'sample', got {augment_draw!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self._images = images
        self._labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self._indices = np.asarray(indices, dtype=np.int64)
        if self._indices.size == 0:
            raise ValueError("BatchLoader needs at least one index")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.augment_draw = augment_draw
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(self._indices.size / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def _epoch_plan(self) -> tuple[np.ndarray, DihedralParams | None]:
        """This rank's rows of ``images`` for the epoch, in order, and their augmentation, one
        entry per row (with ``augment_draw="batch"``, every row of a batch has its batch's)."""
        n = self._indices.size
        generator = torch.Generator().manual_seed(derived_seed("loader", self.seed, self.epoch))
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        padded = torch.arange(self.samples_per_rank * self.world_size) % n
        mine = padded[self.rank :: self.world_size]
        rows = self._indices[order[mine].numpy()]
        if not self.augment:
            return rows, None
        if self.augment_draw == "batch":
            # Batch b of rank r takes draw b·world_size + r: every rank's batch its own view.
            draws = sample_dihedral(len(self) * self.world_size, generator)
            rows = rows[: len(self) * self.batch_size]  # without a dropped ragged batch: never yielded
            batch_of_row = torch.arange(len(rows)) // self.batch_size
            return rows, draws[batch_of_row * self.world_size + self.rank]
        return rows, sample_dihedral(n, generator)[mine]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows, params = self._epoch_plan()
        for b in range(len(self)):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            batch_rows = rows[batch]
            x = torch.from_numpy(np.asarray(self._images[batch_rows]))
            if params is not None:
                x = apply_dihedral(x, params[batch])
            yield (
                normalize_batch(x, self.mean, self.std, self.channels_last),
                self._labels[torch.from_numpy(batch_rows)],
            )
