from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from rscompress.data.datasets import (
    KNOWN_DATASETS,
    BadImageError,
    DatasetInfo,
    decode_image,
    recognise,
    resize_image,
    scan_folder,
    to_rgb8,
)
from rscompress.errors import UserError
from tests.fakes import (
    make_fake_dataset,
    make_image_folder,
    write_corrupt_image,
    write_non_image,
    write_truncated_jpeg,
)


def rgb(size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# --- registry and recognition -----------------------------------------------------------------


@pytest.mark.parametrize("info", KNOWN_DATASETS.values(), ids=lambda i: i.key)
def test_registry_facts_are_consistent(info):
    assert len(info.class_names) in (0, info.num_classes)
    assert len(set(info.class_names)) == len(info.class_names)
    assert info.num_images >= info.num_classes and info.citation


def test_published_counts():
    facts = {k: (v.num_classes, v.num_images) for k, v in KNOWN_DATASETS.items()}
    assert facts == {
        "ucmerced": (21, 2100), "aid": (30, 10000), "rsscn7": (7, 2800), "eurosat": (10, 27000),
        "resisc45": (45, 31500), "whurs19": (19, 1005), "patternnet": (38, 30400),
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(KNOWN_DATASETS))
def test_fake_copies_are_recognised_with_count_warning(tmp_path, name):
    index = scan_folder(make_fake_dataset(tmp_path, name, per_class=1, size=8))
    assert index.recognised is KNOWN_DATASETS[name]
    assert len(index.warnings) == 1 and "subset" in index.warnings[0]
    assert str(KNOWN_DATASETS[name].num_images) in index.warnings[0]


def test_full_count_gives_no_warning_and_names_match_loosely():
    names = [n.upper().replace("_", " ") for n in KNOWN_DATASETS["resisc45"].class_names]
    info, warnings = recognise(names, 31500)
    assert info is KNOWN_DATASETS["resisc45"] and warnings == ()


def test_recognise_by_counts_when_class_names_unknown():
    anonymous = DatasetInfo("x", "X", 3, 30, (), "someone 2020")
    assert recognise(["a", "b", "c"], 30, known=[anonymous]) == (anonymous, ())
    assert recognise(["a", "b", "c"], 31, known=[anonymous]) == (None, ())
    assert recognise(["a", "b"], 2, known=KNOWN_DATASETS.values()) == (None, ())


# --- scanning -----------------------------------------------------------------------------------


def test_scan_sorts_classes_and_files_and_handles_nesting(tmp_path):
    root = make_image_folder(tmp_path / "d", {"b": 2, "a": 1}, size=8)
    write_non_image(root / "a" / "sub" / "notes.txt")
    Image.fromarray(rgb()).save(root / "a" / "sub" / "deep.PNG")
    (root / "a" / ".hidden.png").write_bytes(b"x")
    (root / ".git").mkdir()
    (root / "README.md").write_text("top-level files are ignored")
    index = scan_folder(root)
    assert index.class_names == ("a", "b")
    assert index.files == ("a/img000.png", "a/sub/deep.PNG", "b/img000.png", "b/img001.png")
    assert index.labels == (0, 0, 1, 1)
    assert index.bad_files == (("a/sub/notes.txt", "not an image file (extension '.txt')"),)
    assert index.recognised is None and index.warnings == ()


def test_scan_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        scan_folder(tmp_path / "file")
    (tmp_path / "noclass").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        scan_folder(tmp_path / "noclass")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(UserError, match=r"no images found in \S*empty"):
        scan_folder(tmp_path / "empty")
    root = make_image_folder(tmp_path / "one", {"only": 2})
    with pytest.raises(UserError, match="only one class folder \\(only\\)"):
        scan_folder(root)
    root = make_image_folder(tmp_path / "holes", {"a": 2, "b": 2})
    (root / "c").mkdir()
    (root / "d").mkdir()
    with pytest.raises(UserError, match=r"class folders without images in \S*holes: c, d"):
        scan_folder(root)


def test_a_link_to_an_ancestor_inside_a_class_folder_is_not_followed(tmp_path):
    """Followed, a/loop -> .. took in every class's images again under class a, as often as
    the loop went round; the links are listed instead."""
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 3}, size=8)
    (root / "a" / "sub").mkdir()
    (root / "a" / "sub" / "up").symlink_to("../..")
    index = scan_folder(root)
    assert index.files == ("a/img000.png", "a/img001.png", "b/img000.png", "b/img001.png", "b/img002.png")
    assert index.labels == (0, 0, 1, 1, 1)
    (line,) = index.skipped
    assert line.startswith("1 folder link(s) inside class folders not followed") and "a/sub/up -> ../.." in line
    assert line in index.warnings


