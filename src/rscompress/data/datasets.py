"""Known remote-sensing scene datasets, the class-folder scanner, and image decoding.

Any class-folder tree (``root/<class>/<images>``) is a dataset. The registry only adds the
published facts (class names, image counts, citation) so that a copy of a known benchmark is
recognised and a partial or altered copy is flagged: numbers on a subset are not comparable
with published ones.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from rscompress.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

# Junk that file managers and zip tools leave behind; never data, so neither a class nor a bad file.
_IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})

_TIFF_MAGIC = frozenset({b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"})  # classic + BigTIFF


@dataclass(frozen=True)
class DatasetInfo:
    """Published facts about one scene-classification benchmark."""

    key: str  # short id used in code and tests, e.g. "ucmerced"
    name: str
    num_classes: int
    num_images: int
    class_names: tuple[str, ...]  # folder names as distributed; empty when not known exactly
    citation: str


KNOWN_DATASETS: dict[str, DatasetInfo] = {
    info.key: info
    for info in (
        DatasetInfo(
            key="ucmerced",
            name="UC Merced Land Use",
            num_classes=21,
            num_images=2100,
            class_names=(
                "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
                "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
                "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
                "sparseresidential", "storagetanks", "tenniscourt",
            ),
            citation="Yang & Newsam, Bag-of-visual-words and spatial extensions for land-use "
            "classification, ACM SIGSPATIAL 2010",
        ),
        DatasetInfo(
            key="aid",
            name="AID",
            num_classes=30,
            num_images=10000,
            class_names=(
                "Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center", "Church",
                "Commercial", "DenseResidential", "Desert", "Farmland", "Forest", "Industrial",
                "Meadow", "MediumResidential", "Mountain", "Park", "Parking", "Playground", "Pond",
                "Port", "RailwayStation", "Resort", "River", "School", "SparseResidential",
                "Square", "Stadium", "StorageTanks", "Viaduct",
            ),
            citation="Xia et al., AID: A benchmark data set for performance evaluation of aerial "
            "scene classification, IEEE TGRS 2017",
        ),
        DatasetInfo(
            key="rsscn7",
            name="RSSCN7",
            num_classes=7,
            num_images=2800,
            class_names=(
                "aGrass", "bField", "cIndustry", "dRiverLake", "eForest", "fResident", "gParking",
            ),
            citation="Zou et al., Deep learning based feature selection for remote sensing scene "
            "classification, IEEE GRSL 2015",
        ),
        DatasetInfo(
            key="eurosat",
            name="EuroSAT",
            num_classes=10,
            num_images=27000,
            class_names=(
                "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                "PermanentCrop", "Residential", "River", "SeaLake",
            ),
            citation="Helber et al., EuroSAT: A novel dataset and deep learning benchmark for land "
            "use and land cover classification, IEEE JSTARS 2019",
        ),
        DatasetInfo(
            key="resisc45",
            name="NWPU-RESISC45",
            num_classes=45,
            num_images=31500,
            class_names=(
                "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge",
                "chaparral", "church", "circular_farmland", "cloud", "commercial_area",
                "dense_residential", "desert", "forest", "freeway", "golf_course",
                "ground_track_field", "harbor", "industrial_area", "intersection", "island", "lake",
                "meadow", "medium_residential", "mobile_home_park", "mountain", "overpass",
                "palace", "parking_lot", "railway", "railway_station", "rectangular_farmland",
                "river", "roundabout", "runway", "sea_ice", "ship", "snowberg",
                "sparse_residential", "stadium", "storage_tank", "tennis_court", "terrace",
                "thermal_power_station", "wetland",
            ),
            citation="Cheng, Han & Lu, Remote sensing image scene classification: benchmark and "
            "state of the art, Proc. IEEE 2017",
        ),
        DatasetInfo(
            key="whurs19",
            name="WHU-RS19",
            num_classes=19,
            num_images=1005,
            class_names=(
                "Airport", "Beach", "Bridge", "Commercial", "Desert", "Farmland", "footballField",
                "Forest", "Industrial", "Meadow", "Mountain", "Park", "Parking", "Pond", "Port",
                "railwayStation", "Residential", "River", "Viaduct",
            ),
            citation="Xia et al., Structural high-resolution satellite image indexing, "
            "ISPRS TC VII Symposium 2010",
        ),
        DatasetInfo(
            key="patternnet",
            name="PatternNet",
            num_classes=38,
            num_images=30400,
            class_names=(
                "airplane", "baseball_field", "basketball_court", "beach", "bridge", "cemetery",
                "chaparral", "christmas_tree_farm", "closed_road", "coastal_mansion", "crosswalk",
                "dense_residential", "ferry_terminal", "football_field", "forest", "freeway",
                "golf_course", "harbor", "intersection", "mobile_home_park", "nursing_home",
                "oil_gas_field", "oil_well", "overpass", "parking_lot", "parking_space",
                "railway", "river", "runway", "runway_marking", "shipping_yard", "solar_panel",
                "sparse_residential", "storage_tank", "swimming_pool", "tennis_court",
                "transformer_station", "wastewater_treatment_plant",
            ),
            citation="Zhou et al., PatternNet: A benchmark dataset for performance evaluation of "
            "remote sensing image retrieval, ISPRS J. Photogramm. Remote Sens. 2018",
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class SceneIndex:
    """What a class-folder tree holds: one entry per image file, labels by sorted class name."""

    root: Path
    class_names: tuple[str, ...]  # sorted; label i is class_names[i]
    files: tuple[str, ...]  # posix paths relative to root, sorted
    labels: tuple[int, ...]  # aligned with files
    # (relative path, reason) for files without an image extension, and broken links
    bad_files: tuple[tuple[str, str], ...]
    recognised: DatasetInfo | None
    warnings: tuple[str, ...]  # the recognition's and ``skipped``
    # What the scan left out and why: folder links inside class folders, second paths to a file.
    skipped: tuple[str, ...] = ()


class BadImageError(UserError):
    """A file that should be an image but does not decode."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"bad image {path}: {reason}")
        self.path = path
        self.reason = reason


