"""A detection dataset ready to train on: its images decoded once into the cache, letterboxed
to the run's square size, their boxes scaled alike, and its split.

The split is the one the data came with (VOC ImageSets, COCO per-split files, YOLO split
folders: ``given``); otherwise a seeded split by group, so that the tiles of one scene (COCO's
``source_image``) all land on one side (``grouped_split``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rscompress.data.cache import Progress, load_or_build_cache
from rscompress.data.detection import SPLITS, BadBox, DetectionData, read_detection
from rscompress.data.detection_transforms import letterbox_scale
from rscompress.errors import UserError
from rscompress.io_utils import write_text_atomic


@dataclass(frozen=True)
class PreparedDetection:
    data: DetectionData  # as read: paths, original sizes, classes, what was listed as bad
    img_size: int
    images: np.ndarray  # N×S×S×3 uint8 (memory map), letterboxed into the top-left corner
    boxes: tuple[np.ndarray, ...]  # per image N×4 float32 in the letterboxed image's pixels
    labels: tuple[np.ndarray, ...]
    split: dict[str, np.ndarray]  # train / val / test -> image indices
    split_source: str  # "given" or "grouped, seed N"
    bad_files: tuple[tuple[str, str], ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.data.class_names

    @property
    def bad_boxes(self) -> tuple[BadBox, ...]:
        return self.data.bad_boxes


def grouped_split(groups: list[str], seed: int, fractions: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Image indices per split, whole groups at a time: the groups in a seeded order fill test,
    then val, to their share of the images; the rest is train."""
    names = sorted(set(groups))
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    quota = {"test": fractions[2] * len(groups), "val": fractions[1] * len(groups)}
    taken: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for group in order:
        side = next((s for s in ("test", "val") if len(taken[s]) < quota[s] - len(members[group]) / 2), "train")
        taken[side] += members[group]
    return {s: np.asarray(sorted(taken[s]), dtype=np.int64) for s in SPLITS}


def prepare_detection(
    root: Path,
    img_size: int,
    *,
    cache_dir: Path | None = None,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    progress: Progress | None = None,
) -> PreparedDetection:
    """``root`` read (data/detection.py), decoded into the cache and split. Images that cannot be
    decoded are left out of every split and listed in ``bad_files``."""
    data = read_detection(root)
    if not data.images:
        raise UserError(f"{root} has no image with a readable annotation")
    cached = load_or_build_cache(
        [data.root / im.path for im in data.images], img_size, cache_dir, progress, letterboxed=True
    )
    bad = dict(cached.bad_files)
    for i, im in enumerate(data.images):  # boxes are in the annotation's pixels: they must be the file's
        if i not in bad and cached.sizes[i] != (im.width, im.height):
            width, height = cached.sizes[i] or (0, 0)
            bad[i] = f"its annotation says {im.width}x{im.height} px, the image is {width}x{height}"
    broken = set(bad)
    scales = [letterbox_scale(im.width, im.height, img_size) for im in data.images]
    if data.splits is not None and data.splits.get("train"):
        split = {s: np.asarray(data.splits.get(s, ()), dtype=np.int64) for s in SPLITS}
        source = "given"
    else:
        split = grouped_split([im.group for im in data.images], split_seed, fractions)
        source = f"grouped, seed {split_seed}"
    split = {s: idx[~np.isin(idx, list(broken))] for s, idx in split.items()}
    return PreparedDetection(
        data=data,
        img_size=img_size,
        images=cached.images,
        boxes=tuple((im.boxes * s).astype(np.float32) for im, s in zip(data.images, scales, strict=True)),
        labels=tuple(im.labels for im in data.images),
        split=split,
        split_source=source,
        bad_files=(*data.bad_files, *((data.images[i].path, why) for i, why in sorted(bad.items()))),
    )


def split_to_json(data: PreparedDetection, path: Path) -> None:
    """The split as image paths per part (what a resumed run trains on again)."""
    parts = {s: [data.data.images[i].path for i in idx] for s, idx in data.split.items()}
    write_text_atomic(path, json.dumps({"task": "detection", "source": data.split_source, **parts}))


def split_from_json(data: PreparedDetection, path: Path) -> PreparedDetection:
    """``data`` on the split ``split_to_json`` kept at ``path``; UserError naming an image it
    lists that the data no longer has."""
    if not path.is_file():
        raise UserError(f"{path} is missing: the run was trained on the split it held; put it back or start anew")
    kept = json.loads(path.read_text())
    at = {im.path: i for i, im in enumerate(data.data.images)}
    split = {}
    for part in SPLITS:
        missing = [p for p in kept.get(part, []) if p not in at]
        if missing:
            raise UserError(f"{path} lists {missing[0]} ({part}), which {data.data.root} no longer has")
        split[part] = np.asarray([at[p] for p in kept.get(part, [])], dtype=np.int64)
    return replace(data, split=split, split_source=kept.get("source", data.split_source))
