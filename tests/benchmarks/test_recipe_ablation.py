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


def test_plain_loop_trains_and_selects_on_val(tmp_path):
    root = make_fake_dataset(tmp_path, name="rsscn7", per_class=10, size=20)
    images, labels, classes = plain_reference.load_images(root, 16)
    assert images.shape == (70, 16, 16, 3) and images.dtype == np.uint8 and len(classes) == 7
    recipe = plain_reference.VARIANTS["reference"]
    result = plain_reference.train_one(images, labels, len(classes), seed=0, recipe=type(recipe)(epochs=2))
    assert (result["n_train"], result["n_val"], result["n_test"]) == (49, 7, 14)
    assert 0 <= result["best_epoch"] < 2 and 0 <= result["top1"] <= 1


def _record(source, variant, seed, val, test):
    return {"source": source, "dataset": "d", "model": "m", "variant": variant, "seed": seed, "epochs": 60,
            "img_size": 64, "val_top1": val, "top1": test}


def test_table_gives_each_variant_its_delta_to_its_own_baseline(tmp_path, monkeypatch):
    plain, ours = tmp_path / "plain.jsonl", tmp_path / "ours.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in [
        _record("plain-reference", "reference", 0, 0.80, 0.81), _record("plain-reference", "reference", 1, 0.90, 0.91),
        _record("plain-reference", "no-nesterov", 1, 0.85, 0.86)]))
    ours.write_text(json.dumps(_record("rscompress", "default", 0, 0.82, 0.83)) + "\n")
    monkeypatch.setattr(recipe_ablation, "PLAIN_RECORDS", plain)
    monkeypatch.setattr(recipe_ablation, "RECORDS", ours)
    monkeypatch.setattr(recipe_ablation, "PRUNE_RECORDS", tmp_path / "none.jsonl")
    monkeypatch.setattr(recipe_ablation, "TABLE", tmp_path / "table.md")
    rows = {line.split("|")[4].strip(): line for line in recipe_ablation.write_table().read_text().splitlines()
            if line.startswith("| d ")}
    assert "| 0,1 | 85.00 ± 7.07 |  | 86.00 ± 7.07 |" in rows["reference"]
    assert "| -5.00 (1) |" in rows["no-nesterov"]  # against the reference's seed 1 only
    assert "| 0 | 82.00 |  | 83.00 |" in rows["default"]


def test_cells_run_the_cli_record_once_and_prune_their_parents(tmp_path, monkeypatch):
    data = make_fake_dataset(tmp_path, name="rsscn7", per_class=8, size=20)
    for name, value in {"RECORDS": tmp_path / "r.jsonl", "PRUNE_RECORDS": tmp_path / "p.jsonl",
                        "WORK": tmp_path / "work", "EPOCHS": 1, "IMG_SIZE": 16}.items():
        monkeypatch.setattr(recipe_ablation, name, value)
    monkeypatch.setitem(recipe_ablation.VARIANTS, "default", ["--batch-size", "8"])
    recipe_ablation.run_cell(data, "resnet18", "default", seed=0, threads=1)
    recipe_ablation.run_cell(data, "resnet18", "default", seed=0, threads=1)  # has a record: skipped
    (record,) = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert record["source"] == "rscompress" and record["variant"] == "default" and "--batch-size 8" in record["command"]
    recipe_ablation.prune_cell(data, "resnet18", "l1", 0.5, "default", seed=0, threads=1)
    (pruned,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert pruned["macs_kept"] == pytest.approx(0.5, abs=0.01) and pruned["parent_top1"] == record["top1"]
    with pytest.raises(SystemExit, match="no finished parent"):
        recipe_ablation.prune_cell(data, "resnet18", "l1", 0.5, "default", seed=1, threads=1)
