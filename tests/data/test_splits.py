import json
from collections import Counter

import pytest

from rscompress.data.splits import Split, class_quota, list_sha256, make_split
from rscompress.errors import UserError

FRACTIONS = (0.7, 0.1, 0.2)


def dataset(per_class=20, classes=("a", "b", "c")):
    files = [f"{c}/{c}{i:02d}.jpg" for c in classes for i in range(per_class)]
    labels = [k for k in range(len(classes)) for _ in range(per_class)]
    return files, labels, list(files), list(classes)  # groups = own path: no duplicates


def split_of(split):
    return {p: name for name, entries in split.parts().items() for p, _ in entries}


def test_fractions_are_exact_per_class_and_stratified():
    files, labels, groups, classes = dataset(20)
    split = make_split(files, labels, groups, classes, FRACTIONS, seed=0)
    for name, expected in zip(("train", "val", "test"), (14, 2, 4), strict=True):
        assert Counter(label for _, label in split.parts()[name]) == {
            0: expected,
            1: expected,
            2: expected,
        }
    assert sorted(split_of(split)) == sorted(files)


@pytest.mark.parametrize("n", range(1, 12))
def test_every_split_nonempty_per_class_from_three_images(n):
    counts = class_quota(n, FRACTIONS)
    assert sum(counts) == n
    if n >= 3:
        assert min(counts) >= 1
    assert counts[0] >= counts[2] >= counts[1] or n < 3


def test_quota_rounding_and_zero_fraction():
    assert class_quota(100, FRACTIONS) == (70, 10, 20)
    assert class_quota(4, FRACTIONS) == (2, 1, 1)
    assert class_quota(10, (0.8, 0.2, 0.0)) == (8, 2, 0)
    assert class_quota(1, FRACTIONS) == (1, 0, 0)


def test_same_seed_same_split_other_seed_differs():
    files, labels, groups, classes = dataset(20)
    a = make_split(files, labels, groups, classes, FRACTIONS, seed=3)
    b = make_split(
        list(reversed(files)),
        list(reversed(labels)),
        list(reversed(groups)),
        classes,
        FRACTIONS,
        seed=3,
    )
    assert a == b  # input order does not matter either
    assert make_split(files, labels, groups, classes, FRACTIONS, seed=4) != a


def test_duplicate_groups_stay_on_one_side():
    files, labels, groups, classes = dataset(10)
    groups[1] = groups[0]  # a/a01 is a pixel copy of a/a00 (like airplane01/airplane02)
    groups[2] = groups[0]
    for seed in range(40):
        split = make_split(files, labels, groups, classes, FRACTIONS, seed=seed)
        sides = split_of(split)
        assert sides["a/a00.jpg"] == sides["a/a01.jpg"] == sides["a/a02.jpg"]
        assert Counter(label for _, label in split.test)[0] >= 1


def test_zero_test_fraction_keeps_test_empty():
    files, labels, groups, classes = dataset(10)
    split = make_split(files, labels, groups, classes, (0.8, 0.2, 0.0), seed=0)
    assert split.test == () and len(split.train) == 24 and len(split.val) == 6


def write_tree(root, paths):
    for p in paths:
        path = root / p.removeprefix("test:")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_json_layout_and_roundtrip(tmp_path):
    files, labels, groups, classes = dataset(5)
    split = make_split(files, labels, groups, classes, FRACTIONS, seed=1)
    write_tree(tmp_path / "data", files)
    split.to_json(tmp_path / "split.json")
    data = json.loads((tmp_path / "split.json").read_text())
    assert list(data) == ["class_names", "seed", "fractions", "train", "val", "test", "sha256"]
    assert data["train"][0].keys() == {"path", "label"}
    assert data["sha256"]["test"] == list_sha256(e["path"] for e in data["test"])
    assert data["fractions"] == [0.7, 0.1, 0.2] and data["seed"] == 1
    assert Split.from_json(tmp_path / "split.json", tmp_path / "data") == split


def test_test_prefix_resolves_against_test_root(tmp_path):
    split = Split(("a",), 0, (0.8, 0.2, 0.0), (("a/1.jpg", 0),), (), (("test:a/1.jpg", 0),))
    split.to_json(tmp_path / "s.json")
    write_tree(tmp_path / "train", ["a/1.jpg"])
    write_tree(tmp_path / "test", ["a/1.jpg"])
    assert Split.from_json(tmp_path / "s.json", tmp_path / "train", tmp_path / "test") == split
    with pytest.raises(UserError, match="no test folder was given"):
        Split.from_json(tmp_path / "s.json", tmp_path / "train")


def edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["train"].pop(), "train list does not match its sha256"),
        (lambda d: d["train"][0].update(label=7), "malformed: bad train entry"),
        (lambda d: d.pop("val"), "malformed"),
        (
            lambda d: d.update(
                test=d["train"][:1],
                sha256={**d["sha256"], "test": list_sha256([d["train"][0]["path"]])},
            ),
            "listed twice",
        ),
        (
            lambda d: d.update(
                val=[{"path": "../x.jpg", "label": 0}],
                sha256={**d["sha256"], "val": list_sha256(["../x.jpg"])},
            ),
            "not relative",
        ),
    ],
    ids=["tampered", "label", "missing-key", "twice", "escape"],
)
def test_bad_split_files_are_user_errors(tmp_path, change, message):
    files, labels, groups, classes = dataset(5)
    write_tree(tmp_path / "data", files)
    make_split(files, labels, groups, classes, FRACTIONS, seed=0).to_json(tmp_path / "s.json")
    edit(tmp_path / "s.json", change)
    with pytest.raises(UserError, match=message):
        Split.from_json(tmp_path / "s.json", tmp_path / "data")


def test_missing_file_and_unreadable_split(tmp_path):
    files, labels, groups, classes = dataset(5)
    write_tree(tmp_path / "data", files)
    split = make_split(files, labels, groups, classes, FRACTIONS, seed=0)
    split.to_json(tmp_path / "s.json")
    first_missing = sorted(p for p, _ in split.train)[0]
    (tmp_path / "data" / first_missing).unlink()
    with pytest.raises(UserError, match=f"{first_missing} does not exist"):
        Split.from_json(tmp_path / "s.json", tmp_path / "data")
    with pytest.raises(UserError, match="cannot read split file"):
        Split.from_json(tmp_path / "nope.json", tmp_path / "data")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        Split.from_json(tmp_path / "bad.json", tmp_path / "data")
