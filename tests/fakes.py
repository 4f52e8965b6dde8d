"""Tiny fake copies of the known datasets and of the ways real files go wrong (TorchGeo style).

``make_fake_dataset(tmp_path, name="ucmerced", per_class=4, size=24)`` writes the real class
folders with a few small images each, cycling through the formats a loader must handle:
JPEG, PNG, 16-bit TIFF, RGBA PNG, grayscale JPEG. Each class has its own colour and stripe
pattern, so a small model can learn the fake data (engine tests rely on that).
"""

from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from rscompress.data.datasets import KNOWN_DATASETS

FORMATS = ("jpg", "png", "tif16", "rgba", "gray")
_EXTENSION = {"jpg": ".jpg", "png": ".png", "tif16": ".tif", "rgba": ".png", "gray": ".jpg"}


def fake_pixels(class_index: int, num_classes: int, image_index: int, size: int) -> np.ndarray:
    """size×size×3 uint8: class colour × class stripe pattern + per-image noise."""
    rng = np.random.default_rng([class_index, image_index])
    colour = np.array(colorsys.hsv_to_rgb(class_index / num_classes, 0.8, 0.9)) * 255
    yy, xx = np.mgrid[:size, :size]
    period = 2 + class_index % 5
    stripes = ((xx + yy * (class_index % 3)) // period) % 2
    img = colour * (0.55 + 0.45 * stripes[..., None]) + rng.normal(0, 10, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_fake_image(path: Path, pixels: np.ndarray, fmt: str) -> Path:
    """Write ``pixels`` as ``fmt`` (one of FORMATS) at ``path`` with the format's extension."""
    path = path.with_suffix(_EXTENSION[fmt])
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "tif16":
        tifffile.imwrite(path, pixels.astype(np.uint16) * 257 + 100, photometric="rgb")
    elif fmt == "rgba":
        alpha = np.random.default_rng(0).integers(0, 256, pixels.shape[:2], dtype=np.uint8)
        Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(path)
    elif fmt == "gray":
        Image.fromarray(pixels).convert("L").save(path, quality=95)
    elif fmt == "jpg":
        Image.fromarray(pixels).save(path, quality=95)
    else:
        Image.fromarray(pixels).save(path)
    return path


def make_fake_dataset(tmp_path: Path, name: str = "ucmerced", per_class: int = 4, size: int = 24) -> Path:
    """Write ``tmp_path/name/<class>/<class>NN.<ext>`` for every class of a known dataset."""
    if name not in KNOWN_DATASETS:
        raise ValueError(f"no fake for {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    classes = KNOWN_DATASETS[name].class_names
    root = Path(tmp_path) / name
    for c, class_name in enumerate(classes):
        for i in range(per_class):
            pixels = fake_pixels(c, len(classes), i, size)
            write_fake_image(root / class_name / f"{class_name}{i:02d}", pixels, FORMATS[(c + i) % len(FORMATS)])
    return root


def make_image_folder(root: Path, class_counts: dict[str, int], size: int = 16, fmt: str = "png") -> Path:
    """A generic class-folder tree with ``class_counts[name]`` distinct images per class."""
    for c, (class_name, count) in enumerate(sorted(class_counts.items())):
        for i in range(count):
            write_fake_image(root / class_name / f"img{i:03d}", fake_pixels(c, len(class_counts), i, size), fmt)
    return root


def _jpeg_bytes(size: int) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_truncated_jpeg(path: Path, size: int = 24) -> Path:
    """A JPEG cut in half: valid header, missing data (a typical interrupted download)."""
    data = _jpeg_bytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_corrupt_image(path: Path, size: int = 24) -> Path:
    """A PNG whose compressed data is overwritten in the middle: opens, then fails to decode."""
    buf = io.BytesIO()
    Image.fromarray(fake_pixels(0, 1, 0, size)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def write_non_image(path: Path) -> Path:
    """Text in a file: with an image extension it fails to decode, without one scan lists it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not an image\n")
    return path


def write_duplicate_pair(folder: Path, stem: str = "dup", size: int = 24) -> tuple[Path, Path]:
    """Two files with different bytes (PNG and BMP) but identical decoded pixels."""
    pixels = np.random.default_rng(7).integers(0, 256, (size, size, 3), dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    first, second = folder / f"{stem}_a.png", folder / f"{stem}_b.bmp"
    Image.fromarray(pixels).save(first)
    Image.fromarray(pixels).save(second)
    return first, second


def progress_printer_killed_at(prefix: str):
    """Stand-in for ``api._progress_printer``: a kill (KeyboardInterrupt) at the first log line
    starting with ``prefix``, i.e. after the previous epoch's state was committed."""

    def printer(_quiet):
        def log(message):
            if message.startswith(prefix):
                raise KeyboardInterrupt

        return log

    return printer


class Killed(Exception):
    """What ``KillAtEpoch`` raises: a kill the test catches."""


def kill_at_epoch(epoch: int):
    """Fit-loop hooks that stop the run as it starts 0-based ``epoch``: the epochs before it are
    checkpointed, as after a kill there."""
    from rscompress.engine.trainer import TrainingHooks

    class KillAtEpoch(TrainingHooks):
        def start_epoch(self, current):
            if current == epoch:
                raise Killed

    return KillAtEpoch()
