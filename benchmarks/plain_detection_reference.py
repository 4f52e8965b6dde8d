"""A plain torchvision detection loop, no rscompress code in its training or evaluation: the
reference rscompress's detector parents (benchmarks/detection.yaml) must match.

    python -m benchmarks.plain_detection_reference --data ../shared/data/nepu_owod --seeds 0 --threads 1

What a torchvision user would write: FCOS as torchvision builds it (its FCOSHead: four shared
3×3 convolutions with GroupNorm(32); an FPN without norm layers, P6-P7 added) on a
MobileNetV3-Large body from scratch, tapped at the same blocks and with the same FPN width (96)
as rscompress's ``fcos_mobilenet_v3``; the dataset's own split lists (VOC ``ImageSets/Main``,
COCO ``annotations/instances_{split}.json``); each image shrunk once (PIL bilinear) so its long
side is ``--img-size``, then torchvision's own transform (ImageNet mean/std, batches padded);
one random flip / flip / quarter turn per image; SGD as torchvision's detection references train
FCOS (momentum 0.9, weight decay 1e-4 on every parameter, lr 0.01 per 16 images scaled to the
batch, linear warm-up over the first epoch, ×0.1 at 16/26 and 22/26 of the epochs), float32;
torchmetrics' COCO mAP@0.5 on val after every epoch, the best epoch tested once. torchvision's
FCOS defaults (score threshold 0.2, 100 detections per image) hold here as in rscompress.

After every epoch a checkpoint goes to ``--work``: a killed run resumes from its last finished
epoch. Each finished (dataset, seed, epochs, img_size) appends one record to ``--results`` and
is skipped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from benchmarks.records import append_record, cpu_name, git_commit, read_records

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Recipe:
    epochs: int = 36  # rscompress's detector parents'
    batch_size: int = 8
    lr_per_16_images: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[float, float] = (16 / 26, 22 / 26)  # of the epochs; torchvision's 16 and 22 of 26

    @property
    def lr(self) -> float:
        return self.lr_per_16_images * self.batch_size / 16


@dataclass
class Split:
    images: list[torch.Tensor]  # 3×H×W uint8, long side img_size
    boxes: list[torch.Tensor]  # N×4 float32 x1, y1, x2, y2 in those pixels
    labels: list[torch.Tensor]  # N int64, 1-based (0 is torchvision's background)


def _shrunk(path: Path, img_size: int) -> tuple[torch.Tensor, float]:
    with Image.open(path) as file:
        im = file.convert("RGB")
    scale = img_size / max(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous(), scale


def _split(files: list[tuple[Path, list[list[float]], list[int]]], img_size: int) -> Split:
    out = Split([], [], [])
    for path, boxes, labels in files:
        image, scale = _shrunk(path, img_size)
        out.images.append(image)
        out.boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale)
        out.labels.append(torch.tensor(labels, dtype=torch.int64))
    return out


def read_voc(root: Path, img_size: int) -> tuple[dict[str, Split], list[str]]:
    entries: dict[str, list] = {}
    classes: list[str] = []
    for split in SPLITS:
        entries[split] = []
        for name in (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split():
            tree = ET.parse(root / "Annotations" / f"{name}.xml").getroot()
            boxes, labels = [], []
            for obj in tree.iter("object"):
                bb = obj.find("bndbox")
                assert bb is not None, f"{name}.xml: an object without a bndbox"
                boxes.append([float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")])
                label = obj.findtext("name", "")
                if label not in classes:
                    classes.append(label)
                labels.append(label)
            file = tree.findtext("filename", f"{name}.jpg")
            entries[split].append((root / "JPEGImages" / file, boxes, labels))
    classes.sort()
    return {
        split: _split([(p, b, [classes.index(c) + 1 for c in ls]) for p, b, ls in files], img_size)
        for split, files in entries.items()
    }, classes


def read_coco(root: Path, img_size: int) -> tuple[dict[str, Split], list[str]]:
    splits, classes = {}, []
    for split in SPLITS:
        doc = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        categories = sorted(doc["categories"], key=lambda c: c["id"])
        classes = [c["name"] for c in categories]
        label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
        per_image: dict[int, list] = {im["id"]: [] for im in doc["images"]}
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            per_image[a["image_id"]].append(([x, y, x + w, y + h], label_of[a["category_id"]]))
        files = [
            (root / "images" / im["file_name"], [b for b, _ in objects], [c for _, c in objects])
            for im in doc["images"]
            for objects in [per_image[im["id"]]]
        ]
        splits[split] = _split(files, img_size)
    return splits, classes


def read_dataset(root: Path, img_size: int) -> tuple[dict[str, Split], list[str]]:
    if (root / "ImageSets" / "Main").is_dir():
        return read_voc(root, img_size)
    if (root / "annotations").is_dir():
        return read_coco(root, img_size)
    raise SystemExit(f"--data {root}: neither a VOC folder (ImageSets/Main) nor a COCO one (annotations/)")


def augment(image: torch.Tensor, boxes: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random horizontal flip, vertical flip and counter-clockwise quarter turn of a C×H×W
    image, its x1, y1, x2, y2 boxes moved alike."""
    boxes = boxes.clone()
    if torch.randint(2, (1,), generator=g):
        image, boxes[:, [0, 2]] = image.flip(2), image.shape[2] - boxes[:, [2, 0]]
    if torch.randint(2, (1,), generator=g):
        image, boxes[:, [1, 3]] = image.flip(1), image.shape[1] - boxes[:, [3, 1]]
    for _ in range(int(torch.randint(4, (1,), generator=g))):
        # torch.rot90 over (H, W): output pixel (row i, col j) is input (row j, col W-1-i).
        width = image.shape[2]
        image = torch.rot90(image, 1, (1, 2))
        boxes = torch.stack([boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], 1)
    return image, boxes


