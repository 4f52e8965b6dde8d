"""Object-detection datasets from a user's folder: Pascal VOC, COCO JSON or YOLO txt, the format
told from the layout (``detect_format``), read into one form (``DetectionData``).

Layouts read:

* **VOC**: ``Annotations/*.xml`` and ``JPEGImages/``; split lists, when given, in
  ``ImageSets/Main/{train,val,test}.txt`` (``trainval.txt`` only where train/val are missing).
* **COCO**: ``annotations/*.json`` (``instances_{train,val,test}.json`` name the splits; one file
  of another name is the whole set) with images under ``images/`` (or beside the JSON).
* **YOLO**: ``images/{train,val,test}/`` with ``labels/{split}/NAME.txt`` (``class cx cy w h``,
  normalised), or flat ``images/`` + ``labels/``; class names from ``data.yaml`` /
  ``dataset.yaml`` (``names``) or ``classes.txt``.

Boxes are pixel ``x1, y1, x2, y2``. A box partly outside its image is clipped to it and listed;
one with no area left, wholly outside, or of an unknown class is listed and left out of
training. Nothing is dropped without being listed (``DetectionData.bad_boxes``).
A COCO image naming its ``source_image`` (a scene cut into tiles) is grouped by it, so a split
never puts tiles of one scene on both sides; otherwise each image is its own group.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image

from rscompress.data.datasets import IMAGE_EXTENSIONS
from rscompress.errors import UserError

Format = Literal["voc", "coco", "yolo"]
SPLITS = ("train", "val", "test")
# Box sides (√area, px) the size histogram counts in; COCO's small / medium / large are < 32,
# 32-96 and >= 96.
SIZE_EDGES = (8, 16, 32, 64, 128, 256)
# Pixels a box may stick out of its image and be clipped without being listed: YOLO's
# normalised coordinates, written to 6 decimals, put boxes at the border a hair outside it.
CLIP_SLACK = 0.5


@dataclass(frozen=True)
class BadBox:
    """A box as the annotation gave it and what is wrong with it."""

    image: str  # path relative to the dataset root
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 as read
    label: str
    reason: str  # "zero area", "outside the image", "unknown class 7", "clipped to the image"

    @property
    def kept(self) -> bool:
        return self.reason == "clipped to the image"


@dataclass(frozen=True)
class DetectionImage:
    path: str  # relative to the dataset root
    width: int
    height: int
    boxes: np.ndarray  # N×4 float32, pixel x1, y1, x2, y2, every one inside the image with area
    labels: np.ndarray  # N int64 indices into DetectionData.class_names
    group: str  # the scene it was cut from, else its own path


@dataclass(frozen=True)
class DetectionData:
    format: Format
    root: Path
    class_names: tuple[str, ...]
    images: tuple[DetectionImage, ...]
    # The split lists the data came with: split name -> indices into ``images``; None when none.
    splits: dict[str, tuple[int, ...]] | None
    bad_boxes: tuple[BadBox, ...] = ()
    bad_files: tuple[tuple[str, str], ...] = ()  # (path, why) of annotations or images not read
    warnings: tuple[str, ...] = field(default_factory=tuple)


def detect_format(root: Path) -> Format | None:
    """The detection layout of ``root``, or None when it has none (a class-folder tree, say)."""
    if (root / "Annotations").is_dir() and any((root / "Annotations").glob("*.xml")):
        return "voc"
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*.json")):
        return "coco"
    if (root / "labels").is_dir() and (root / "images").is_dir():
        return "yolo"
    return None


def read_detection(root: Path) -> DetectionData:
    """The dataset at ``root`` in whichever layout it has; UserError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder")
    fmt = detect_format(root)
    if fmt is None:
        raise UserError(
            f"{root} is not a detection dataset: expected Annotations/*.xml (VOC), annotations/*.json "
            "(COCO) or images/ + labels/ (YOLO)"
        )
    return {"voc": read_voc, "coco": read_coco, "yolo": read_yolo}[fmt](root)


class _Collector:
    """Checks boxes against their image and class list, keeping the good ones and listing the rest."""

    def __init__(self, class_names: Iterable[str]):
        self.class_names = tuple(class_names)
        self._index = {name: i for i, name in enumerate(self.class_names)}
        self.bad: list[BadBox] = []

    def image(
        self, path: str, size: tuple[int, int], raw: Iterable[tuple[str, tuple[float, ...]]], group: str
    ) -> DetectionImage:
        width, height = size
        boxes, labels = [], []
        for label, (x1, y1, x2, y2) in raw:
            box = (float(x1), float(y1), float(x2), float(y2))
            if label not in self._index:
                self.bad.append(BadBox(path, box, label, f"unknown class {label!r}"))
                continue
            if not (x2 > x1 and y2 > y1):
                self.bad.append(BadBox(path, box, label, "zero area"))
                continue
            clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
            if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
                self.bad.append(BadBox(path, box, label, "outside the image"))
                continue
            if max(abs(a - b) for a, b in zip(clipped, box, strict=True)) > CLIP_SLACK:
                self.bad.append(BadBox(path, box, label, "clipped to the image"))
            boxes.append(clipped)
            labels.append(self._index[label])
        return DetectionImage(
            path=path,
            width=width,
            height=height,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            group=group,
        )


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from the file's header (nothing is decoded)."""
    with Image.open(path) as im:
        return im.size


