import errno
import os
import shutil

import numpy as np
import pytest

from rscompress.data import cache as cache_mod
from rscompress.data.cache import default_cache_dir, load_or_build_cache, pixel_sha256
from rscompress.data.datasets import decode_image, resize_image
from rscompress.errors import UserError
from tests.fakes import make_image_folder, write_duplicate_pair, write_truncated_jpeg


@pytest.fixture
def files(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 3, "b": 3}, size=20)
    return sorted(root.rglob("*.png"))


def count_decodes(monkeypatch):
    calls = []

    def counting(path):
        calls.append(path)
        return decode_image(path)

    monkeypatch.setattr(cache_mod, "decode_image", counting)
    return calls


def test_build_then_reuse_without_decoding(tmp_path, files, monkeypatch):
    calls = count_decodes(monkeypatch)
    progress = []
    first = load_or_build_cache(files, 8, tmp_path / "c", progress=lambda d, t: progress.append((d, t)))
    assert len(calls) == len(files) and progress[-1] == (6, 6) and len(progress) == 6
    assert first.images.shape == (6, 8, 8, 3) and first.images.dtype == np.uint8
    for i, f in enumerate(files):
        np.testing.assert_array_equal(first.images[i], resize_image(decode_image(f), 8))
        assert first.sizes[i] == (20, 20)
    assert first.bad_files == ()

    calls.clear()
    progress.clear()
    second = load_or_build_cache(files, 8, tmp_path / "c", progress=lambda d, t: progress.append((d, t)))
    assert calls == [] and progress == []
    np.testing.assert_array_equal(second.images, first.images)
    assert second.pixel_sha256 == first.pixel_sha256
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [
        ".json",
        ".npy",
    ]  # no temp files


def test_changes_invalidate(tmp_path, files, monkeypatch):
    load_or_build_cache(files, 8, tmp_path / "c")
    calls = count_decodes(monkeypatch)
    load_or_build_cache(files, 12, tmp_path / "c")  # other size
    assert len(calls) == len(files)
    calls.clear()
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched file
    load_or_build_cache(files, 8, tmp_path / "c")
    assert len(calls) == len(files)
    calls.clear()
    load_or_build_cache(files[:-1], 8, tmp_path / "c")  # other file list
    assert len(calls) == len(files) - 1


def test_damaged_entry_is_rebuilt(tmp_path, files, monkeypatch):
    load_or_build_cache(files, 8, tmp_path / "c")
    meta = next((tmp_path / "c").glob("*.json"))
    meta.write_text("{not json")
    calls = count_decodes(monkeypatch)
    assert load_or_build_cache(files, 8, tmp_path / "c").images.shape == (6, 8, 8, 3)
    assert len(calls) == len(files)


def test_bad_files_are_reported_and_zeroed(tmp_path, files):
    bad = write_truncated_jpeg(tmp_path / "d" / "a" / "zz.jpg")
    cached = load_or_build_cache([*files, bad], 8, tmp_path / "c")
    assert [i for i, _ in cached.bad_files] == [6]
    assert "truncated" in cached.bad_files[0][1].lower()
    assert cached.pixel_sha256[6] is None and cached.sizes[6] is None
    assert not cached.images[6].any()
    assert load_or_build_cache([*files, bad], 8, tmp_path / "c").bad_files == cached.bad_files


def test_duplicate_pixels_share_a_hash(tmp_path):
    a, b = write_duplicate_pair(tmp_path)
    assert a.read_bytes() != b.read_bytes()
    cached = load_or_build_cache([a, b], 8, tmp_path / "c")
    assert cached.pixel_sha256[0] == cached.pixel_sha256[1] == pixel_sha256(decode_image(a))


def test_default_dir_and_missing_file(tmp_path, files, monkeypatch):
    monkeypatch.setenv("RSCOMPRESS_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    load_or_build_cache(files, 8)
    assert len(list((tmp_path / "env").glob("*.npy"))) == 1
    monkeypatch.delenv("RSCOMPRESS_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "rscompress")
    with pytest.raises(UserError, match=r"gone\.png"):
        load_or_build_cache([tmp_path / "gone.png"], 8, tmp_path / "c")


def test_unwritable_cache_dir_is_a_user_error(tmp_path, files):
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    with pytest.raises(UserError, match="blocker"):
        load_or_build_cache(files, 8, tmp_path / "blocker" / "cache")


def _no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_a_user_error_and_leaves_no_temp_file(tmp_path, files, monkeypatch):
    # Without the reservation a memory-mapped write into a full disk is SIGBUS (exit 135, no
    # message): the disk being full must surface before any pixel is written.
    monkeypatch.setattr(cache_mod.os, "posix_fallocate", _no_space, raising=False)
    with pytest.raises(UserError, match="No space left"):
        load_or_build_cache(files, 8, tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_full_disk_without_fallocate_is_a_user_error(tmp_path, files, monkeypatch):
    monkeypatch.delattr(cache_mod.os, "posix_fallocate", raising=False)
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(UserError, match="bytes needed, 0 free"):
        load_or_build_cache(files, 8, tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_reserved_cache_is_fully_allocated(tmp_path, files):
    load_or_build_cache(files, 8, tmp_path / "c")
    (npy,) = (tmp_path / "c").glob("*.npy")
    assert npy.stat().st_blocks * 512 >= npy.stat().st_size
