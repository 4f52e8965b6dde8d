"""Detection datasets read from VOC, COCO and YOLO folders (data/detection.py)."""

import json

import numpy as np
import pytest

from rscompress.cli import main
from rscompress.data.detection import detect_format, read_detection
from rscompress.errors import UserError
from tests.detection_fakes import CLASSES, CLIPPED, make_detection_dataset


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_every_layout_reads_back_the_boxes_as_drawn_with_its_splits(tmp_path, fmt):
    root, truth = make_detection_dataset(tmp_path, fmt)
    data = read_detection(root)
    assert (data.format, detect_format(root)) == (fmt, fmt) and data.class_names == CLASSES
    assert sorted(_name(im.path) for im in data.images) == sorted(truth)
    for im in data.images:
        drawn = sorted((CLASSES.index(label), *box) for label, box in truth[_name(im.path)])
        read = sorted(zip(im.labels.tolist(), *im.boxes.T.tolist(), strict=True))
        assert np.allclose(np.array(read, dtype=float), np.array(drawn, dtype=float), atol=1e-3)
        assert (im.width, im.height) == (64, 64)
    assert data.splits is not None
    by_split = {k: sorted(_name(data.images[i].path) for i in v) for k, v in data.splits.items()}
    assert by_split["train"] == sorted(n for n in truth if int(n[5]) * 2 + int(n[-1]) < 4)
    assert sum(len(v) for v in by_split.values()) == len(truth)
    assert not data.bad_boxes and not data.bad_files


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_bad_boxes_are_listed_and_left_out_never_dropped_silently(tmp_path, fmt):
    root, _ = make_detection_dataset(tmp_path, fmt, bad=True)
    data = read_detection(root)
    reasons = sorted(b.reason for b in data.bad_boxes)
    expected = ["zero area", "outside the image", "clipped to the image"]
    if fmt == "voc":  # VOC lists no classes: every name found is one
        assert data.class_names == ("ship", *CLASSES)
    else:  # COCO's categories and YOLO's names do, and category 9 / class 7 is in neither
        expected.append(f"unknown class {dict(coco=repr('9'), yolo=repr('#7'))[fmt]}")
    assert reasons == sorted(expected)
    first = next(im for im in data.images if _name(im.path) == "scene0_0")
    clipped = [b for b in data.bad_boxes if b.kept]
    assert len(clipped) == 1 and clipped[0].box == pytest.approx(tuple(float(v) for v in CLIPPED[1]), abs=1e-3)
    assert [0.0, 3.0, 10.0, 14.0] in np.round(first.boxes, 3).tolist()  # kept, clipped to the image
    # the drawn box and the clipped one (and in VOC the "ship", a class there)
    assert len(first.labels) == len(first.boxes) == (3 if fmt == "voc" else 2)


def test_tiles_of_one_scene_share_a_group_where_coco_names_it(tmp_path):
    data = read_detection(make_detection_dataset(tmp_path, "coco")[0])
    assert {im.group for im in data.images} == {"scene0", "scene1", "scene2"}
    voc = read_detection(make_detection_dataset(tmp_path, "voc")[0])
    assert len({im.group for im in voc.images}) == len(voc.images)  # no scene named: one group each


def test_an_unreadable_annotation_is_a_bad_file_and_a_plain_folder_is_no_detection_set(tmp_path):
    root, _ = make_detection_dataset(tmp_path, "voc")
    (root / "Annotations" / "scene0_0.xml").write_text("<annotation><object>")
    data = read_detection(root)
    assert data.bad_files and data.bad_files[0][0] == "Annotations/scene0_0.xml"
    assert "unreadable annotation" in data.bad_files[0][1] and len(data.images) == 5
    with pytest.raises(UserError, match="is not a detection dataset"):
        read_detection(tmp_path)


def test_data_inspect_reports_boxes_sizes_empty_images_and_bad_boxes(tmp_path, capsys):
    root, truth = make_detection_dataset(tmp_path, "yolo", bad=True)
    assert main(["data", "inspect", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["task"], report["format"], report["num_images"]) == ("detection", "yolo", len(truth))
    assert report["num_boxes"] == sum(len(b) for b in truth.values())
    assert sum(report["box_sizes"].values()) == report["num_boxes"]
    assert report["splits"] == {"train": 4, "val": 1, "test": 1} and len(report["bad_boxes"]) == 4
    assert main(["data", "inspect", str(root)]) == 0
    assert "unknown class '#7'" in capsys.readouterr().out


def test_coco_category_ids_may_be_strings(tmp_path):
    # COCO's ids are numbers; a file with names for ids is read too (the check that refuses a
    # null or a list for an id, which sorting the ids would trip on, lets these through).
    root, _ = make_detection_dataset(tmp_path, "coco", n_images=3)
    for path in (root / "annotations").glob("*.json"):
        doc = json.loads(path.read_text())
        names = {c["id"]: f"c{c['id']}" for c in doc["categories"]}
        doc["categories"] = [{"id": names[c["id"]], "name": c["name"]} for c in doc["categories"]]
        for ann in doc["annotations"]:
            ann["category_id"] = names.get(ann["category_id"], ann["category_id"])
        path.write_text(json.dumps(doc))
    data = read_detection(root)
    assert data.class_names == ("tank", "well") and not data.bad_files
