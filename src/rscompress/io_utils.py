"""Atomic file writes: a reader (or a kill -9) never sees a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rscompress.errors import UserError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then rename over ``path``.

    A write the disk refuses (full, read-only, not ours) is a UserError naming ``path``
    (``writing``): the temp file is removed and what was at ``path`` is as it was.
    """
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            write(tmp)
            # mkstemp makes 0600, and some writers (safetensors) recreate the file at 0600, so the
            # usual mode is set after writing: a run dir shared with a group stays readable.
            os.chmod(tmp, 0o666 & ~_umask())
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError in the block (a full disk, a read-only or unwritable folder) is one UserError
    naming ``path``, the file the block writes: the disk's state, not a bug."""
    try:
        yield
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None


@contextmanager
def staging_dir(dest: Path, prefix: str) -> Iterator[Path]:
    """A temp folder beside ``dest`` (on its file system, so a rename moves a file from it to
    ``dest``), removed after the block; a folder the disk refuses is a UserError naming ``dest``."""
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.TemporaryDirectory(prefix=prefix, dir=dest.parent)
    with staging as path:
        yield Path(path)


# The temp folders staging_dir makes beside a file being exported (deploy/onnx.py, deploy/int8.py).
ONNX_STAGING, INT8_STAGING, INT8_FP32_STAGING = ".onnx-export-", ".int8-export-", ".int8-fp32-"


def remove_leftovers(folder: Path, lock_name: str) -> None:
    """Remove the temp files of write_atomic (``.NAME.*.tmp``) and the staging folders that a
    kill mid-write left in ``folder`` or below (a kill skips every cleanup). Only while no one
    writes there: the run dir's lock held (locking.hold_dir). A folder below with a ``lock_name``
    file is a run dir of its own, whose writer may be at work: it is cleaned at its own start.
    Links are neither followed nor removed: what they lead to is not this folder's."""
    for parent, folders, files in os.walk(folder):
        here = Path(parent)
        if here != folder and lock_name in files:
            folders.clear()
            continue
        for name in files:
            if name.startswith(".") and name.endswith(".tmp") and not (here / name).is_symlink():
                (here / name).unlink(missing_ok=True)
        for name in [f for f in folders if f.startswith((ONNX_STAGING, INT8_STAGING, INT8_FP32_STAGING))]:
            folders.remove(name)
            if not (here / name).is_symlink():
                shutil.rmtree(here / name, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync: each finished epoch is on disk before the next starts."""
    # A line cut short by a full disk is dropped by the next resume (trainer._read_history).
    with writing(path), open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSON-lines file; a line cut short by a kill mid-append is left out."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source``, or a copy where a link cannot be made (another
    file system). A link is safe for files that are only ever replaced whole (write_atomic),
    never written in place, and a large one is then not stored twice."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