def build_model(num_classes: int, img_size: int) -> FCOS:
    body = torchvision.models.mobilenet_v3_large().features
    backbone = BackboneWithFPN(body, {"6": "0", "12": "1", "16": "2"}, [40, 112, 960], 96, LastLevelP6P7(96, 96))
    return FCOS(backbone, num_classes + 1, min_size=img_size, max_size=img_size)


@torch.no_grad()
def evaluate(model: FCOS, data: Split) -> dict[str, float]:
    model.eval()
    metric = MeanAveragePrecision(iou_type="bbox")
    for start in range(0, len(data.images), 8):
        rows = range(start, min(start + 8, len(data.images)))
        predictions = model([data.images[i].float() / 255 for i in rows])
        metric.update(predictions, [{"boxes": data.boxes[i], "labels": data.labels[i]} for i in rows])
    result = metric.compute()
    return {"map50": float(result["map_50"]), "map": float(result["map"]), "map_small": float(result["map_small"])}


def train_cell(splits: dict[str, Split], n_classes: int, seed: int, img_size: int, recipe: Recipe, work: Path) -> dict:
    """Train, resuming from ``work/checkpoint.pt``; the best val epoch tested once."""
    torch.manual_seed(seed)
    model = build_model(n_classes, img_size)
    train = splits["train"]
    steps = -(-len(train.images) // recipe.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    milestones = [round(m * recipe.epochs) * steps for m in recipe.milestones]

    def factor(step: int) -> float:  # torchvision's references: linear warm-up over the first epoch
        warm = 1.0 if step >= steps else 1e-3 + (1 - 1e-3) * step / steps
        return warm * 0.1 ** sum(step >= m for m in milestones)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {"epoch": 0, "best_val": -1.0, "best_epoch": -1, "best_model": None, "history": []}
    state["seconds"] = 0.0
    checkpoint = work / "checkpoint.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        g.set_state(saved["generator"])
        state = saved["state"]
    for epoch in range(state["epoch"], recipe.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train.images), generator=g).tolist()
        losses = []
        for step in range(steps):
            images, targets = [], []
            for i in order[step * recipe.batch_size : (step + 1) * recipe.batch_size]:
                image, boxes = augment(train.images[i], train.boxes[i], g)
                images.append(image.float() / 255)
                targets.append({"boxes": boxes, "labels": train.labels[i]})
            loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        val = evaluate(model, splits["val"])
        state["seconds"] += time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), **{f"val_{k}": v for k, v in val.items()}}
        state["history"].append(row)
        if val["map50"] > state["best_val"]:
            best = {k: v.clone() for k, v in model.state_dict().items()}  # state_dict() aliases the live weights
            state.update(best_val=val["map50"], best_epoch=epoch, best_model=best)
        state["epoch"] = epoch + 1
        print(f"epoch {epoch + 1}/{recipe.epochs}: val mAP@0.5 {val['map50']:.4f}", flush=True)
        work.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "generator": g.get_state(), "state": state},
            checkpoint.with_suffix(".tmp"),
        )  # fmt: skip
        os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
    model.load_state_dict(state["best_model"])
    test = evaluate(model, splits["test"])
    return {
        "val_map50": state["best_val"],
        **test,
        "best_epoch": state["best_epoch"],
        "seconds": state["seconds"],  # training and val evaluations
        "history": state["history"],
        **{f"n_{s}": len(splits[s].images) for s in SPLITS},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plain_detection_reference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="a VOC or COCO detection folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/plain_detection_reference.jsonl"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work/plain_detection_reference"))
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    torch.set_num_threads(args.threads)
    recipe = Recipe(epochs=args.epochs)
    dataset = args.data.resolve().name
    done = {(r["dataset"], r["seed"], r["epochs"], r["img_size"]) for r in read_records(args.results)}
    todo = [s for s in args.seeds if (dataset, s, recipe.epochs, args.img_size) not in done]
    if not todo:
        print("every cell has a record")
        return
    splits, classes = read_dataset(args.data, args.img_size)
    for seed in todo:
        work = args.work / f"{dataset}-s{seed}-e{recipe.epochs}-{args.img_size}"
        result = train_cell(splits, len(classes), seed, args.img_size, recipe, work)
        record = {
            "source": "plain-detection-reference",
            "dataset": dataset,
            "model": "torchvision FCOS, MobileNetV3-Large body, GroupNorm head",
            "seed": seed,
            "img_size": args.img_size,
            "epochs": recipe.epochs,
            **result,
            "recipe": asdict(recipe),
            "threads": args.threads,
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "commit": git_commit(),
        }
        append_record(args.results, record)
        print(f"{dataset} seed {seed}: val mAP@0.5 {result['val_map50']:.4f} test {result['map50']:.4f}")


if __name__ == "__main__":
    main()
