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


# What Pillow raises for a file it cannot read as an image (zero bytes, another format's magic,
# a folder; UnidentifiedImageError is an OSError) or one past its pixel limit.
_IMAGE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def _image_size(path: Path) -> tuple[int, int]:
    """Width and height from the file's header (nothing is decoded); one of _IMAGE_ERRORS if
    it has none."""
    with Image.open(path) as im:
        return im.size


def _unreadable_image(err: Exception) -> str:
    return f"unreadable image: {getattr(err, 'strerror', None) or err}"


def _read_list(path: Path) -> str:
    """A split list or class list: a file the user wrote, so unreadable is an error naming it
    (dropped, it would silently change the splits or the classes)."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is unreadable: {getattr(err, 'strerror', None) or err}") from None


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
        except OSError as err:  # a folder, unreadable
            bad_files.append((str(xml.relative_to(root)), f"unreadable annotation: {err.strerror}"))
            continue
        parsed.append((f"JPEGImages/{Path(filename).name}", wh, objects))
    collector = _Collector(sorted(names))
    images, stems = [], []
    for path, wh, objects in parsed:
        if not (root / path).is_file():
            bad_files.append((path, "image named by its annotation is missing"))
            continue
        try:
            image_size = wh if wh and all(wh) else _image_size(root / path)
        except _IMAGE_ERRORS as err:
            bad_files.append((path, _unreadable_image(err)))
            continue
        images.append(collector.image(path, image_size, objects, path))
        stems.append(Path(path).stem)
    lists = {}
    main = root / "ImageSets" / "Main"
    for split in SPLITS:
        if (main / f"{split}.txt").is_file():
            lists[split] = _read_list(main / f"{split}.txt").split()
    if "train" not in lists and (main / "trainval.txt").is_file():
        lists["train"] = _read_list(main / "trainval.txt").split()
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
    documents: list[tuple[str, str, dict[str, Any]]] = []  # (split, file relative to root, its JSON)
    bad_files: list[tuple[str, str]] = []
    categories: dict[int | str, str] = {}
    for split, path in sources:
        rel_doc = str(path.relative_to(root))
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError(f"a JSON {type(doc).__name__}, not an object")
            names = {cat["id"]: cat["name"] for cat in doc.get("categories", [])}
            # Ordered by id below: numbers, then names (no None, no list, no true/false).
            if odd := [i for i in names if not isinstance(i, int | str) or isinstance(i, bool)]:
                raise ValueError(f"category id {odd[0]!r} is neither an integer nor a string")
        except OSError as err:  # a folder, unreadable
            bad_files.append((rel_doc, f"unreadable annotation: {err.strerror}"))
            continue
        except _MALFORMED as err:  # not JSON (or not UTF-8: a ValueError too), or not COCO's shape
            bad_files.append((rel_doc, f"unreadable annotation: {_malformed(err)}"))
            continue
        for cat_id, name in names.items():
            if categories.get(cat_id, name) != name:
                raise UserError(f"COCO category id {cat_id} is {categories[cat_id]!r} in one file, {name!r} in another")
            categories[cat_id] = name
        documents.append((split, rel_doc, doc))
    collector = _Collector(
        dict.fromkeys(categories[i] for i in sorted(categories, key=lambda i: (isinstance(i, str), i)))
    )
    images_dir = root / "images" if (root / "images").is_dir() else root / "annotations"
    images: list[DetectionImage] = []
    lists: dict[str, list[str]] = {}
    for split, rel_doc, doc in documents:
        try:
            entries = _coco_entries(doc, categories, images_dir, root)
        except _MALFORMED as err:  # a file with one malformed entry is listed whole, none of it read
            bad_files.append((rel_doc, f"unreadable annotation: {_malformed(err)}"))
            continue
        for rel, size, raw, group in entries:
            if not (root / rel).is_file():
                bad_files.append((rel, "image named by its annotation is missing"))
                continue
            try:
                size = size or _image_size(root / rel)
            except _IMAGE_ERRORS as err:
                bad_files.append((rel, _unreadable_image(err)))
                continue
            images.append(collector.image(rel, size, raw, group))
            lists.setdefault(split, []).append(rel)
    splits = _split_lists(lists, [im.path for im in images]) if named else None
    return DetectionData(
        "coco", root, collector.class_names, tuple(images), splits, tuple(collector.bad), tuple(bad_files)
    )


# A COCO file of another shape: a key missing, a list where a number goes, a bbox of 3 values,
# a file_name outside the dataset (relative_to's ValueError).
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError)


def _malformed(err: Exception) -> str:
    return f"no {err} key" if isinstance(err, KeyError) else str(err)


def _coco_entries(
    doc: dict[str, Any], categories: dict[int | str, str], images_dir: Path, root: Path
) -> list[tuple[str, tuple[int, int] | None, list[tuple[str, tuple[float, ...]]], str]]:
    """(image path relative to root, its size if the file gives it, its boxes, its group) for
    every image of one COCO document; one of _MALFORMED where the document is not COCO's shape."""
    boxes: dict[Any, list[tuple[str, tuple[float, ...]]]] = {}
    for ann in doc.get("annotations", []):
        x, y, w, h = (float(v) for v in ann["bbox"])
        label = categories.get(ann["category_id"], str(ann["category_id"]))
        boxes.setdefault(ann["image_id"], []).append((label, (x, y, x + w, y + h)))
    entries = []
    for entry in doc.get("images", []):
        rel = str((images_dir / entry["file_name"]).relative_to(root))
        size = (int(entry["width"]), int(entry["height"])) if entry.get("width") else None
        entries.append((rel, size, boxes.get(entry["id"], []), str(entry.get("source_image") or rel)))
    return entries


def _yolo_names(root: Path) -> list[str] | None:
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            try:
                loaded = yaml.safe_load(_read_list(root / name)) or {}
            except yaml.YAMLError as err:
                raise UserError(f"{root / name} is not valid YAML: {str(err).splitlines()[0]}") from None
            if not isinstance(loaded, dict):
                raise UserError(f"{root / name} is a YAML {type(loaded).__name__}; expected a mapping with names")
            names = loaded.get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    if (root / "classes.txt").is_file():
        return [line.strip() for line in _read_list(root / "classes.txt").splitlines() if line.strip()]
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
        try:
            width, height = _image_size(root / rel)
        except _IMAGE_ERRORS as err:
            bad_files.append((rel, _unreadable_image(err)))
            continue
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
    """What ``rscompress data inspect`` reports on a detection dataset (JSON-ready). Every image
    is decoded once, as for class folders: a file cut short has a good header, and reading
    sizes alone would pass it; training would then leave it out (detection_prepare)."""
    from rscompress.data.cache import decode_files

    data = read_detection(root)
    decoded = decode_files([data.root / im.path for im in data.images], None)
    undecodable = [
        (im.path, f"unreadable image: {d.error}") for im, d in zip(data.images, decoded, strict=True) if d.error
    ]
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
        "bad_files": [{"path": p, "reason": r} for p, r in (*data.bad_files, *undecodable)],
        "warnings": list(data.warnings),
    }