def _normalise_class_name(name: str) -> str:
    # Copies of a dataset differ in case and separators ("Golf_Course", "golf course").
    return re.sub(r"[^a-z0-9]", "", name.lower())


def recognise(
    class_names: Iterable[str],
    num_images: int,
    known: Iterable[DatasetInfo] = KNOWN_DATASETS.values(),
) -> tuple[DatasetInfo | None, tuple[str, ...]]:
    """Match a folder's classes against the registry; a count mismatch is a warning, not an error.

    Class-name sets match first (case and separators ignored). Datasets whose class names are
    not in the registry match on (class count, image count) only, so they never warn.
    """
    names = frozenset(_normalise_class_name(c) for c in class_names)
    known = tuple(known)
    for info in known:
        if info.class_names and frozenset(map(_normalise_class_name, info.class_names)) == names:
            if num_images == info.num_images:
                return info, ()
            return info, (
                f"classes match {info.name}, which has {info.num_images} images, but "
                f"{num_images} were found: a subset or altered copy, so results are not "
                "comparable with published numbers",
            )
    for info in known:
        if not info.class_names and (info.num_classes, info.num_images) == (len(names), num_images):
            return info, ()
    return None, ()


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_NAMES


def _class_files(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """(files, folder links) under ``class_dir``, hidden ones aside. Folder links inside a class
    folder are listed, not followed: one to an ancestor folder takes in every class's images
    again, all labelled with this class, as often as the loop goes round. (A class folder that
    is itself a link is followed: datasets are often assembled from linked class folders.)"""
    files: list[Path] = []
    links: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        links.extend(here / d for d in dirnames if (here / d).is_symlink())
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
        files.extend(here / f for f in filenames if not _is_hidden(f))
    return files, links


def _shown(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _broken_link(path: Path) -> str | None:
    """Why ``path`` is a bad file if it is a link to nothing, else None."""
    if path.is_symlink() and not path.exists():
        return f"broken link (to {os.readlink(path)}, which does not exist)"
    return None


def _once_each(entries: list[tuple[Path, str, int]], root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``entries`` (path, relative path, label) with every real file once, and a line per path
    left out. Of the paths to one file the one that is no link (``root/rel`` is the file itself)
    is kept, else the first: a link from one class folder into another's must not add that
    class's image again under another label."""
    real_root = root.resolve()
    resolved = [(path.resolve(), rel, label) for path, rel, label in entries]
    order = sorted(resolved, key=lambda e: (e[0] != real_root / e[1], e[1]))
    kept: dict[Path, str] = {}
    once: list[tuple[str, int]] = []
    dropped: list[str] = []
    for real, rel, label in order:
        if real in kept:
            dropped.append(f"{rel} (= {kept[real]})")
            continue
        kept[real] = rel
        once.append((rel, label))
    return once, dropped


def scan_folder(root: Path) -> SceneIndex:
    """Index ``root/<class>/**/<file>``; files directly in ``root`` (README...) are ignored."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a folder")
    try:
        children = list(root.iterdir())
    except OSError as e:
        raise UserError(f"cannot list data folder {root}: {e.strerror}") from None
    class_dirs = sorted((p for p in children if p.is_dir() and not _is_hidden(p.name)), key=lambda p: p.name)
    if not class_dirs:
        raise UserError(f"{root} has no class folders (expected {root}/<class>/<images>)")

    images: list[tuple[Path, str, int]] = []
    bad: list[tuple[str, str]] = []
    folder_links: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        files, links = _class_files(class_dir)
        folder_links.extend(f"{link.relative_to(root).as_posix()} -> {os.readlink(link)}" for link in links)
        for path in files:
            rel = path.relative_to(root).as_posix()
            if (broken := _broken_link(path)) is not None:
                bad.append((rel, broken))
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                images.append((path, rel, label))
            else:
                bad.append((rel, f"not an image file (extension {path.suffix or 'none'!r})"))
    entries, second_paths = _once_each(images, root)

    if not entries:
        raise UserError(f"no images found in {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    empty_classes = sorted(set(range(len(class_dirs))) - {label for _, label in entries})
    if empty_classes:
        names = ", ".join(class_dirs[label].name for label in empty_classes)
        raise UserError(
            f"class folders without images in {root}: {names}"
            + (f" (left out as second paths to files counted already: {_shown(second_paths)})" if second_paths else "")
        )
    if len(class_dirs) < 2:
        raise UserError(f"{root} has only one class folder ({class_dirs[0].name}); need at least 2")

    skipped = []
    if folder_links:
        skipped.append(
            f"{len(folder_links)} folder link(s) inside class folders not followed (a link to an ancestor "
            f"would count every image again under that class): {_shown(folder_links)}"
        )
    if second_paths:
        skipped.append(
            f"{len(second_paths)} image path(s) left out as links to (or other paths of) files counted "
            f"already, so each file counts once: {_shown(second_paths)}"
        )
    entries.sort()
    class_names = tuple(p.name for p in class_dirs)
    recognised, warnings = recognise(class_names, len(entries))
    return SceneIndex(
        root=root,
        class_names=class_names,
        files=tuple(rel for rel, _ in entries),
        labels=tuple(label for _, label in entries),
        bad_files=tuple(sorted(bad)),
        recognised=recognised,
        warnings=(*warnings, *skipped),
        skipped=tuple(skipped),
    )


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_image(path: Path) -> np.ndarray:
    """Decode any supported image to H×W×3 uint8 RGB, or raise ``BadImageError``.

    - The format is taken from the file's bytes, not its extension.
    - TIFF goes through tifffile first: Pillow silently mis-reads 16-bit RGB and multi-band
      TIFFs. Compressed TIFFs that tifffile cannot read without ``imagecodecs`` fall back to Pillow.
    - Band rules (see ``to_rgb8``): 1 band → gray to 3 channels; 2 → gray + alpha, alpha dropped;
      4 → RGBA, alpha dropped (not composited); more than 4 → the first three bands.
    - Truncated files are bad: this relies on Pillow's default ``LOAD_TRUNCATED_IMAGES = False``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise BadImageError(path, f"cannot read file ({e.strerror})") from None
    if not head:
        raise BadImageError(path, "empty file")
    if head in _TIFF_MAGIC:
        return _decode_tiff(path)
    return _decode_pillow(path)


def _decode_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                return to_rgb8(np.asarray(im))
            # convert() maps every 8-bit mode (P, L, LA, RGBA, CMYK, ...) to RGB; alpha is dropped.
            return np.array(im.convert("RGB"))
    except UnidentifiedImageError:
        raise BadImageError(path, "not a recognised image format") from None
    except Exception as e:  # decoders raise a zoo of types (OSError, SyntaxError, ValueError, ...)
        raise BadImageError(path, str(e) or type(e).__name__) from None


def pixel_limit() -> int:
    """The most pixels an image may have, whatever its format: Pillow's decompression-bomb
    limit (it refuses more than twice ``Image.MAX_IMAGE_PIXELS``), so that one setting bounds
    the memory a decode may take."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else sys.maxsize


def _decode_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ValueError("no image data")
            series = tif.series[0]
            _check_pixels(path, series.shape, series.axes)  # from the header, before decoding
            data, axes = series.asarray(), series.axes
    except BadImageError:
        raise
    except Exception as tiff_error:
        try:
            return _decode_pillow(path)
        except BadImageError:
            raise BadImageError(path, f"unreadable TIFF ({tiff_error})") from None
    return to_rgb8(_to_hwc(data, axes, path))


def _check_pixels(path: Path, shape: tuple[int, ...], axes: str) -> None:
    if "Y" in axes and "X" in axes:
        height, width = shape[axes.index("Y")], shape[axes.index("X")]
        if width * height > pixel_limit():
            raise BadImageError(
                path, f"{width}x{height} = {width * height} pixels is more than the limit of {pixel_limit()} pixels"
            )


def _to_hwc(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Reorder a tifffile array to H×W×bands using its axis letters (Y, X, and one band axis)."""
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    bands = [i for i, a in enumerate(axes) if a not in "YX"]
    if "Y" not in axes or "X" not in axes or len(bands) > 1:
        raise BadImageError(path, f"unsupported TIFF layout (axes {axes}, shape {data.shape})")
    return np.transpose(data, [axes.index("Y"), axes.index("X"), *bands])


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """H×W or H×W×bands of any dtype → H×W×3 uint8.

    Non-uint8 data (16-bit, float, ...) is stretched per image: the minimum over the kept bands
    maps to 0 and the maximum to 255, jointly over bands so colour balance is preserved. A fixed
    rule such as /257 would turn typical 12-bit sensor data (EuroSAT MS, values < 4096) almost
    black. Non-finite values become 0; a constant image becomes all 0.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = pixels[:, :, :1] if pixels.shape[2] < 3 else pixels[:, :, :3]
    if pixels.dtype != np.uint8:
        pixels = _stretch_to_uint8(pixels)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def _stretch_to_uint8(pixels: np.ndarray) -> np.ndarray:
    values = pixels.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    scaled[~finite] = 0
    return np.rint(scaled).clip(0, 255).astype(np.uint8)


def resize_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize H×W×3 uint8 to size×size with Pillow's bilinear filter.

    Pillow widens the filter support by the scale factor when shrinking, so this is an
    antialiased resize (like torchvision's ``antialias=True``), not naive point sampling.
    Non-square images are squashed, not cropped: scene content near the borders is kept.
    """
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
