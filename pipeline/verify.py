"""``verify``: check that a folder of shards is complete and readable before anyone trains on it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from pipeline.resume import check_index_plan, shard_plan
from pipeline.shards import (
    FAILURES_NAME,
    PER_FACE,
    STAGING_NAME,
    TMP_SUFFIX,
    VIDEO_KEYS,
    ShardError,
    ShardReader,
    load_index,
)


def _check_chunks(path: Path, ds: h5py.Dataset) -> list[str]:
    """Read ``ds`` one chunk of rows at a time; one line per run of unreadable rows (checksum or decompression).

    HDF5 checks each chunk's fletcher32 on read and raises ``OSError`` when it does not match.
    """
    if ds.shape is None or ds.ndim == 0 or ds.shape[0] == 0:
        return []
    step = ds.chunks[0] if ds.chunks else ds.shape[0]
    bad: list[tuple[int, int, str]] = []
    for start in range(0, ds.shape[0], step):
        stop = min(ds.shape[0], start + step)
        try:
            ds[start:stop]
        except OSError as e:
            reason = _reason(e)
            if bad and bad[-1][1] == start:
                bad[-1] = (bad[-1][0], stop, bad[-1][2])
            else:
                bad.append((start, stop, reason))
    return [f"{path}: dataset {ds.name.lstrip('/')!r} rows {a}-{b - 1} unreadable ({why}); the shard is corrupt: "
            f"rerun extract-frames to redo it" for a, b, why in bad]


def _reason(e: BaseException) -> str:
    return str(e).split(";")[0].strip() or type(e).__name__


def _whole(path: Path, ds: h5py.Dataset, out: list[str]) -> np.ndarray | None:
    """All of a (small) dataset, or None after adding the problem (a corrupt chunk) to ``out``."""
    try:
        return ds[()]
    except OSError as e:
        out.append(f"{path}: dataset {ds.name.lstrip('/')!r} unreadable ({_reason(e)}); the shard is corrupt: "
                   f"rerun extract-frames to redo it")
        return None


def verify_shard(path: Path, expected: dict | None = None, deep: bool = True) -> list[str]:
    """Problems of one shard (empty list = fine), each a line naming the file.

    Checks: schema (``ShardReader``), equal per-face lengths, video rows complete and referenced rows valid,
    counts against the index entry ``expected``, finite boxes/scores/keypoints, landmarks finite exactly where
    ``landmark_ok``, and with ``deep`` every crop chunk decompressed.
    """
    try:
        r = ShardReader(path)
        n = len(r)
    except (ShardError, OSError) as e:
        return [str(e) if isinstance(e, ShardError) else f"{path}: unreadable ({_reason(e)}); the shard is corrupt: "
                                                          f"rerun extract-frames to redo it"]
    out = []
    with h5py.File(path, "r") as f:
        for name in PER_FACE:
            if f[name].shape[0] != n:
                out.append(f"{path}: {name} has {f[name].shape[0]} rows, expected {n}")
        s = r.crop_size
        if f["faces"].shape[1:] != (s, s, 3) or f["faces"].dtype != np.uint8:
            out.append(f"{path}: faces {f['faces'].shape} {f['faces'].dtype}, expected (N, S, S, 3) uint8")
        for name in ("boxes", "scores", "kps5", "crop_boxes"):
            values = _whole(path, f[name], out)
            if values is not None and not np.isfinite(values).all():
                out.append(f"{path}: {name} has non-finite values")
        lm = _whole(path, f["landmarks"], out) if r.has_landmarks else None
        if lm is not None:
            finite = np.isfinite(lm).all(axis=(1, 2))
            if (finite != r.landmark_ok).any():
                out.append(f"{path}: landmarks finite at {int((finite != r.landmark_ok).sum())} rows that "
                           f"landmark_ok does not match")
        if int(r.attrs["schema_version"]) >= 2:
            for name in f:
                if isinstance(f[name], h5py.Dataset) and not f[name].fletcher32:
                    out.append(f"{path}: dataset {name!r} has no fletcher32 checksum")
        if deep:
            for name in f:
                if isinstance(f[name], h5py.Dataset):
                    out += _check_chunks(path, f[name])
    for row in r.videos:
        missing = [k for k in VIDEO_KEYS if k not in row]
        if missing:
            out.append(f"{path}: video {row.get('id')!r} lacks {missing}")
    if n and (r.video.min() < 0 or r.video.max() >= len(r.videos)):
        out.append(f"{path}: video column refers to rows outside the videos table")
    if expected is not None:
        if expected.get("n_faces") != n or expected.get("n_videos") != len(r.videos):
            out.append(f"{path}: index says {expected.get('n_faces')} faces / {expected.get('n_videos')} videos, "
                       f"shard has {n} / {len(r.videos)}")
        if bool(expected.get("landmarks")) != r.has_landmarks:
            out.append(f"{path}: index landmarks={expected.get('landmarks')} but shard has_landmarks="
                       f"{r.has_landmarks}")
    r.close()
    return out


def verify_split(split_dir: str | os.PathLike, deep: bool = True) -> list[str]:
    """Problems of a split folder: its index, every listed shard, leftover .tmp files, unpacked staged videos,
    unlisted shards."""
    split_dir = Path(split_dir)
    try:
        index = load_index(split_dir)
    except ShardError as e:
        return [str(e)]
    out = []
    listed = {s["file"] for s in index["shards"]}
    plans = {}
    for s in index["shards"]:
        p = split_dir / s["file"]
        if not p.is_file():
            out.append(f"{p}: listed in index.json but missing")
            continue
        problems = verify_shard(p, s, deep)
        out += problems
        if not problems and (plan := shard_plan(p)) is not None:
            plans[s["file"]] = plan
    out += check_index_plan(split_dir, index, plans)
    for p in sorted(split_dir.glob("*.h5")):
        if p.name not in listed:
            out.append(f"{p}: shard not listed in index.json (rerun the stage to rebuild the index)")
    for p in sorted(split_dir.glob("*" + TMP_SUFFIX)) + sorted((split_dir / STAGING_NAME).glob("*" + TMP_SUFFIX)):
        out.append(f"{p}: unfinished file left by an interrupted run (rerun the stage to finish it)")
    staged = sorted((split_dir / STAGING_NAME).glob("v-*.h5"))
    if staged:
        out.append(f"{split_dir / STAGING_NAME}: {len(staged)} extracted videos not packed into shards yet (e.g. "
                   f"{staged[0].name}); rerun extract-frames to pack them")
    if index["n_videos"] == 0:
        out.append(f"{split_dir / 'index.json'}: the split holds no video (every input failed: see its failures log)")
    if sum(s["n_faces"] for s in index["shards"]) != index["n_faces"]:
        out.append(f"{split_dir / 'index.json'}: n_faces does not equal the sum over shards")
    fails = split_dir / index.get("failures", FAILURES_NAME)
    if fails.exists():
        for k, line in enumerate(fails.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
                if not {"file", "stage", "reason"} <= set(row):
                    raise ValueError("missing keys")
            except ValueError as e:
                out.append(f"{fails}:{k}: malformed failure row ({e})")
                break
    return out
