"""Tiny synthetic detection datasets in the three layouts rscompress reads (VOC, COCO, YOLO):
rectangles ("tank") and discs ("well") on a textured background, the boxes known exactly.

``make_detection_dataset(tmp_path, "voc")`` writes one; ``SCENES`` images are cut from each of
a few scenes (COCO images name their ``source_image``). ``bad=True`` adds one box of each kind
the readers must list: zero area, wholly outside, of an unknown class, and partly outside.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("tank", "well")
SCENES = 2  # tiles per scene


def _scene(index: int, size: int) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    rng = np.random.default_rng(index)
    texture = (rng.normal(110, 25, (size, size, 3)).clip(0, 255)).astype(np.uint8)
    image = Image.fromarray(texture)
    draw = ImageDraw.Draw(image)
    boxes = []
    for k in range(1 + index % 3):
        w = int(rng.integers(size // 8, size // 3))
        x, y = (int(v) for v in rng.integers(0, size - w, 2))
        box = (x, y, x + w, y + w)
        if (index + k) % 2:
            draw.ellipse(box, fill=(230, 230, 60))
            boxes.append(("well", box))
        else:
            draw.rectangle(box, fill=(40, 40, 220))
            boxes.append(("tank", box))
    return image, boxes


_BAD = [
    ("tank", (5, 5, 5, 20)),  # zero area
    ("tank", (-40, -40, -10, -10)),  # wholly outside
    ("ship", (2, 2, 12, 12)),  # unknown class
]
CLIPPED = ("well", (-4, 3, 10, 14))  # partly outside: clipped to (0, 3, 10, 14) and kept


def make_detection_dataset(
    tmp_path: Path, fmt: str, n_images: int = 6, size: int = 64, bad: bool = False
) -> tuple[Path, dict[str, list[tuple[str, tuple[int, int, int, int]]]]]:
    """(dataset root, image name -> its good boxes as drawn). Splits: the first two thirds
    train, then val and test alternately."""
    root = tmp_path / f"det-{fmt}"
    truth: dict[str, list] = {}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(n_images):
        image, boxes = _scene(i, size)
        name = f"scene{i // SCENES}_{i % SCENES}"
        extra = [*_BAD, CLIPPED] if bad and i == 0 else []
        truth[name] = boxes + ([("well", (0, 3, 10, 14))] if extra else [])
        split = "train" if i < 2 * n_images // 3 else ("val" if i % 2 else "test")
        splits[split].append(name)
        _write(root, fmt, name, split, image, boxes + extra)
    if fmt == "voc":
        main = root / "ImageSets" / "Main"
        main.mkdir(parents=True)
        for split, names in splits.items():
            (main / f"{split}.txt").write_text("\n".join(names) + "\n")
    if fmt == "coco":
        _write_coco(root, splits)
    if fmt == "yolo":
        (root / "data.yaml").write_text("names: [tank, well]\n")
    return root, truth


_COCO: dict[str, dict] = {}


def _write(root: Path, fmt: str, name: str, split: str, image: Image.Image, boxes: list) -> None:
    size = image.size[0]
    if fmt == "voc":
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        image.save(root / "JPEGImages" / f"{name}.png")
        objects = "".join(
            f"<object><name>{label}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for label, b in boxes
        )
        xml = (
            f"<annotation><filename>{name}.png</filename><size><width>{size}</width>"
            f"<height>{size}</height><depth>3</depth></size>{objects}</annotation>"
        )
        (root / "Annotations" / f"{name}.xml").write_text(xml)
    elif fmt == "coco":
        (root / "images").mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / f"{name}.png")
        doc = _COCO.setdefault(str(root), {"images": [], "annotations": []})
        image_id = len(doc["images"]) + 1
        doc["images"].append(
            {"id": image_id, "file_name": f"{name}.png", "width": size, "height": size,
             "source_image": name.split("_")[0], "split": split}
        )  # fmt: skip
        for label, (x1, y1, x2, y2) in boxes:
            category = {"tank": 1, "well": 2}.get(label, 9)
            doc["annotations"].append(
                {"id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": category,
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            )  # fmt: skip
    else:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / split / f"{name}.png")
        lines = []
        for label, (x1, y1, x2, y2) in boxes:
            cls = {"tank": 0, "well": 1}.get(label, 7)
            cx, cy, w, h = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size
            lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + "\n")


def _write_coco(root: Path, splits: dict[str, list[str]]) -> None:
    doc = _COCO.pop(str(root))
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": 1, "name": "tank"}, {"id": 2, "name": "well"}]
    for split in splits:
        images = [im for im in doc["images"] if im["split"] == split]
        ids = {im["id"] for im in images}
        anns = [a for a in doc["annotations"] if a["image_id"] in ids]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories})
        )
