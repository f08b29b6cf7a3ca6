"""Errors the command-line tools report as one line, and the handler that reports them.

A user who gives a bad config, manifest, shard folder, checkpoint or input file needs one line naming the file
and what to do, not a traceback. Every such error is a :class:`UserError` (ConfigError, ManifestError,
ShardError, CheckpointError, VideoError, ...). Every entry point (``python -m pipeline``, train.py, evaluate.py,
``python -m model ...``) runs its work under :func:`user_errors`, which turns a UserError into
``<tool>: <message>`` on stderr and exit status 1; any other exception is a bug or an environment problem and
keeps its traceback. ``LAANET_DEBUG=1`` keeps the traceback of a UserError too. Exit statuses of every tool:
0 success, 1 failure, 2 usage (a bad flag or a missing argument).
"""
from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

DEBUG_ENV = "LAANET_DEBUG"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A problem with what the user gave (a config, manifest, shard, checkpoint or input file, or settings that
    cannot work together); its message names the file or key and the reason."""


def debugging() -> bool:
    """True when ``LAANET_DEBUG`` is set to anything but "", "0" or "false"."""
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false")


def one_line(err: BaseException, with_type: bool = False) -> str:
    """The message of ``err`` on one line (``with_type``: after its type's name, e.g. ``OSError: ...``).

    An error raised in a DataLoader worker comes back as "Caught X in DataLoader worker process 0.
    Original Traceback ...": its last line is the original ``module.X: message``, which is what is kept.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    text = " ".join(text.split())
    if with_type:
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


@contextmanager
def user_errors(tool: str, quiet: Callable[[UserError], bool] | None = None) -> Iterator[None]:
    """Run a tool's work: a :class:`UserError` ends it with one line and exit status 1 (no line when
    ``quiet(err)`` says so, e.g. on the other ranks of a DDP run); anything else propagates with its traceback."""
    try:
        yield
    except UserError as err:
        if debugging():
            raise
        if quiet is not None and quiet(err):
            raise SystemExit(EXIT_FAILURE) from None
        raise SystemExit(f"{tool}: {one_line(err)}") from None   # printed on stderr, exit status 1


def exit_status(tool: str, fn: Callable[..., int], *args) -> int:
    """``fn(*args)``'s exit status, or 1 after one line on stderr when it raises a :class:`UserError` (for tools
    whose ``main`` returns a status instead of raising SystemExit)."""
    try:
        return fn(*args)
    except UserError as err:
        if debugging():
            raise
        print(f"{tool}: {one_line(err)}", file=sys.stderr)
        return EXIT_FAILURE
