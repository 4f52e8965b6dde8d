"""One writer per run dir: an OS file lock held for as long as a step writes the dir.

Two processes writing one ``--out`` interleave checkpoints, history and config.json into a
run that is neither's (one's config.json, the other's weights and metrics). So a step holds
``flock`` on ``RUN/.rscompress.lock`` while it runs, and a second writer is refused, naming
the holder. The file goes when the step ends.

The lock is the ``flock``, not the file: the OS drops it when its holder ends, however it
ends, so a lock file a killed run left behind blocks nothing and ``--resume`` takes it over.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from rscompress.errors import UserError
from rscompress.io_utils import remove_leftovers

LOCK_FILE = ".rscompress.lock"


@contextmanager
def hold_dir(path: Path) -> Iterator[None]:
    """Hold run dir ``path`` (made if missing) for this process until the block ends.

    UserError naming the holder's pid when another process holds it. Temp files a killed
    writer left are removed first. A dir this call made is removed again when it is left
    empty: a step that failed before writing anything leaves no trace.
    """
    created = _make_dir(path)
    fd = _lock(path)
    try:
        remove_leftovers(path, LOCK_FILE)  # of a writer killed mid-write: the lock says none writes now
        yield
    finally:
        # Removed while still held: a process that opened the file before this and locks it
        # after sees that it is no longer the dir's lock file, and takes a new one (_lock).
        (path / LOCK_FILE).unlink(missing_ok=True)
        os.close(fd)
        if created:
            with suppress(OSError):  # only when empty: the step wrote nothing
                path.rmdir()


def _make_dir(path: Path) -> bool:
    """Make ``path``; whether it was made here."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a run dir; choose another output dir")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot make run dir {path}: {err.strerror}") from None
    return created


def _lock(path: Path) -> int:
    """An open descriptor of ``path``'s lock file, exclusively locked, with this pid in it."""
    lock = path / LOCK_FILE
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UserError(f"cannot lock run dir {path}: {err.strerror} ({lock})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd)
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise UserError(
                    f"{path} is in use by {holder} (it holds {lock}); two processes writing one run dir "
                    "mix their runs: wait for it to end, or write elsewhere"
                ) from None
            raise UserError(f"cannot lock run dir {path}: {err.strerror} ({lock})") from None
        if _is_current(fd, lock):
            break
        os.close(fd)  # the file was removed (its holder ended) between open and lock: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(fd: int) -> str:
    """``process PID`` as the holder wrote it in the lock file; words when it has not yet."""
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def _is_current(fd: int, lock: Path) -> bool:
    """Whether ``fd`` is still the file at ``lock`` (not one removed meanwhile)."""
    try:
        on_disk = lock.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)
