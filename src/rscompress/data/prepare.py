"""From a folder (and config) to arrays ready for ``BatchLoader``: scan, cache, check, split.

Also ``inspect_folder``, the read-only look at a folder behind ``rscompress data inspect``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np

from rscompress.config import DataConfig
from rscompress.data.cache import Progress, decode_files, load_or_build_cache
from rscompress.data.datasets import DatasetInfo, recognise, scan_folder
from rscompress.data.loader import BatchLoader
from rscompress.data.splits import TEST_PREFIX, Split, make_split
from rscompress.data.transforms import Triple, channel_mean_std
from rscompress.errors import UserError

EVAL_BATCH = 128  # images per evaluation batch (no gradients: bigger is faster, within memory)


@dataclass(frozen=True)
class PreparedData:
    class_names: tuple[str, ...]
    images: np.ndarray  # N×S×S×3 uint8 memory map, one row per scanned image (bad rows are zeros)
    labels: np.ndarray  # N int64
    train_indices: np.ndarray  # int64 rows of images/labels
    val_indices: np.ndarray
    test_indices: np.ndarray
    mean: Triple  # per channel, 0–1 scale, from the train images
    std: Triple
    split: Split  # write it to the run dir: split.to_json(run / "split.json")
    bad_files: tuple[tuple[str, str], ...]  # (split-style path, reason), left out (skip_bad)
    recognised: DatasetInfo | None
    warnings: tuple[str, ...]
    img_size: int

    @property
    def all_indices(self) -> np.ndarray:
        """Every usable row, in file order."""
        return np.sort(np.concatenate([self.train_indices, self.val_indices, self.test_indices]))

    def eval_batches(self, rows: np.ndarray, batch_size: int = EVAL_BATCH) -> BatchLoader:
        """Images ``rows`` as evaluation (and calibration) sees them: in order, no
        augmentation, normalised as the training was."""
        return BatchLoader(
            self.images,
            self.labels,
            rows,
            batch_size=batch_size,
            shuffle=False,
            augment=False,
            mean=self.mean,
            std=self.std,
            seed=0,
        )

    def with_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> PreparedData:
        """The same data normalised like a trained run (its mean/std, not this data's)."""
        # Three values each: they come from channel_mean_std, through a run's config.json.
        return replace(self, mean=cast(Triple, tuple(mean)), std=cast(Triple, tuple(std)))


@dataclass
class _Files:
    """Every image of the data folder(s), keyed by split-style path."""

    keys: list[str]
    paths: list[Path]
    labels: list[int]
    class_names: tuple[str, ...]
    non_images: list[tuple[str, str]]
    recognised: DatasetInfo | None
    warnings: list[str]


def _label_map(folder: Path, found: Sequence[str], class_names: Sequence[str], source: str) -> list[int]:
    """Folder label → label in ``class_names``; every class of the folder must be known."""
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise UserError(f"{folder} has classes that {source} lacks: {', '.join(unknown)}")
    return [list(class_names).index(c) for c in found]


def _collect(cfg: DataConfig, class_names: Sequence[str] | None) -> _Files:
    index = scan_folder(cfg.path)
    names = tuple(class_names) if class_names is not None else index.class_names
    source = "the given class list" if class_names is not None else str(cfg.path)
    to_label = _label_map(cfg.path, index.class_names, names, source)
    files = _Files(
        keys=list(index.files),
        paths=[index.root / f for f in index.files],
        labels=[to_label[label] for label in index.labels],
        class_names=names,
        non_images=list(index.bad_files),
        recognised=index.recognised,
        warnings=list(index.warnings),
    )
    if cfg.test_path is None:
        return files
    test = scan_folder(cfg.test_path)
    to_label = _label_map(cfg.test_path, test.class_names, names, source)
    files.keys.extend(TEST_PREFIX + f for f in test.files)
    files.paths.extend(test.root / f for f in test.files)
    files.labels.extend(to_label[label] for label in test.labels)
    files.non_images.extend((TEST_PREFIX + f, reason) for f, reason in test.bad_files)
    # The two folders together are the dataset (e.g. a published train/test partition).
    files.recognised, warnings = recognise(index.class_names, len(files.keys))
    files.warnings = [*warnings, *index.skipped, *(f"{cfg.test_path}: {line}" for line in test.skipped)]
    return files


def _bad_files_message(bad: Sequence[tuple[str, str]], cfg: DataConfig) -> str:
    where = str(cfg.path) + (f" (test: = {cfg.test_path})" if cfg.test_path else "")
    listing = "; ".join(f"{path} ({reason})" for path, reason in bad)
    noun = "file" if len(bad) == 1 else "files"
    return f"{len(bad)} bad {noun} in {where}, set skip_bad (--skip-bad) to leave out: {listing}"


def prepare_data(
    cfg: DataConfig,
    split_json: Path | None = None,
    progress: Progress | None = None,
    *,
    class_names: Sequence[str] | None = None,
    whole_folder: bool = False,
) -> PreparedData:
    """Scan, decode (cached), check and split the data described by ``cfg``.

    If ``split_json`` exists it is reused as is (every file in it must be a usable image of
    the folder); otherwise a new split is made from ``cfg`` and returned for the caller to write.
    ``progress(done, total)`` is called while images are decoded (not at all on a cache hit).

    ``class_names`` fixes the label order (a trained run's); the folder may have fewer classes.
    ``whole_folder`` makes no split: every usable image is in ``test_indices`` and mean/std come
    from all of them (to evaluate a run on another folder, with ``with_normalisation``).
    """
    if whole_folder and split_json is not None:
        raise ValueError("whole_folder takes no split file")
    files = _collect(cfg, class_names)
    cached = load_or_build_cache(files.paths, cfg.img_size, cfg.cache_dir, progress)
    bad = sorted(files.non_images + [(files.keys[i], reason) for i, reason in cached.bad_files])
    if bad and not cfg.skip_bad:
        raise UserError(_bad_files_message(bad, cfg))
    bad_rows = {i for i, _ in cached.bad_files}
    usable = [i for i in range(len(files.keys)) if i not in bad_rows]
    warnings = list(files.warnings)

    if whole_folder:
        everything = tuple((files.keys[i], files.labels[i]) for i in usable)
        fractions = (0.0, 0.0, 1.0)
        split = Split(files.class_names, cfg.split_seed, fractions, (), (), everything)
    elif split_json is not None and Path(split_json).exists():
        split = Split.from_json(Path(split_json), cfg.path, cfg.test_path, files.class_names)
        warnings += _check_reused_split(split, Path(split_json), files, usable, cfg)
    else:
        split, leak_warnings = _new_split(cfg, files, usable, cached.pixel_sha256)
        warnings += leak_warnings

    row_of = {files.keys[i]: i for i in usable}
    train, val, test = (
        np.array([row_of[p] for p, _ in entries], dtype=np.int64) for entries in (split.train, split.val, split.test)
    )
    if whole_folder:
        stats_rows = test
    elif train.size == 0:
        raise UserError(f"no training images left in {cfg.path}")
    else:
        stats_rows = train
        if val.size == 0:
            warnings.append("the validation split is empty (classes with fewer than 3 images?)")
        if test.size == 0 and (cfg.test_fraction > 0 or cfg.test_path is not None):
            warnings.append("the test split is empty (classes with fewer than 3 images?)")
        warnings += _unmeasured_classes(split, [name for name, rows in (("val", val), ("test", test)) if rows.size])
    if stats_rows.size == 0:
        raise UserError(f"no usable images in {cfg.path}")
    mean, std = channel_mean_std(cached.images, stats_rows)
    return PreparedData(
        class_names=files.class_names,
        images=cached.images,
        labels=np.asarray(files.labels, dtype=np.int64),
        train_indices=train,
        val_indices=val,
        test_indices=test,
        mean=mean,
        std=std,
        split=split,
        bad_files=tuple(bad),
        recognised=files.recognised,
        warnings=tuple(warnings),
        img_size=cfg.img_size,
    )


def _unmeasured_classes(split: Split, parts: list[str]) -> list[str]:
    """A warning for each class with no image in one of ``parts`` (splits that hold images):
    its accuracy there is not measured (a class of one image has its image in train)."""
    per_part = {name: Counter(label for _, label in split.parts()[name]) for name in parts}
    total = Counter(label for entries in split.parts().values() for _, label in entries)
    warnings = []
    for label, class_name in enumerate(split.class_names):
        missing = [name for name in parts if not per_part[name][label]]
        if missing and total[label]:
            warnings.append(
                f"class {class_name} has {total[label]} image(s) and no {'/'.join(missing)} image: "
                "its accuracy there is not measured"
            )
    return warnings


def _new_split(
    cfg: DataConfig, files: _Files, usable: list[int], pixel_sha256: Sequence[str | None]
) -> tuple[Split, list[str]]:
    fractions = (cfg.train_fraction, cfg.val_fraction, cfg.test_fraction)
    in_test_folder = [i for i in usable if files.keys[i].startswith(TEST_PREFIX)]
    test_pixels = {pixel_sha256[i] for i in in_test_folder}
    pool = [i for i in usable if not files.keys[i].startswith(TEST_PREFIX)]
    # Exact copies of test-folder images would leak the test set into training; the test
    # folder is fixed, so the copies go (the fractions split only the rest).
    leaked = [files.keys[i] for i in pool if pixel_sha256[i] in test_pixels]
    pool = [i for i in pool if pixel_sha256[i] not in test_pixels]
    split = make_split(
        files=[files.keys[i] for i in pool],
        labels=[files.labels[i] for i in pool],
        groups=[str(pixel_sha256[i]) for i in pool],
        class_names=files.class_names,
        fractions=fractions,
        seed=cfg.split_seed,
    )
    if in_test_folder:
        split = replace(split, test=tuple(sorted((files.keys[i], files.labels[i]) for i in in_test_folder)))
    warnings = []
    if leaked:
        shown = ", ".join(leaked[:5]) + (", ..." if len(leaked) > 5 else "")
        warnings.append(
            f"{len(leaked)} image(s) in {cfg.path} are pixel-identical to test-folder images and "
            f"were left out of train/val: {shown}"
        )
    return split, warnings


def _check_reused_split(split: Split, split_json: Path, files: _Files, usable: list[int], cfg: DataConfig) -> list[str]:
    label_of = {files.keys[i]: files.labels[i] for i in usable}
    listed = 0
    for entries in split.parts().values():
        for path, label in entries:
            if path not in label_of:
                raise UserError(f"{split_json} lists {path}, which is not a usable image (bad file?)")
            if label_of[path] != label:
                raise UserError(
                    f"{split_json} gives {path} label {split.class_names[label]}, "
                    f"but it is in folder {split.class_names[label_of[path]]}"
                )
            listed += 1
    warnings = []
    if listed < len(usable):
        warnings.append(f"{len(usable) - listed} image(s) are not in {split_json} and are not used")
    configured = (cfg.split_seed, (cfg.train_fraction, cfg.val_fraction, cfg.test_fraction))
    if (split.seed, split.fractions) != configured:
        warnings.append(
            f"reusing {split_json} (seed {split.seed}, fractions {list(split.fractions)}), "
            "not the configured split seed/fractions"
        )
    return warnings


# ---------------------------------------------------------------------------------------------
# Inspection


@dataclass(frozen=True)
class InspectReport:
    root: Path
    class_counts: dict[str, int]  # image files per class folder (bad ones too), by class name
    image_sizes: tuple[tuple[int, int, int], ...]  # (width, height, count), most common first
    num_image_sizes: int  # distinct sizes in total (image_sizes shows the top ones)
    bad_files: tuple[tuple[str, str], ...]  # (relative path, reason)
    duplicate_groups: tuple[tuple[str, ...], ...]  # relative paths with identical decoded pixels
    recognised: DatasetInfo | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        dataset = None
        if self.recognised is not None:
            info = self.recognised
            dataset = {"key": info.key, "name": info.name, "citation": info.citation}
        return {
            "root": str(self.root),
            "dataset": dataset,
            "num_classes": len(self.class_counts),
            "num_images": sum(self.class_counts.values()),
            "class_counts": dict(self.class_counts),
            "image_sizes": [{"width": w, "height": h, "count": n} for w, h, n in self.image_sizes],
            "num_image_sizes": self.num_image_sizes,
            "bad_files": [{"path": p, "reason": r} for p, r in self.bad_files],
            "duplicate_groups": [list(g) for g in self.duplicate_groups],
            "warnings": list(self.warnings),
        }


def inspect_folder(root: Path, progress: Progress | None = None, top_sizes: int = 10) -> InspectReport:
    """Decode every image of a class-folder tree once (nothing is cached) and report on it."""
    index = scan_folder(Path(root))
    sizes: Counter[tuple[int, int]] = Counter()
    by_pixels: dict[str, list[int]] = defaultdict(list)
    bad = list(index.bad_files)
    paths = [index.root / f for f in index.files]
    for i, decoded in enumerate(decode_files(paths, None, progress)):
        if decoded.error is not None:
            bad.append((index.files[i], decoded.error))
            continue
        assert decoded.size is not None and decoded.sha256 is not None
        sizes[decoded.size] += 1
        by_pixels[decoded.sha256].append(i)

    groups = sorted(tuple(index.files[i] for i in g) for g in by_pixels.values() if len(g) > 1)
    warnings = list(index.warnings)
    for g in by_pixels.values():
        if len({index.labels[i] for i in g}) > 1:
            names = ", ".join(index.files[i] for i in g)
            warnings.append(f"identical images in different classes: {names}")
    counts = Counter(index.labels)
    return InspectReport(
        root=index.root,
        class_counts={name: counts[label] for label, name in enumerate(index.class_names)},
        image_sizes=tuple((w, h, n) for (w, h), n in sizes.most_common(top_sizes)),
        num_image_sizes=len(sizes),
        bad_files=tuple(sorted(bad)),
        duplicate_groups=tuple(groups),
        recognised=index.recognised,
        warnings=tuple(warnings),
    )
