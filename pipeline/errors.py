"""One-line errors for the command-line tools (``python -m pipeline``, train.py, evaluate.py).

A user who gives a bad config, a missing or corrupt shard folder or a checkpoint of another architecture
needs one line naming the file and what to do, not a traceback. ``LAANET_DEBUG=1`` keeps the traceback for
whoever debugs the tool itself.
"""
from __future__ import annotations

import os
import re

DEBUG_ENV = "LAANET_DEBUG"


def debugging() -> bool:
    """True when ``LAANET_DEBUG`` is set to anything but "", "0" or "false"."""
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false")


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line.

    An error raised in a DataLoader worker comes back as "Caught X in DataLoader worker process 0.
    Original Traceback ...": its last line is the original ``module.X: message``, which is what is kept.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    return " ".join(text.split())
