"""Resume by content: which videos and settings a split folder already holds, and what a rerun still has to do.

A video's work is committed once, in its own file under the split's ``.staging/`` folder, and later packed
into a ``shard-NNNNN.h5``. Every shard and staged file records the videos planned into it (``planned``
dataset: id, path, size, mtime) and the settings that shape its contents (``settings`` JSON attribute and
its ``settings_hash``). A rerun compares them with its own plan, never with file names:

* same settings, same videos: committed videos (packed or staged) are kept, the rest is redone;
* videos that no file holds yet are extracted; all staged videos are then packed into new shards, named
  with the lowest free numbers;
* a staged file of a video that a shard already holds (packing was interrupted after the shard's commit)
  is removed, so a video is never in two shards;
* other settings, or videos that are gone or changed on disk: ``PlanConflict`` before any work, one line
  naming what differs (``--overwrite`` redoes the split, a new ``--out`` keeps both).

A committed file whose header or checksums cannot be read is removed and its videos are redone; temporary
files of unfinished attempts are removed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py

from pipeline.errors import UserError
from pipeline.manifest import VideoItem
from pipeline.shards import FAILURES_NAME, INDEX_NAME, STAGING_NAME, TMP_SUFFIX, ShardError, read_json_rows


class PlanConflict(UserError):
    """The split folder holds shards made for another plan (message: one line, what differs, what to do)."""


def video_record(item: VideoItem) -> dict:
    """id, path, size and mtime of a video (an image folder: total size and newest mtime of its files).

    A file that does not exist gets size -1 (it fails in the run, and stays planned, so it is not retried
    silently either).
    """
    p = Path(item.path)
    size, mtime = -1, 0.0
    try:
        if p.is_dir():
            stats = [e.stat() for e in os.scandir(p) if e.is_file()]
            size = sum(s.st_size for s in stats)
            mtime = max([s.st_mtime for s in stats] + [p.stat().st_mtime])
        else:
            st = p.stat()
            size, mtime = st.st_size, st.st_mtime
    except OSError:
        pass
    return {"id": item.id, "path": str(item.path), "size": int(size), "mtime": round(float(mtime), 6)}


def settings_hash(settings: dict | list) -> str:
    """16 hex digits of the SHA-256 of ``settings`` as sorted JSON (the key of a stage's settings)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def staged_path(split_dir: str | os.PathLike, video_id: str) -> Path:
    """The committed per-video file of ``video_id`` in ``split_dir/.staging`` (named by a hash: ids hold slashes)."""
    return Path(split_dir) / STAGING_NAME / f"v-{hashlib.sha1(video_id.encode()).hexdigest()[:24]}.h5"


def free_shard_names(split_dir: Path, n: int) -> list[str]:
    """The ``n`` lowest ``shard-NNNNN.h5`` names not taken in ``split_dir``."""
    taken = {p.name for p in Path(split_dir).glob("shard-*.h5")}
    names, k = [], 0
    while len(names) < n:
        name = f"shard-{k:05d}.h5"
        if name not in taken:
            names.append(name)
        k += 1
    return names


@dataclass
class ResumePlan:
    """``kept``: finished shards to keep; ``staged``: video id -> its committed, not yet packed file;
    ``todo``: videos still to extract (input order); ``removed``: unreadable files deleted (their videos are
    in ``todo``); ``dropped``: staged files deleted because a shard already holds their video."""
    kept: list[str]
    staged: dict[str, Path]
    todo: list[VideoItem]
    removed: list[str]
    dropped: list[str]


def _read_plan(path: Path) -> tuple[dict, list[dict]] | None:
    """(settings, planned rows) of a committed file; None when its header or any checksum cannot be read."""
    try:
        import hdf5plugin  # noqa: F401  (Blosc crops: the checksum pass decompresses them)

        with h5py.File(path, "r") as f:
            if "settings" not in f.attrs or "planned" not in f:
                return {}, []
            settings = json.loads(f.attrs["settings"])
            planned = read_json_rows(f, "planned")
            for name in f:  # verify-on-resume: HDF5 checks each chunk's fletcher32 as it reads
                ds = f[name]
                if isinstance(ds, h5py.Dataset) and ds.shape and ds.shape[0]:
                    step = ds.chunks[0] if ds.chunks else ds.shape[0]
                    for start in range(0, ds.shape[0], step):
                        ds[start:start + step]
            return settings, planned
    except (OSError, ValueError, KeyError):
        return None


def _diff(old: dict, new: dict) -> str:
    def show(d: dict, k: str) -> str:
        return repr(d[k]) if k in d else "(absent)"

    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {show(old, k)} -> {show(new, k)}" for k in keys
                     if k not in old or k not in new or old[k] != new[k])


