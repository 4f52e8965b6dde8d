"""Batch-level tensor ops: normalisation, overhead-imagery augmentation, channel statistics.

Everything works on whole batches of uint8 B×H×W×3 CPU tensors (the cache layout), so the
loader does no per-image Python work. Randomness comes from an explicit ``torch.Generator``:
the same generator state gives the same augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

Triple = tuple[float, float, float]


def normalize_batch(
    batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False
) -> torch.Tensor:
    """uint8 B×H×W×3 → float32 B×3×H×W, ``(x / 255 - mean) / std`` with mean/std on the 0–1 scale.

    Two numpy passes (scale while casting, then shift) into the final layout; see
    ``apply_dihedral`` for why numpy. With ``channels_last`` the result is a B×3×H×W view of
    B×H×W×3 memory, which is what ``torch.channels_last`` means.
    """
    src = batch.numpy()
    b, h, w, _ = src.shape
    std_arr = np.asarray(std, dtype=np.float32)
    scale = 1.0 / (255.0 * std_arr)
    shift = np.asarray(mean, dtype=np.float32) / std_arr
    if channels_last:
        out = np.empty((b, h, w, 3), dtype=np.float32)
        np.multiply(src, scale, out=out)
        out -= shift
        return torch.from_numpy(out).permute(0, 3, 1, 2)
    out = np.empty((b, 3, h, w), dtype=np.float32)
    np.multiply(src.transpose(0, 3, 1, 2), scale[:, None, None], out=out)
    out -= shift[:, None, None]
    return torch.from_numpy(out)


@dataclass(frozen=True)
class DihedralParams:
    """Per-sample flips and quarter turns. Together they draw uniformly from the 8 symmetries
    of a square, all of which are valid views of a nadir image (there is no 'up')."""

    hflip: torch.Tensor  # bool (B,)
    vflip: torch.Tensor  # bool (B,)
    quarter_turns: torch.Tensor  # int64 (B,), k in {0, 1, 2, 3}

    def __getitem__(self, index: slice | torch.Tensor) -> DihedralParams:
        return DihedralParams(self.hflip[index], self.vflip[index], self.quarter_turns[index])

    def __len__(self) -> int:
        return len(self.hflip)


def sample_dihedral(n: int, generator: torch.Generator) -> DihedralParams:
    return DihedralParams(
        hflip=torch.randint(0, 2, (n,), generator=generator).bool(),
        vflip=torch.randint(0, 2, (n,), generator=generator).bool(),
        quarter_turns=torch.randint(0, 4, (n,), generator=generator),
    )


def apply_dihedral(batch: torch.Tensor, params: DihedralParams) -> torch.Tensor:
    """Flip and rotate each image of a square B×H×W×C CPU batch (a new tensor; input untouched).

    Per sample: horizontal flip, then vertical flip, then ``k`` quarter turns. The 16 draws
    reduce to the 8 symmetries (a vertical flip is a horizontal flip plus a half turn), so the
    batch is split into at most 8 groups and each group is moved with one array copy. This runs
    in numpy: single-threaded copies of small uint8 arrays are several times faster than torch's
    masked index ops, which pay for intra-op threading on tensors this small.
    """
    if batch.shape[1] != batch.shape[2]:
        raise ValueError(f"quarter turns need square images, got {tuple(batch.shape[1:3])}")
    if len(params) != batch.shape[0]:
        raise ValueError(f"{len(params)} augmentation params for a batch of {batch.shape[0]}")
    flip = (params.hflip ^ params.vflip).numpy()
    turns = ((params.quarter_turns + 2 * params.vflip.long()) % 4).numpy()
    symmetry = flip * 4 + turns
    src = batch.numpy()
    out = np.empty_like(src)
    for code in np.unique(symmetry):
        rows = np.flatnonzero(symmetry == code)
        group = src[rows]
        if code >= 4:
            group = group[:, :, ::-1]
        out[rows] = np.rot90(group, code % 4, axes=(1, 2))
    return torch.from_numpy(out)


def channel_mean_std(
    images: np.ndarray, indices: Sequence[int] | np.ndarray, pixels_per_chunk: int = 1 << 22
) -> tuple[Triple, Triple]:
    """Per-channel mean and std (0–1 scale) of ``images[indices]`` (N×H×W×3 uint8).

    Counts a 256-bin histogram per channel, chunk by chunk: exact, and memory stays at one
    chunk of uint8 however large the (memory-mapped) array is. A channel with zero spread gets
    std 1/255 so normalising never divides by zero.
    """
    idx = np.sort(np.asarray(indices, dtype=np.int64))  # ascending reads are kind to a memmap
    if idx.size == 0:
        raise ValueError("channel_mean_std needs at least one image")
    per_image = images.shape[1] * images.shape[2]
    chunk = max(1, pixels_per_chunk // per_image)
    hist = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, idx.size, chunk):
        block = np.asarray(images[idx[start : start + chunk]])
        for c in range(3):
            hist[c] += np.bincount(block[..., c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = hist.sum(axis=1)
    mean = (hist * values).sum(axis=1) / total
    var = (hist * values**2).sum(axis=1) / total - mean**2
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1.0 / 255.0)
    return (
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(std[0]), float(std[1]), float(std[2])),
    )
