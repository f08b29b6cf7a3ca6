"""Files the project writes and reads whole: atomic replacement (with fsync) and content hashes.

Every small file a reader must never see half-written (a split's ``index.json`` and failures log, a run's
``metrics.csv``, ``history.json`` and config, checkpoints, evaluation reports and score tables) goes through
:func:`atomic_write` or :func:`atomic_path`: the bytes go to ``<name>.<pid>.tmp`` beside the target, are flushed
to the disk (fsync), and the temporary file is renamed over the target (``os.replace``, atomic on POSIX), then
the folder entry is synced. A killed writer leaves the old file or the new one, never a mix; a second writer
of the same target in another process writes its own temporary file.

A writer killed between the write and the rename leaves its temporary file behind
(:func:`leftover_temporaries`). In a split folder the name ends like every unfinished file
(``pipeline.shards.TMP_SUFFIX``): ``verify`` reports it, and the next run, which holds the split's lock,
removes it.
"""
from __future__ import annotations

import errno
import glob
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError

HASH_CHUNK = 1 << 20
TMP_SUFFIX = ".tmp"
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(UserError, OSError):
    """A write failed because the device (or the user's quota) is full; the message names the folder."""


def is_disk_full(e: BaseException) -> bool:
    """An OSError of a full device or quota (h5py keeps the errno in its message only)."""
    return isinstance(e, OSError) and (e.errno in FULL_ERRNOS or "No space left on device" in str(e)
                                       or "Disk quota exceeded" in str(e))


def disk_full(folder: str | os.PathLike) -> DiskFull:
    """The one-line error for a full device under ``folder``, with the space left there."""
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    err = DiskFull(f"{folder}: no space left on the device ({free}); free some space or write somewhere else, "
                   f"then rerun (finished work is kept)")
    err.errno = errno.ENOSPC
    return err


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, the file written there is
    synced and renamed to ``path``. On an error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e) and not isinstance(e, DiskFull):
            raise disk_full(path.parent) from e
        raise
    _fsync_dir(path.parent)


def leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files of ``path`` left by writers killed inside :func:`atomic_path` (any process). Remove
    them only where no writer of ``path`` can be running (a split's lock holder)."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(path.name)}.*{TMP_SUFFIX}"))


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
