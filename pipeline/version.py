"""Which code wrote a file: the one home of the project's version stamps.

- :func:`package_version`: the installed ``laanet`` distribution's version, or ``<pyproject version>+source`` when
  the code runs from a checkout that was never installed. Stored in every shard (``package_version``).
- :func:`code_hash`: a short SHA-256 of the pipeline package's source files. The Dask client and its workers
  must agree on it (with the package version) before any work is submitted.
- :func:`code_version`: ``git describe --always --dirty`` of the checkout, else the package version. Stored in
  every training checkpoint; read once per process (the code a process runs does not change under it).
"""
from __future__ import annotations

import hashlib
import re
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DISTRIBUTION = "laanet"


@lru_cache(maxsize=1)
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pyproject = PACKAGE_DIR.parent / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return f"{found.group(1) if found else '0'}+source"


def code_hash() -> str:
    """Short SHA-256 of the pipeline package's source files (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(PACKAGE_DIR.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe --always --dirty`` of the checkout the code runs from; the package version elsewhere."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=PACKAGE_DIR, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return package_version()
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else package_version()