def plan_resume(split_dir: Path, items: Sequence[VideoItem], settings: dict) -> ResumePlan:
    """Compare ``split_dir``'s shards and staged files with this run's ``items`` and ``settings``.

    Raises ``PlanConflict``. Temporary files of unfinished attempts are removed (the caller holds the
    split's lock, so no other run owns them).
    """
    split_dir = Path(split_dir)
    records = {it.id: video_record(it) for it in items}
    if len(records) != len(items):
        seen: set[str] = set()
        dup = next(it.id for it in items if it.id in seen or seen.add(it.id))
        raise PlanConflict(f"{split_dir}: video id {dup!r} appears twice in this run's input; ids must be unique")
    hint = "rerun with --overwrite to redo the split, or give a new --out"
    kept, removed, dropped, held = [], [], [], {}
    staging = split_dir / STAGING_NAME
    staged: dict[str, Path] = {}
    shards = sorted(split_dir.glob("shard-*.h5"))
    for p in shards + sorted(staging.glob("v-*.h5")):
        plan = _read_plan(p)
        if plan is None:
            p.unlink()
            removed.append(str(p.relative_to(split_dir)))
            continue
        old_settings, planned = plan
        if not planned and not old_settings:
            raise PlanConflict(f"{p}: written before shards recorded their videos and settings; {hint}")
        if old_settings != settings:
            raise PlanConflict(f"{split_dir}: shards were made with other settings ({_diff(old_settings, settings)}); "
                               f"{hint}")
        if p.parent == staging:
            row = planned[0]
            if row["id"] in held:  # packed, but the staged file outlived the packing: the shard's copy wins
                p.unlink()
                dropped.append(row["id"])
                continue
            staged[row["id"]] = p
            held[row["id"]] = (str(p.relative_to(split_dir)), row)
            continue
        for row in planned:
            held[row["id"]] = (p.name, row)
        kept.append(p.name)
    gone = [i for i in held if i not in records]
    if gone:
        raise PlanConflict(f"{split_dir}: {len(gone)} videos in the shards are not in this run's input "
                           f"(e.g. {gone[0]!r} in {held[gone[0]][0]}); {hint}")
    changed = [i for i, (_, row) in held.items() if row != records[i]]
    if changed:
        i = changed[0]
        now = records[i]
        what = ", ".join(f"{k} {held[i][1].get(k)!r} -> {now[k]!r}" for k in ("path", "size", "mtime")
                         if held[i][1].get(k) != now[k])
        raise PlanConflict(f"{split_dir}: {len(changed)} videos changed on disk since their shard was made "
                           f"(e.g. {i!r}: {what}); {hint}")
    for t in list(split_dir.glob("*" + TMP_SUFFIX)) + list(staging.glob("*" + TMP_SUFFIX)):
        t.unlink(missing_ok=True)
    todo = [it for it in items if it.id not in held]
    return ResumePlan(kept=kept, staged=staged, todo=todo, removed=removed, dropped=dropped)


def clear_split(split_dir: Path) -> int:
    """``--overwrite``: remove this pipeline's files from a split folder (shards, staged videos, temporaries,
    index, failures)."""
    n = 0
    for pattern in ("shard-*.h5", "*" + TMP_SUFFIX, INDEX_NAME, FAILURES_NAME, f"{STAGING_NAME}/v-*.h5",
                    f"{STAGING_NAME}/*{TMP_SUFFIX}"):
        for p in Path(split_dir).glob(pattern):
            p.unlink()
            n += 1
    return n


def check_index_plan(split_dir: Path, index: dict, shard_plans: dict[str, tuple[str, list[str]]]) -> list[str]:
    """verify: video ids unique across the split, and every shard's plan equal to the index's entry.

    ``shard_plans``: shard file -> (settings_hash, planned ids) as read from the shard.
    """
    out = []
    owner: dict[str, str] = {}
    for name, (_, ids) in shard_plans.items():
        for i in ids:
            if i in owner:
                out.append(f"{split_dir / name}: video {i!r} is also in {owner[i]}; a video belongs to one shard")
            owner.setdefault(i, name)
    want = index.get("plan", {}).get("settings_hash")
    for s in index["shards"]:
        if s["file"] not in shard_plans:
            continue
        h, ids = shard_plans[s["file"]]
        if "videos" in s and list(s["videos"]) != ids:
            out.append(f"{split_dir / s['file']}: its videos differ from index.json's entry for it")
        if want is not None and h != want:
            out.append(f"{split_dir / s['file']}: settings_hash {h} differs from index.json's plan {want}")
    return out


def shard_plan(path: Path) -> tuple[str, list[str]] | None:
    """(settings_hash, planned video ids) of a shard, None for shards without a plan; raises ShardError."""
    try:
        with h5py.File(path, "r") as f:
            if "planned" not in f:
                return None
            return str(f.attrs.get("settings_hash", "")), [r["id"] for r in read_json_rows(f, "planned")]
    except OSError as e:
        raise ShardError(f"{path}: cannot read its plan ({e})") from e
