"""Issue 31's harnesses: the plain reference loop and `rscompress train` variants, records and table."""

import json

import numpy as np
import pytest
import torch

from benchmarks import plain_reference, recipe_ablation
from tests.fakes import make_fake_dataset


def test_plain_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(3), 100)
    train, val, test = plain_reference.stratified_split(labels, seed=4)
    assert [len(train), len(val), len(test)] == [210, 30, 60]
    assert len(set(train) | set(val) | set(test)) == 300
    assert all(np.bincount(labels[part]).tolist() == [n] * 3 for part, n in ((train, 70), (val, 10), (test, 20)))
    assert np.array_equal(plain_reference.stratified_split(labels, seed=4)[0], train)
    assert not np.array_equal(plain_reference.stratified_split(labels, seed=5)[0], train)


def test_plain_augmentation_moves_a_batch_as_one_or_each_image_alone():
    image = torch.arange(4 * 4 * 3, dtype=torch.uint8).reshape(1, 4, 4, 3)
    batch = image.repeat(32, 1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    moved = plain_reference.augment_batch(batch, "batch", generator)
    assert all(torch.equal(moved[0], m) for m in moved)
    per_sample = plain_reference.augment_batch(batch, "sample", generator)
    assert len({bytes(m.numpy()) for m in per_sample}) > 1


def test_plain_loop_reads_rscompress_split_row_for_row(tmp_path, monkeypatch):
    root = make_fake_dataset(tmp_path, name="rsscn7", per_class=10, size=20)
    monkeypatch.setattr(recipe_ablation, "SPLITS", tmp_path / "splits")
    split_file = recipe_ablation.write_split(root, seed=3)
    _, labels, classes, keys = plain_reference.load_images(root, 16)
    parts = plain_reference.split_from_file(split_file, keys)
    written = json.loads(split_file.read_text())
    for rows, name in zip(parts, ("train", "val", "test"), strict=True):
        assert [keys[i] for i in rows] == [entry["path"] for entry in written[name]]
        assert [classes[labels[i]] for i in rows] == [written["class_names"][e["label"]] for e in written[name]]
    assert sorted(np.concatenate(parts).tolist()) == list(range(70))


def test_plain_loop_trains_and_selects_on_val(tmp_path):
    root = make_fake_dataset(tmp_path, name="rsscn7", per_class=10, size=20)
    images, labels, classes, _ = plain_reference.load_images(root, 16)
    assert images.shape == (70, 16, 16, 3) and images.dtype == np.uint8 and len(classes) == 7
    recipe = plain_reference.VARIANTS["reference"]
    result = plain_reference.train_one(images, labels, len(classes), seed=0, recipe=type(recipe)(epochs=2))
    assert (result["n_train"], result["n_val"], result["n_test"]) == (49, 7, 14)
    assert 0 <= result["best_epoch"] < 2 and 0 <= result["top1"] <= 1


def _record(source, variant, seed, val, test, **more):
    return {
        "source": source,
        "dataset": "d",
        "model": "m",
        "variant": variant,
        "seed": seed,
        "epochs": 60,
        "img_size": 64,
        "val_top1": val,
        "top1": test,
        **more,
    }


def _write_records(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_table_gives_each_variant_its_delta_to_its_own_baseline(tmp_path, monkeypatch):
    plain, ours = tmp_path / "plain.jsonl", tmp_path / "ours.jsonl"
    _write_records(
        plain,
        _record("plain-reference", "reference", 0, 0.80, 0.81),
        _record("plain-reference", "reference", 1, 0.90, 0.91),
        _record("plain-reference", "no-nesterov", 1, 0.85, 0.86),
        _record("plain-reference", "reference", 0, 0.84, 0.80, split="rscompress", model="resnet18"),
    )
    _write_records(
        ours, _record("rscompress", "default", 0, 0.82, 0.83), _record("rscompress", "cutmix1.0", 0, 0.86, 0.85)
    )
    monkeypatch.setattr(recipe_ablation, "PLAIN_RECORDS", plain)
    monkeypatch.setattr(recipe_ablation, "RECORDS", ours)
    monkeypatch.setattr(recipe_ablation, "PRUNE_RECORDS", tmp_path / "none.jsonl")
    monkeypatch.setattr(recipe_ablation, "TABLE", tmp_path / "table.md")
    table = recipe_ablation.write_table().read_text()
    rows = {line.split("|")[5].strip(): line for line in table.splitlines() if line.startswith("| d | m |")}
    assert "| plain | reference | 0,1 | 85.00 ± 7.07 |  | 86.00 ± 7.07 |" in rows["reference"]
    assert "| -5.00 (1) |" in rows["no-nesterov"]  # against the reference's seed 1 only, on its split
    assert "| 0 | 82.00 |  | 83.00 |" in rows["default"]
    # rscompress against the plain loop on rscompress's split (not on the plain loop's own)
    assert "| d | m | defaults before CutMix | 0 | 80.00 | 83.00 | -2.00 | +3.00 |" in table
    assert "| d | m | defaults (CutMix) | 0 | 80.00 | 85.00 | +2.00 | +5.00 |" in table


def test_cells_run_the_cli_record_once_and_prune_their_parents(tmp_path, monkeypatch):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=8, size=20)
    for name, value in {
        "RECORDS": tmp_path / "r.jsonl",
        "PRUNE_RECORDS": tmp_path / "p.jsonl",
        "WORK": tmp_path / "work",
        "EPOCHS": 1,
        "IMG_SIZE": 16,
    }.items():
        monkeypatch.setattr(recipe_ablation, name, value)
    monkeypatch.setitem(recipe_ablation.VARIANTS, "default", ["--batch-size", "8"])
    recipe_ablation.run_cell(data, "resnet18", "default", seed=0, threads=1)
    recipe_ablation.run_cell(data, "resnet18", "default", seed=0, threads=1)  # has a record: skipped
    (record,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert record["source"] == "rscompress" and record["variant"] == "default" and "--batch-size 8" in record["command"]
    recipe_ablation.prune_cell(data, "resnet18", "l1", 0.5, "default", seed=0, threads=1, train_parent=False)
    (pruned,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert pruned["macs_kept"] == pytest.approx(0.5, abs=0.01) and pruned["parent_top1"] == record["top1"]
    with pytest.raises(SystemExit, match="no finished parent"):
        recipe_ablation.prune_cell(data, "resnet18", "l1", 0.5, "default", seed=1, threads=1, train_parent=False)
    # A parent whose run dir is gone is trained again as `run` trains it, without a second record.
    recipe_ablation.prune_cell(data, "resnet18", "l1", 0.5, "default", seed=1, threads=1, train_parent=True)
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
    again = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[1])
    parent = json.loads((tmp_path / "work" / "rsscn7-resnet18-default-s1" / "metrics.json").read_text())
    assert again["seed"] == 1 and again["parent_top1"] == parent["top1"] and "parent_variant" not in again
    # Another variant's parents: named in the record and the run dirs, and no train record either.
    monkeypatch.setitem(recipe_ablation.VARIANTS, "cutmix1.0", ["--batch-size", "8", "--cutmix-alpha", "1"])
    recipe_ablation.prune_cell(
        data, "resnet18", "l1", 0.5, "default", 0, 1, train_parent=True, parent_variant="cutmix1.0"
    )
    mixed = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[2])
    assert mixed["parent_variant"] == "cutmix1.0" and "rsscn7-resnet18-cutmix1.0-s0 " in mixed["command"] + " "
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
