import json
import shutil

import numpy as np
import pytest

from rscompress.config import DataConfig
from rscompress.data import KNOWN_DATASETS, BatchLoader, inspect_folder, prepare_data
from rscompress.errors import UserError
from tests.fakes import (
    make_fake_dataset,
    make_image_folder,
    write_corrupt_image,
    write_duplicate_pair,
    write_non_image,
    write_truncated_jpeg,
)


@pytest.fixture(scope="module")
def ucm(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("fake"), "ucmerced", per_class=4, size=24)


def config(path, tmp_path, **kw):
    return DataConfig(path=path, img_size=16, cache_dir=tmp_path / "cache", **kw)


def test_prepare_fake_ucmerced(ucm, tmp_path):
    data = prepare_data(config(ucm, tmp_path))
    n = 21 * 4
    assert data.images.shape == (n, 16, 16, 3) and data.labels.dtype == np.int64
    assert data.class_names == KNOWN_DATASETS["ucmerced"].class_names
    assert data.recognised is KNOWN_DATASETS["ucmerced"]
    assert any("2100" in w for w in data.warnings)
    idx = np.concatenate([data.train_indices, data.val_indices, data.test_indices])
    assert sorted(idx.tolist()) == list(range(n))
    for part in (data.train_indices, data.val_indices, data.test_indices):
        assert sorted(set(data.labels[part].tolist())) == list(range(21))  # 4 per class → 2/1/1
    assert len(data.mean) == len(data.std) == 3 and all(0 < s < 1 for s in data.std)
    assert data.bad_files == ()
    x, _ = next(
        iter(
            BatchLoader(
                data.images,
                data.labels,
                data.train_indices,
                8,
                shuffle=True,
                augment=True,
                mean=data.mean,
                std=data.std,
                seed=0,
            )
        )
    )
    assert x.shape == (8, 3, 16, 16) and abs(float(x.mean())) < 1.0


def test_split_is_written_and_reused(ucm, tmp_path):
    cfg = config(ucm, tmp_path)
    first = prepare_data(cfg, split_json=tmp_path / "split.json")
    assert not (tmp_path / "split.json").exists()  # the caller writes it
    first.split.to_json(tmp_path / "split.json")
    other_seed = config(ucm, tmp_path, split_seed=9)
    again = prepare_data(other_seed, split_json=tmp_path / "split.json")
    assert again.split == first.split
    np.testing.assert_array_equal(again.test_indices, first.test_indices)
    assert any("reusing" in w for w in again.warnings)
    assert prepare_data(other_seed).split != first.split


def test_reused_split_must_fit_the_folder(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    cfg = config(root, tmp_path)
    prepare_data(cfg).split.to_json(tmp_path / "split.json")
    data = json.loads((tmp_path / "split.json").read_text())
    data["train"][0]["label"] = 1 - data["train"][0]["label"]  # labels are not in the checksum
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="label b, but it is in folder a"):
        prepare_data(cfg, split_json=tmp_path / "edited.json")

    victim = data["test"][0]["path"]
    write_corrupt_image(root / victim)
    with pytest.raises(UserError, match=f"lists {victim}, which is not a usable image"):
        prepare_data(config(root, tmp_path, skip_bad=True), split_json=tmp_path / "split.json")

    shutil.copytree(root, tmp_path / "d2")
    (tmp_path / "d2" / "b").rename(tmp_path / "d2" / "c")
    with pytest.raises(UserError, match="only in the split file: b; only in the data: c"):
        prepare_data(config(tmp_path / "d2", tmp_path, skip_bad=True), split_json=tmp_path / "split.json")


def test_bad_files_listed_then_skipped(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    write_truncated_jpeg(root / "a" / "trunc.jpg")
    write_corrupt_image(root / "b" / "broken.png")
    write_non_image(root / "b" / "notes.txt")
    with pytest.raises(UserError) as err:
        prepare_data(config(root, tmp_path))
    message = str(err.value)
    assert message.startswith("3 bad files in ") and "--skip-bad" in message
    for name in ("a/trunc.jpg", "b/broken.png", "b/notes.txt"):
        assert name in message
    assert message.count("; ") == 2
    data = prepare_data(config(root, tmp_path, skip_bad=True))
    assert [p for p, _ in data.bad_files] == ["a/trunc.jpg", "b/broken.png", "b/notes.txt"]
    used = {p for entries in data.split.parts().values() for p, _ in entries}
    assert len(used) == 8 and "a/trunc.jpg" not in used


def test_duplicates_land_on_one_side(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 6, "b": 6})
    write_duplicate_pair(root / "a", "twin")
    for seed in range(8):
        split = prepare_data(config(root, tmp_path, split_seed=seed)).split
        side = {p: n for n, entries in split.parts().items() for p, _ in entries}
        assert side["a/twin_a.png"] == side["a/twin_b.bmp"]


