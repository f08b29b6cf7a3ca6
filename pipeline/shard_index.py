"""A split's ``index.json``: the finished shards it lists, written last by every run (``write_index``);
``pipeline.shards.load_index`` reads it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import h5py

from pipeline.files import atomic_write
from pipeline.shards import FAILURES_NAME, INDEX_NAME, SCHEMA_VERSION, read_json_rows


@dataclass(frozen=True)
class ShardSummary:
    """Counts of one finished shard, as listed in index.json."""
    file: str
    n_faces: int
    n_videos: int
    landmarks: bool
    videos: list[str] | None = None     # ids planned into the shard (None for shards without a plan)
    settings_hash: str | None = None

    def entry(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def summarize_shard(path: Path) -> ShardSummary:
    with h5py.File(path, "r") as f:
        planned = [r["id"] for r in read_json_rows(f, "planned")] if "planned" in f else None
        return ShardSummary(file=path.name, n_faces=int(f["faces"].shape[0]), n_videos=int(f["videos"].shape[0]),
                            landmarks=bool(f.attrs.get("landmarks_done", False)), videos=planned,
                            settings_hash=str(f.attrs["settings_hash"]) if planned is not None else None)


def write_index(split_dir: str | os.PathLike, dataset: str, split: str,
                shards: Sequence[str | os.PathLike] | None = None, extra: dict | None = None,
                kept: Sequence[dict] = ()) -> Path:
    """Write ``index.json`` for the finished shards of ``split_dir`` (all ``*.h5`` when ``shards`` is None), plus
    the ``kept`` entries of an earlier index as they were (shards that can no longer be read: still listed, so
    that readers refuse them by name instead of silently using fewer videos).

    Written atomically (``pipeline.files.atomic_write``), so a reader never sees half an index.
    """
    split_dir = Path(split_dir)
    files = sorted(split_dir.glob("*.h5")) if shards is None else [split_dir / Path(s).name for s in shards]
    entries = sorted([summarize_shard(p).entry() for p in files] + list(kept), key=lambda e: e["file"])
    index = {"schema": SCHEMA_VERSION, "dataset": dataset, "split": split, "shards": entries,
             "n_faces": sum(e["n_faces"] for e in entries), "n_videos": sum(e["n_videos"] for e in entries),
             "failures": FAILURES_NAME,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    index.update(extra or {})
    return atomic_write(split_dir / INDEX_NAME, json.dumps(index, indent=1))
