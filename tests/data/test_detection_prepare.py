"""Detection data decoded, letterboxed, boxes scaled alike, and split (data/detection_prepare.py)."""

import numpy as np
import pytest

from rscompress.data.detection_prepare import grouped_split, prepare_detection
from tests.detection_fakes import make_detection_dataset


def test_letterboxed_images_keep_their_objects_under_the_scaled_boxes(tmp_path):
    root, _ = make_detection_dataset(tmp_path, "coco", size=64)
    prepared = prepare_detection(root, 32, cache_dir=tmp_path / "cache")
    assert prepared.images.shape == (6, 32, 32, 3) and prepared.split_source == "given"
    assert {s: len(v) for s, v in prepared.split.items()} == {"train": 4, "val": 1, "test": 1}
    for i, boxes in enumerate(prepared.boxes):
        original = prepared.data.images[i].boxes
        assert np.allclose(boxes, original / 2)
        for (x1, y1, x2, y2), label in zip(boxes, prepared.labels[i], strict=True):
            inner = prepared.images[i, int(y1) + 2 : int(y2) - 1, int(x1) + 2 : int(x2) - 1].astype(int)
            colour = (40, 40, 220) if label == 0 else (230, 230, 60)  # tank: blue square, well: yellow disc
            centre = inner[inner.shape[0] // 2, inner.shape[1] // 2]
            assert np.abs(centre - colour).max() < 40


def test_an_image_whose_size_is_not_its_annotations_is_left_out_and_listed(tmp_path):
    root, _ = make_detection_dataset(tmp_path, "voc", size=64)
    xml = root / "Annotations" / "scene0_0.xml"
    xml.write_text(xml.read_text().replace("<width>64</width>", "<width>128</width>"))
    prepared = prepare_detection(root, 32, cache_dir=tmp_path / "cache")
    assert prepared.bad_files == (("JPEGImages/scene0_0.png", "its annotation says 128x64 px, the image is 64x64"),)
    index = next(i for i, im in enumerate(prepared.data.images) if im.path.endswith("scene0_0.png"))
    assert all(index not in part for part in prepared.split.values())


def test_without_given_lists_whole_scenes_are_split_by_seed():
    groups = [f"scene{i // 4}" for i in range(80)]  # 20 scenes of 4 tiles
    split = grouped_split(groups, seed=0, fractions=(0.7, 0.1, 0.2))
    sides = {s: {groups[i] for i in idx} for s, idx in split.items()}
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(80))
    assert {s: len(v) for s, v in split.items()} == {"train": 56, "val": 8, "test": 16}
    again = grouped_split(groups, 0, (0.7, 0.1, 0.2))
    assert all(np.array_equal(split[s], again[s]) for s in split)
    assert not np.array_equal(split["test"], grouped_split(groups, 1, (0.7, 0.1, 0.2))["test"])


def test_yolo_without_split_folders_is_split_by_image(tmp_path):
    root, truth = make_detection_dataset(tmp_path, "yolo", n_images=10)
    for part in ("images", "labels"):  # flatten to images/ + labels/
        for f in list((root / part).rglob("*.*")):
            f.rename(root / part / f.name)
        for d in [d for d in (root / part).iterdir() if d.is_dir()]:
            d.rmdir()
    prepared = prepare_detection(root, 32, cache_dir=tmp_path / "cache", split_seed=3)
    assert prepared.split_source == "grouped, seed 3" and prepared.data.splits is None
    assert sum(len(v) for v in prepared.split.values()) == len(truth)
    assert len(prepared.split["test"]) == pytest.approx(2, abs=1)
