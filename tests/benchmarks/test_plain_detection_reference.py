import json

import pytest
import torch

from benchmarks import plain_detection_reference as pdr
from tests.detection_fakes import make_detection_dataset


def test_augment_moves_boxes_with_the_pixels():
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    image[:, 4:9, 11:25] = 255  # rows 4-8, columns 11-24: box (11, 4, 25, 9)
    box = torch.tensor([[11.0, 4.0, 25.0, 9.0]])
    shapes = set()
    for seed in range(40):
        moved, moved_box = pdr.augment(image, box, torch.Generator().manual_seed(seed))
        rows, cols = torch.nonzero(moved[0]).T
        drawn = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert moved_box[0].tolist() == [float(v) for v in drawn]
        shapes.add((tuple(moved.shape), tuple(moved_box[0].tolist())))
    assert len(shapes) == 8  # every flip / turn of the dihedral group was drawn


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_trains_records_skips_and_resumes_from_its_checkpoint(tmp_path, fmt, capsys):
    root, _ = make_detection_dataset(tmp_path, fmt, n_images=9)
    results, work = tmp_path / "plain.jsonl", tmp_path / "work"
    argv = ["--data", str(root), "--seeds", "0", "--epochs", "1", "--img-size", "64", "--threads", "1"]
    argv += ["--results", str(results), "--work", str(work)]
    pdr.main(argv)
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert (record["n_train"], record["n_val"], record["n_test"]) == (6, 1, 2)
    assert record["epochs"] == 1 and len(record["history"]) == 1
    assert 0 <= record["map50"] <= 1 and record["val_map50"] == record["history"][0]["val_map50"]
    pdr.main(argv)
    assert "every cell has a record" in capsys.readouterr().out
    results.unlink()  # the run finished: a rerun takes its checkpoint and trains nothing
    pdr.main(argv)
    (again,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert again["history"] == record["history"] and again["map50"] == record["map50"]