def _split_lists(lists: dict[str, list[str]], order: list[str]) -> dict[str, tuple[int, ...]] | None:
    """Split name -> indices into ``order`` of the names each list gives."""
    if not lists:
        return None
    at = {name: i for i, name in enumerate(order)}
    return {split: tuple(at[n] for n in names if n in at) for split, names in lists.items()}


def read_voc(root: Path) -> DetectionData:
    xmls = sorted((root / "Annotations").glob("*.xml"))
    parsed: list[tuple[str, tuple[int, int] | None, list[tuple[str, tuple[float, ...]]]]] = []
    bad_files: list[tuple[str, str]] = []
    names: Counter[str] = Counter()
    for xml in xmls:
        try:
            tree = ET.parse(xml).getroot()
            filename = tree.findtext("filename") or f"{xml.stem}.jpg"
            size = tree.find("size")
            wh = None
            if size is not None and size.findtext("width") and size.findtext("height"):
                wh = (int(float(size.findtext("width") or 0)), int(float(size.findtext("height") or 0)))
            objects = []
            for obj in tree.iter("object"):
                label = (obj.findtext("name") or "").strip()
                bb = obj.find("bndbox")
                if bb is None:
                    raise ValueError(f"an object ({label!r}) has no bndbox")
                coords = tuple(float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
                objects.append((label, coords))
                names[label] += 1
        except (ET.ParseError, ValueError) as err:
            bad_files.append((str(xml.relative_to(root)), f"unreadable annotation: {err}"))
            continue
        parsed.append((f"JPEGImages/{Path(filename).name}", wh, objects))
    collector = _Collector(sorted(names))
    images, stems = [], []
    for path, wh, objects in parsed:
        if not (root / path).is_file():
            bad_files.append((path, "image named by its annotation is missing"))
            continue
        images.append(collector.image(path, wh if wh and all(wh) else _image_size(root / path), objects, path))
        stems.append(Path(path).stem)
    lists = {}
    main = root / "ImageSets" / "Main"
    for split in SPLITS:
        if (main / f"{split}.txt").is_file():
            lists[split] = (main / f"{split}.txt").read_text().split()
    if "train" not in lists and (main / "trainval.txt").is_file():
        lists["train"] = (main / "trainval.txt").read_text().split()
    return DetectionData(
        "voc",
        root,
        collector.class_names,
        tuple(images),
        _split_lists(lists, stems),
        tuple(collector.bad),
        tuple(bad_files),
    )


def read_coco(root: Path) -> DetectionData:
    files = sorted((root / "annotations").glob("*.json"))
    by_split = {f.stem.removeprefix("instances_"): f for f in files}
    named = {s: by_split[s] for s in SPLITS if s in by_split}
    sources = list(named.items()) if named else [("all", f) for f in files]
    documents: list[tuple[str, dict[str, Any]]] = []
    bad_files: list[tuple[str, str]] = []
    for split, path in sources:
        try:
            documents.append((split, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as err:
            bad_files.append((str(path.relative_to(root)), f"unreadable annotation: {err}"))
    categories: dict[int, str] = {}
    for _, doc in documents:
        for cat in doc.get("categories", []):
            if categories.get(cat["id"], cat["name"]) != cat["name"]:
                raise UserError(
                    f"COCO category id {cat['id']} is {categories[cat['id']]!r} in one file, {cat['name']!r} in another"
                )
            categories[cat["id"]] = cat["name"]
    collector = _Collector(dict.fromkeys(categories[i] for i in sorted(categories)))
    images_dir = root / "images" if (root / "images").is_dir() else root / "annotations"
    images: list[DetectionImage] = []
    lists: dict[str, list[str]] = {}
    for split, doc in documents:
        boxes: dict[int, list[tuple[str, tuple[float, ...]]]] = {}
        for ann in doc.get("annotations", []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            label = categories.get(ann["category_id"], str(ann["category_id"]))
            boxes.setdefault(ann["image_id"], []).append((label, (x, y, x + w, y + h)))
        for entry in doc.get("images", []):
            rel = str((images_dir / entry["file_name"]).relative_to(root))
            if not (root / rel).is_file():
                bad_files.append((rel, "image named by its annotation is missing"))
                continue
            size = (int(entry["width"]), int(entry["height"])) if entry.get("width") else _image_size(root / rel)
            group = str(entry.get("source_image") or rel)
            images.append(collector.image(rel, size, boxes.get(entry["id"], []), group))
            lists.setdefault(split, []).append(rel)
    splits = _split_lists(lists, [im.path for im in images]) if named else None
    return DetectionData(
        "coco", root, collector.class_names, tuple(images), splits, tuple(collector.bad), tuple(bad_files)
    )


def _yolo_names(root: Path) -> list[str] | None:
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            names = (yaml.safe_load((root / name).read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    if (root / "classes.txt").is_file():
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    return None


def read_yolo(root: Path) -> DetectionData:
    names = _yolo_names(root)
    split_dirs = [s for s in SPLITS if (root / "images" / s).is_dir()]
    parts = [(s, root / "images" / s, root / "labels" / s) for s in split_dirs] or [
        ("all", root / "images", root / "labels")
    ]
    found: list[tuple[str, str, list[tuple[int, tuple[float, ...]]]]] = []
    bad_files: list[tuple[str, str]] = []
    top = -1
    for split, images_dir, labels_dir in parts:
        for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            rel = str(image.relative_to(root))
            txt = labels_dir / f"{image.stem}.txt"
            rows: list[tuple[int, tuple[float, ...]]] = []
            try:
                for number, line in enumerate(txt.read_text().splitlines() if txt.is_file() else [], start=1):
                    if not line.strip():
                        continue
                    values = line.split()
                    if len(values) != 5:
                        raise ValueError(f"line {number} has {len(values)} values, not class cx cy w h")
                    rows.append((int(values[0]), tuple(float(v) for v in values[1:])))
                    top = max(top, rows[-1][0])
            except ValueError as err:
                bad_files.append((str(txt.relative_to(root)), f"unreadable labels: {err}"))
                continue
            found.append((split, rel, rows))
    class_names = tuple(names) if names is not None else tuple(str(i) for i in range(top + 1))
    collector = _Collector(class_names)
    images: list[DetectionImage] = []
    lists: dict[str, list[str]] = {}
    for split, rel, rows in found:
        width, height = _image_size(root / rel)
        raw = []
        for cls, (cx, cy, w, h) in rows:
            label = class_names[cls] if 0 <= cls < len(class_names) else f"#{cls}"  # "#7": not a class
            raw.append(
                (label, ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
            )
        images.append(collector.image(rel, (width, height), raw, rel))
        lists.setdefault(split, []).append(rel)
    warnings = () if names is not None else ("no data.yaml or classes.txt: classes are named by their index",)
    splits = _split_lists(lists, [im.path for im in images]) if split_dirs else None
    return DetectionData(
        "yolo", root, class_names, tuple(images), splits, tuple(collector.bad), tuple(bad_files), warnings
    )


def size_histogram(data: DetectionData) -> dict[str, int]:
    """Boxes per √area bin (px): ``<8``, ``8-16``, ..., ``>=256``."""
    sides = np.concatenate(
        [np.sqrt((im.boxes[:, 2] - im.boxes[:, 0]) * (im.boxes[:, 3] - im.boxes[:, 1])) for im in data.images]
        or [np.zeros(0)]
    )
    labels = [f"<{SIZE_EDGES[0]}"] + [f"{a}-{b}" for a, b in pairwise(SIZE_EDGES)]
    labels.append(f">={SIZE_EDGES[-1]}")
    counts = np.bincount(np.searchsorted(SIZE_EDGES, sides, side="right"), minlength=len(labels))
    return dict(zip(labels, (int(c) for c in counts), strict=True))


def inspect_detection(root: Path) -> dict[str, Any]:
    """What ``rscompress data inspect`` reports on a detection dataset (JSON-ready)."""
    data = read_detection(root)
    per_class = Counter(int(label) for im in data.images for label in im.labels)
    return {
        "root": str(data.root),
        "task": "detection",
        "format": data.format,
        "num_images": len(data.images),
        "num_classes": len(data.class_names),
        "num_boxes": int(sum(len(im.labels) for im in data.images)),
        "boxes_per_class": {name: per_class[i] for i, name in enumerate(data.class_names)},
        "empty_images": sum(1 for im in data.images if len(im.labels) == 0),
        "box_sizes": size_histogram(data),
        "splits": {k: len(v) for k, v in data.splits.items()} if data.splits is not None else None,
        "groups": len({im.group for im in data.images}),
        "bad_boxes": [
            {"image": b.image, "box": list(b.box), "label": b.label, "reason": b.reason, "kept": b.kept}
            for b in data.bad_boxes
        ],
        "bad_files": [{"path": p, "reason": r} for p, r in data.bad_files],
        "warnings": list(data.warnings),
    }