def test_user_test_folder(tmp_path):
    train_root = make_image_folder(tmp_path / "train", {"a": 5, "b": 5})
    test_root = make_image_folder(tmp_path / "test", {"a": 2, "b": 2}, size=20)
    shutil.copy(test_root / "a" / "img000.png", train_root / "a" / "copy_of_test.png")
    cfg = config(
        train_root,
        tmp_path,
        test_path=test_root,
        train_fraction=0.8,
        val_fraction=0.2,
        test_fraction=0.0,
    )
    data = prepare_data(cfg)
    assert sorted(p for p, _ in data.split.test) == [
        "test:a/img000.png",
        "test:a/img001.png",
        "test:b/img000.png",
        "test:b/img001.png",
    ]
    assert len(data.split.train) == 8 and len(data.split.val) == 2
    assert any("copy_of_test.png" in w for w in data.warnings)
    data.split.to_json(tmp_path / "split.json")
    again = prepare_data(cfg, split_json=tmp_path / "split.json")
    np.testing.assert_array_equal(again.test_indices, data.test_indices)
    make_image_folder(tmp_path / "test2", {"a": 1, "zzz": 1})
    with pytest.raises(UserError, match=r"classes that \S+ lacks: zzz"):
        prepare_data(cfg.model_copy(update={"test_path": tmp_path / "test2"}))


def test_a_test_folder_alone_splits_the_data_folder_into_train_and_val(tmp_path):
    cfg = config(tmp_path, tmp_path, test_path=tmp_path / "test")
    assert (cfg.train_fraction, cfg.val_fraction, cfg.test_fraction) == (0.9, 0.1, 0.0)
    cfg = config(tmp_path, tmp_path, test_path=tmp_path / "test", val_fraction=0.25)
    assert (cfg.train_fraction, cfg.test_fraction) == (0.75, 0.0)
    with pytest.raises(ValueError, match="with test_path set, test_fraction must be 0"):
        config(tmp_path, tmp_path, test_path=tmp_path / "test", test_fraction=0.2)
    assert config(tmp_path, tmp_path).test_fraction == 0.2  # no test folder: 0.7 / 0.1 / 0.2


def test_missing_data_folder_is_user_error(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        prepare_data(config(tmp_path / "nowhere", tmp_path))


def test_inspect_folder(tmp_path):
    root = make_fake_dataset(tmp_path, "rsscn7", per_class=3, size=16)
    write_duplicate_pair(root / "aGrass", "twin", size=20)
    write_truncated_jpeg(root / "bField" / "cut.jpg")
    report = inspect_folder(root)
    assert report.recognised is KNOWN_DATASETS["rsscn7"]
    assert report.class_counts["aGrass"] == 5 and report.class_counts["bField"] == 4
    assert report.image_sizes[0] == (16, 16, 21) and (20, 20, 2) in report.image_sizes
    assert report.duplicate_groups == (("aGrass/twin_a.png", "aGrass/twin_b.bmp"),)
    assert [p for p, _ in report.bad_files] == ["bField/cut.jpg"]
    d = json.loads(json.dumps(report.to_dict()))
    assert d["dataset"]["name"] == "RSSCN7" and d["num_images"] == 24 and d["num_classes"] == 7
    assert d["bad_files"][0]["path"] == "bField/cut.jpg" and d["warnings"]


def test_whole_folder_with_a_runs_class_list(tmp_path):
    root = make_image_folder(tmp_path / "other", {"b": 2, "c": 3})
    run_classes = ("a", "b", "c")
    data = prepare_data(config(root, tmp_path), class_names=run_classes, whole_folder=True)
    assert data.class_names == run_classes
    assert data.train_indices.size == data.val_indices.size == 0
    assert data.all_indices.tolist() == list(range(5))
    assert data.labels[data.all_indices].tolist() == [1, 1, 2, 2, 2]
    renormed = data.with_normalisation((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    assert renormed.mean == (0.1, 0.2, 0.3) and renormed.images is data.images
    with pytest.raises(UserError, match=r"has classes that the given class list lacks: c"):
        prepare_data(config(root, tmp_path), class_names=("a", "b"), whole_folder=True)


def test_linked_folders_and_broken_links_in_the_data_report_and_skip_bad(tmp_path):
    """What the scan left out is said where the data is reported (``data inspect``, metrics'
    data_warnings); a broken link is a bad file that --skip-bad leaves out."""
    root = make_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    (root / "a" / "loop").symlink_to(root)
    (root / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(UserError, match=r"1 bad file .*b/gone\.png \(broken link"):
        prepare_data(config(root, tmp_path))
    data = prepare_data(config(root, tmp_path, skip_bad=True))
    assert len(data.labels) == 8 and sorted(np.bincount(data.labels)) == [4, 4]
    assert [p for p, _ in data.bad_files] == ["b/gone.png"]
    assert any("a/loop" in w and "not followed" in w for w in data.warnings)
    report = inspect_folder(root).to_dict()
    assert report["num_images"] == 8 and any("a/loop" in w for w in report["warnings"])
    assert [b["path"] for b in report["bad_files"]] == ["b/gone.png"]
