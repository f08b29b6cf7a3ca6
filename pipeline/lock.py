"""One writer per split folder: an advisory lock file that names its holder.

``split_lock(split_dir)`` holds ``<split_dir>/pipeline.lock`` (``filelock``: ``flock`` on the file, which the
kernel releases when the holder dies, also after ``kill -9``) for the whole run. Beside it,
``pipeline.lock.json`` names the holder (host, pid, start time, command) so a second run can say who has the
split. A holder file left behind by a killed run is recognised as stale: the lock itself is free, the run
takes over and says whose lock it was. The lock is independent of ``HDF5_USE_FILE_LOCKING``, which only
switches HDF5's own per-file locks (often off on NFS and Lustre).
"""
from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError
from pipeline.files import atomic_write, leftover_temporaries

LOCK_NAME = "pipeline.lock"
HOLDER_NAME = "pipeline.lock.json"


class SplitBusy(UserError):
    """Another run holds the split folder (message: one line naming the holder's host and pid)."""


def _holder(split_dir: Path) -> dict:
    try:
        return json.loads((split_dir / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _describe(h: dict) -> str:
    if not h:
        return "another run (holder unknown)"
    return f"host {h.get('host')} pid {h.get('pid')} since {h.get('since')} ({h.get('command', '')})"


@contextmanager
def split_lock(split_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``split_dir``'s lock for the block; raises ``SplitBusy`` at once if another run holds it."""
    from filelock import FileLock, Timeout

    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(split_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SplitBusy(f"{split_dir}: another run is writing this split ({_describe(_holder(split_dir))}); "
                        f"wait for it or stop it, or give another --shards-root") from None
    try:
        stale = _holder(split_dir)
        if stale:
            print(f"{split_dir}: stale lock of {_describe(stale)} (that run ended without releasing it); "
                  f"taking over", flush=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]}
        for left in leftover_temporaries(split_dir / HOLDER_NAME):  # of a run killed while writing it
            left.unlink(missing_ok=True)
        atomic_write(split_dir / HOLDER_NAME, json.dumps(me))
        yield
    finally:
        (split_dir / HOLDER_NAME).unlink(missing_ok=True)
        lock.release()
