"""Decode every image once into a resized uint8 array on disk, reused by every later run.

Training reads batches from this array (memory-mapped), so the per-epoch cost is a gather and a
few tensor ops instead of JPEG decoding. Files:

    <cache_dir>/<key>.npy    N×S×S×3 uint8, row i = file i resized to S×S (zeros for bad files)
    <cache_dir>/<key>.json   per-file sha256 of the full-resolution decoded pixels, sizes, bad files

The key hashes the absolute paths, their sizes and mtimes, the image size and ``CACHE_VERSION``,
so any change to the data gives a new entry instead of stale pixels. The JSON is written last and
marks the entry complete. Old entries are never deleted automatically.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from rscompress.data.datasets import BadImageError, decode_image, resize_image
from rscompress.data.detection_transforms import letterbox
from rscompress.errors import UserError
from rscompress.io_utils import write_atomic, write_text_atomic

# Bump when decoding or resizing changes, so caches made by older code are not reused.
CACHE_VERSION = 1
# Decoding releases the GIL (Pillow, zlib); more workers than cores only adds contention.
DECODE_WORKERS = 2

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class DecodedFile:
    """One file after decoding: either its facts or the reason it is bad."""

    size: tuple[int, int] | None = None  # (width, height) at full resolution
    sha256: str | None = None  # of the full-resolution decoded pixels, see pixel_sha256
    small: np.ndarray | None = None  # resized pixels, when a size was asked for
    error: str | None = None


@dataclass(frozen=True)
class CachedImages:
    images: np.ndarray  # N×S×S×3 uint8, read-only memory map, aligned with the input paths
    pixel_sha256: tuple[str | None, ...]  # None for bad files
    sizes: tuple[tuple[int, int] | None, ...]  # (width, height) at full resolution
    bad_files: tuple[tuple[int, str], ...]  # (index into the input paths, reason)


def default_cache_dir() -> Path:
    env = os.environ.get("RSCOMPRESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rscompress"


def pixel_sha256(pixels: np.ndarray) -> str:
    """Identity of decoded content: equal for byte-different files with identical pixels."""
    h = hashlib.sha256(f"{pixels.shape}".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def _decode_one(path: Path, img_size: int | None, letterboxed: bool = False) -> DecodedFile:
    try:
        pixels = decode_image(path)
    except BadImageError as e:
        return DecodedFile(error=e.reason)
    small = None
    if img_size:
        small = letterbox(pixels, img_size) if letterboxed else resize_image(pixels, img_size)
    return DecodedFile(size=(pixels.shape[1], pixels.shape[0]), sha256=pixel_sha256(pixels), small=small)


def decode_files(
    paths: Sequence[Path], img_size: int | None, progress: Progress | None = None, letterboxed: bool = False
) -> Iterator[DecodedFile]:
    """Decode ``paths`` on a small thread pool; results come back in input order. ``letterboxed``:
    fitted into img_size×img_size with the aspect kept (detection), else squashed to it."""
    pool = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="rscompress-decode")
    decode = partial(_decode_one, img_size=img_size, letterboxed=letterboxed)
    try:
        for done, result in enumerate(pool.map(decode, paths), 1):
            if progress is not None:
                progress(done, len(paths))
            yield result
    finally:
        # A consumer that stops early (error, Ctrl-C) must not wait for the whole queue.
        pool.shutdown(wait=True, cancel_futures=True)


def cache_key(paths: Sequence[Path], img_size: int, letterboxed: bool = False) -> str:
    files = []
    for path in paths:
        try:
            st = path.stat()
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None
        files.append([str(path.absolute()), st.st_size, st.st_mtime_ns])
    # Named only when set, so the squashed (classification) caches keep the keys they had.
    fit = {"letterboxed": True} if letterboxed else {}
    material = json.dumps({"version": CACHE_VERSION, "img_size": img_size, **fit, "files": files})
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def load_or_build_cache(
    paths: Sequence[Path],
    img_size: int,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    letterboxed: bool = False,
) -> CachedImages:
    """The decoded, resized images of ``paths``: from the cache, or decoded now and cached.
    ``letterboxed``: as ``decode_files``."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(paths, img_size, letterboxed)
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    cached = _read(npy, meta, len(paths), img_size)
    if cached is not None:
        return cached
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _build(paths, img_size, npy, meta, progress, letterboxed)
    except OSError as e:
        raise UserError(f"cannot write the image cache in {cache_dir}: {e}") from None
    cached = _read(npy, meta, len(paths), img_size)
    assert cached is not None, f"cache entry {npy} unreadable right after writing it"
    return cached


def _read(npy: Path, meta: Path, count: int, img_size: int) -> CachedImages | None:
    """The cache entry, or None if it is missing or damaged (then it is rebuilt)."""
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        images = np.load(npy, mmap_mode="r")
        cached = CachedImages(
            images=images,
            pixel_sha256=tuple(info["sha256"]),
            sizes=tuple(tuple(s) if s else None for s in info["sizes"]),
            bad_files=tuple((int(i), str(reason)) for i, reason in info["bad"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    expected_shape = (count, img_size, img_size, 3)
    if images.dtype != np.uint8 or images.shape != expected_shape or len(info["sha256"]) != count:
        return None
    return cached


def reserve_disk_space(path: Path) -> None:
    """Allocate every block of the (sparse) file ``path`` now. A memory-mapped write into a hole
    the disk has no room for kills the process with SIGBUS, no message and a model-sized temp file
    left; reserving the blocks first makes a full disk an OSError (ENOSPC) that is reported and
    cleaned up like any other failed write."""
    size = path.stat().st_size
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        return
    # No fallocate (macOS): the best available is to compare with the free space.
    free = shutil.disk_usage(path.parent).free
    if free < size:
        raise OSError(errno.ENOSPC, f"{size:,} bytes needed, {free:,} free", str(path.parent))


def _build(
    paths: Sequence[Path], img_size: int, npy: Path, meta: Path, progress: Progress | None, letterboxed: bool
) -> None:
    sha: list[str | None] = []
    sizes: list[tuple[int, int] | None] = []
    bad: list[tuple[int, str]] = []

    def fill(tmp: Path) -> None:
        # Written straight to disk: the full array can be larger than memory (NWPU at 256 px: 6 GB).
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), img_size, img_size, 3))
        reserve_disk_space(tmp)
        for i, decoded in enumerate(decode_files(paths, img_size, progress, letterboxed)):
            if decoded.error is not None:
                bad.append((i, decoded.error))
            else:
                images[i] = decoded.small
            sha.append(decoded.sha256)
            sizes.append(decoded.size)
        images.flush()
        del images

    write_atomic(npy, fill)
    record = {
        "version": CACHE_VERSION,
        "img_size": img_size,
        "files": [str(p.absolute()) for p in paths],  # for people inspecting the cache
        "sha256": sha,
        "sizes": sizes,
        "bad": bad,
    }
    write_text_atomic(meta, json.dumps(record))