def test_each_real_file_counts_once_in_its_own_class(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    (root / "a" / "also_b.png").symlink_to(root / "b" / "img000.png")  # b's image, linked into a
    (root / "b" / "again.png").symlink_to("img001.png")  # a second name for one file
    index = scan_folder(root)
    assert index.files == ("a/img000.png", "a/img001.png", "b/img000.png", "b/img001.png")
    assert index.labels == (0, 0, 1, 1)  # b/img000.png keeps its own class
    (line,) = index.skipped
    assert "a/also_b.png (= b/img000.png)" in line and "b/again.png (= b/img001.png)" in line


def test_a_class_folder_of_links_to_another_class_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    (root / "c").symlink_to(root / "a")
    with pytest.raises(UserError, match=r"class folders without images in \S*: c \(left out as second paths"):
        scan_folder(root)


def test_a_dangling_link_is_a_bad_file(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2}, size=8)
    (root / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "b" / "gone_dir").symlink_to(tmp_path / "no-folder")
    index = scan_folder(root)
    assert index.files == ("a/img000.png", "a/img001.png", "b/img000.png", "b/img001.png")
    reasons = dict(index.bad_files)
    assert reasons["a/gone.png"].startswith("broken link (to ") and "does not exist" in reasons["a/gone.png"]
    assert reasons["b/gone_dir"].startswith("broken link")


# --- decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_lossless_8bit_formats_roundtrip(tmp_path, ext):
    pixels = rgb()
    Image.fromarray(pixels).save(tmp_path / f"x.{ext}")
    np.testing.assert_array_equal(decode_image(tmp_path / f"x.{ext}"), pixels)


def test_jpeg_decodes_close_to_source(tmp_path):
    pixels = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.JPEG", quality=95)
    out = decode_image(tmp_path / "x.JPEG")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - pixels).max() <= 4


def test_rgba_drops_alpha_without_compositing(tmp_path):
    pixels = rgb()
    Image.fromarray(np.dstack([pixels, np.zeros((8, 8), np.uint8)]), "RGBA").save(tmp_path / "x.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png"), pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = rgb()[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = decode_image(tmp_path / "g.png")
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_16bit_tiff_is_stretched_per_image(tmp_path):
    data = np.array([[1000, 2000], [3000, 4000]], np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", np.dstack([data, data + 500, data - 500]), photometric="rgb")
    out = decode_image(tmp_path / "x.tif")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out.min() == 0 and out.max() == 255  # joint min (500) → 0, joint max (4500) → 255
    assert out[0, 0, 0] == round((1000 - 500) * 255 / 4000)


def test_16bit_png_and_float_tiff(tmp_path):
    Image.fromarray(np.array([[0, 60000]], np.uint16)).save(tmp_path / "x.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png")[0, :, 0], [0, 255])
    floats = np.array([[[0.0, 0.5, 1.0], [np.nan, 0.25, 0.75]]], np.float32)
    tifffile.imwrite(tmp_path / "f.tif", floats, photometric="rgb")
    out = decode_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(out[0], [[0, 128, 255], [0, 64, 191]])


def test_multiband_tiff_keeps_first_three_bands(tmp_path):
    bands = np.stack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30, 40, 50)])
    tifffile.imwrite(tmp_path / "planar.tif", bands, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(
        tmp_path / "contig.tif",
        bands.transpose(1, 2, 0),
        photometric="minisblack",
        planarconfig="contig",
    )
    for name in ("planar.tif", "contig.tif"):
        np.testing.assert_array_equal(decode_image(tmp_path / name)[0, 0], [10, 20, 30])


def test_compressed_tiff_falls_back_to_pillow(tmp_path):
    pixels = rgb()
    Image.fromarray(pixels).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(decode_image(tmp_path / "lzw.tif"), pixels)


def test_to_rgb8_rules():
    assert to_rgb8(np.zeros((2, 2, 2), np.uint8)).shape == (2, 2, 3)  # gray + alpha
    np.testing.assert_array_equal(to_rgb8(np.full((2, 2), 7, np.uint16)), 0)  # constant → 0


def _empty_file(folder):
    (folder / "e.png").write_bytes(b"")
    return folder / "e.png"


def _tiff_header_only(folder):
    (folder / "b.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    return folder / "b.tif"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own note on the bad TIFF
@pytest.mark.parametrize(
    ("writer", "reason"),
    [
        (lambda p: write_truncated_jpeg(p / "t.jpg"), "(?i)truncated"),
        (lambda p: write_corrupt_image(p / "c.png"), "data stream"),
        (lambda p: write_non_image(p / "n.jpg"), "not a recognised image format"),
        (_empty_file, "empty file"),
        (_tiff_header_only, "unreadable TIFF"),
    ],
    ids=["truncated-jpeg", "corrupt-png", "text", "empty", "bad-tiff"],
)
def test_bad_images_raise_bad_image_error(tmp_path, writer, reason):
    path = writer(tmp_path)
    with pytest.raises(BadImageError, match=reason) as err:
        decode_image(path)
    assert err.value.path == Path(path) and str(path) in str(err.value)
    assert isinstance(err.value, UserError)


def test_resize_is_square_and_identity_at_size():
    pixels = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    out = resize_image(pixels, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    flat = np.full((64, 64, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_image(flat, 16), 77)  # a filter, not a sampler artefact
    assert resize_image(out, 16) is out
