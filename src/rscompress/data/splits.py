"""Stratified, seeded, duplicate-aware train/val/test splits, stored as ``split.json``.

Paths are posix paths relative to the data folder. With a user-given test folder, its images
are written as ``"test:<path relative to the test folder>"`` so a file list never mixes up the
two roots (``class/a.jpg`` may exist in both).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from rscompress.errors import UserError
from rscompress.io_utils import write_text_atomic

TEST_PREFIX = "test:"
SPLIT_NAMES = ("train", "val", "test")

Entry = tuple[str, int]  # (path, label)


@dataclass(frozen=True)
class Split:
    class_names: tuple[str, ...]
    seed: int
    fractions: tuple[float, float, float]  # train, val, test as asked for (per class it is rounded)
    train: tuple[Entry, ...]
    val: tuple[Entry, ...]
    test: tuple[Entry, ...]

    def parts(self) -> dict[str, tuple[Entry, ...]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def to_dict(self) -> dict:
        parts = self.parts()
        return {
            "class_names": list(self.class_names),
            "seed": self.seed,
            "fractions": list(self.fractions),
            **{name: [{"path": p, "label": label} for p, label in parts[name]] for name in SPLIT_NAMES},
            "sha256": {name: list_sha256(p for p, _ in parts[name]) for name in SPLIT_NAMES},
        }

    def to_json(self, path: Path) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_json(
        cls,
        path: Path,
        root: Path,
        test_root: Path | None = None,
        class_names: Sequence[str] | None = None,
    ) -> Split:
        """Read a split file, check its checksums, and check that every file it names exists.

        ``root`` resolves plain paths; ``test_root`` resolves ``test:`` paths. With
        ``class_names``, the file must be for exactly these classes (checked before the files,
        since a renamed class would otherwise show up as a missing file).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"cannot read split file {path}: {e.strerror}") from None
        except ValueError as e:
            raise UserError(f"split file {path} is not valid JSON: {e}") from None
        try:
            split = _from_dict(data)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"split file {path} is malformed: {e}") from None

        for name, entries in split.parts().items():
            if list_sha256(p for p, _ in entries) != data["sha256"][name]:
                raise UserError(f"split file {path}: the {name} list does not match its sha256 (edited?)")
        if class_names is not None and split.class_names != tuple(class_names):
            only_split = sorted(set(split.class_names) - set(class_names))
            only_folder = sorted(set(class_names) - set(split.class_names))
            raise UserError(
                f"split file {path} is for other classes: only in the split file: "
                f"{', '.join(only_split) or '-'}; only in the data: {', '.join(only_folder) or '-'}"
                + ("" if only_split or only_folder else " (same names, different order)")
            )
        seen: set[str] = set()
        for entries in split.parts().values():
            for rel, _ in entries:
                if rel in seen:
                    raise UserError(f"split file {path}: {rel} is listed twice")
                seen.add(rel)
                try:
                    file = resolve_split_path(rel, root, test_root)
                except ValueError as e:
                    raise UserError(f"split file {path}: {e}") from None
                if not file.is_file():
                    raise UserError(f"split file {path}: {file} does not exist")
        return split


def _from_dict(data: dict) -> Split:
    class_names = tuple(data["class_names"])
    if not all(isinstance(c, str) for c in class_names):
        raise ValueError("class_names must be strings")
    parts: dict[str, tuple[Entry, ...]] = {}
    for name in SPLIT_NAMES:
        entries = tuple((e["path"], e["label"]) for e in data[name])
        for rel, label in entries:
            valid_label = type(label) is int and 0 <= label < len(class_names)
            if not isinstance(rel, str) or not valid_label:
                raise ValueError(f"bad {name} entry: path {rel!r}, label {label!r}")
        parts[name] = entries
    fractions = tuple(float(f) for f in data["fractions"])
    if len(fractions) != 3:
        raise ValueError("fractions must have 3 values")
    if not isinstance(data["sha256"], dict) or not set(SPLIT_NAMES) <= set(data["sha256"]):
        raise ValueError(f"sha256 must be an object with keys {', '.join(SPLIT_NAMES)}")
    return Split(class_names=class_names, seed=int(data["seed"]), fractions=fractions, **parts)


def list_sha256(paths: Iterable[str]) -> str:
    """Checksum of a file list, independent of its order."""
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()


def resolve_split_path(rel: str, root: Path, test_root: Path | None) -> Path:
    base = Path(root)
    if rel.startswith(TEST_PREFIX):
        if test_root is None:
            raise ValueError(f"{rel} is in the test folder, but no test folder was given")
        base, rel = Path(test_root), rel[len(TEST_PREFIX) :]
    pure = PurePosixPath(rel)
    # A split file must not reach outside the data folders.
    if not pure.parts or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"path {rel!r} is not relative to the data folder")
    return base / pure


def class_quota(n: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Images per split for a class of ``n``: largest-remainder rounding of ``n * fraction``.

    When the class has at least one image per non-empty split, every non-empty split gets at
    least one (taken from the largest), so each class is present in val and test.
    """
    raw = [n * f for f in fractions]
    counts = [math.floor(r + 1e-9) for r in raw]  # 1e-9: 10 * 0.7 must not floor to 6
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    if n >= sum(f > 0 for f in fractions):
        for i, f in enumerate(fractions):
            if f > 0 and counts[i] == 0:
                counts[counts.index(max(counts))] -= 1
                counts[i] += 1
    return tuple(counts)


def _class_seed(seed: int, class_name: str) -> list[int]:
    # One stream per class: the split of a class does not change when other classes are added.
    name_hash = int.from_bytes(hashlib.sha256(class_name.encode()).digest()[:8], "big")
    return [seed % 2**64, name_hash]


def make_split(
    files: Sequence[str],
    labels: Sequence[int],
    groups: Sequence[str],
    class_names: Sequence[str],
    fractions: tuple[float, float, float],
    seed: int,
) -> Split:
    """Split per class into train/val/test; files with the same ``groups`` key stay together.

    ``groups`` is the decoded-pixel sha256 of each file: exact duplicates (UC Merced
    airplane01/airplane02) never straddle train and test. A group counts for the class of its
    first file. Splits with fraction 0 stay empty.
    """
    if not len(files) == len(labels) == len(groups):
        raise ValueError("files, labels and groups must have the same length")
    members: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(groups):
        members[key].append(i)
    groups_by_class: dict[int, list[list[int]]] = defaultdict(list)
    for idx in members.values():
        groups_by_class[labels[idx[0]]].append(idx)

    parts: tuple[list[int], ...] = ([], [], [])
    open_parts = [p for p, f in enumerate(fractions) if f > 0]
    for label in sorted(groups_by_class):
        class_groups = sorted(groups_by_class[label], key=lambda g: files[g[0]])
        rng = np.random.default_rng(_class_seed(seed, class_names[label]))
        shuffled = [class_groups[i] for i in rng.permutation(len(class_groups))]
        # Big groups first (stable sort keeps the random order among equals) so that the
        # singletons placed last can still hit every quota exactly.
        shuffled.sort(key=len, reverse=True)
        quota = class_quota(sum(map(len, class_groups)), fractions)
        filled = [0, 0, 0]
        for group in shuffled:
            part = max(open_parts, key=lambda p: (quota[p] - filled[p], -p))
            filled[part] += len(group)
            parts[part].extend(group)

    train, val, test = (tuple(sorted((files[i], labels[i]) for i in part)) for part in parts)
    return Split(
        class_names=tuple(class_names),
        seed=seed,
        fractions=fractions,
        train=train,
        val=val,
        test=test,
    )
