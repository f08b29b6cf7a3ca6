"""The end of a run, on the client: staged videos packed into shards, the failures log rebuilt, the index
written last, and the run's summary.

Every failure is stored with the video's result (the ``failures`` dataset of its staged file, then of its
shard); ``failures.jsonl`` is rebuilt from the split at the end of every run, plus the rows of this run that
have no file (a task that crashed: its video is redone next time). ``index.json`` is written last.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.extract import failure
from pipeline.files import atomic_write, leftover_temporaries
from pipeline.manifest import VideoItem
from pipeline.resume import free_shard_names, staged_path
from pipeline.shard_index import summarize_shard, write_index
from pipeline.shard_writer import pack_shard, stored_bytes
from pipeline.shards import FAILURES_NAME, INDEX_NAME, STAGING_NAME, ShardError, load_index, read_failures
from pipeline.tasks import TaskResult, committed_info


@dataclass
class RunSummary:
    split_dir: Path
    shards: list[str]
    n_faces: int
    n_videos: int
    n_frames: int
    n_failures: int
    failed_shards: list[str]            # tasks that failed as a whole (videos of the frames stage, or shards)
    seconds: float
    skipped: int                        # committed videos kept (frames stage) or shards already done (landmarks)
    n_new_videos: int = 0               # videos this run read (0 with planned videos = every input failed)
    n_planned: int = 0                  # videos this run set out to read (extract-frames)


def pack_staged(split_dir: Path, items: Sequence[VideoItem], shard_bytes: int, want_hash: str, homeless: list[dict]
                ) -> list[str]:
    """Pack the split's staged videos, in input order, into new shards of at most ``shard_bytes``; returns the
    ids of the videos that could not be packed (the run then exits non-zero; staged ones stay for the rerun).

    Interruption-safe: a shard is committed (never replacing) before its staged files are removed; a rerun
    drops staged files whose video a shard holds and packs the rest. A staged file made with other settings
    than ``want_hash`` (a worker of an earlier run that outlived its client) is removed, not packed.
    """
    from tqdm import tqdm

    staged, ids, not_packed = [], {}, []
    for it in items:
        p = staged_path(split_dir, it.id)
        if not p.exists():
            continue
        committed = committed_info(p)
        if committed is None or committed[0] != want_hash:
            p.unlink(missing_ok=True)
            why = ("its staged file cannot be read" if committed is None else
                   "committed by an attempt with other settings (an earlier run's worker)")
            print(f"{it.path}: pack: {why}; removed, rerun to redo it", flush=True)
            homeless.append(failure(it.path, "pack", f"{why}; removed, rerun to redo it"))
            not_packed.append(it.id)
            continue
        staged.append(p)
        ids[p] = it.id
    if not staged:
        return not_packed
    groups: list[list[Path]] = []
    size = 0
    for p in staged:
        b = stored_bytes(p)
        if not groups or size + b > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += b
    names = free_shard_names(split_dir, len(groups))
    with tqdm(total=len(staged), desc=f"pack {split_dir.name}", unit="video", dynamic_ncols=True) as bar:
        for name, group in zip(names, groups):
            try:
                pack_shard(group, split_dir / name)
            except (ShardError, OSError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                bar.write(f"{split_dir / name}: pack: {reason}; its {len(group)} videos stay staged for the rerun")
                homeless.append(failure(str(split_dir / name), "pack", reason))
                not_packed += [ids[p] for p in group]
                continue
            for p in group:
                p.unlink()
            bar.update(len(group))
    return not_packed


def rebuild_failures(split_dir: Path, shards: Sequence[str], extra: Sequence[dict] = ()) -> Path:
    """Write ``failures.jsonl`` from the rows stored in the split (shards in order, then staged videos), then
    ``extra`` (rows of this run without a file). Shards written before files stored their failures keep the
    rows the old log has for their videos. Written atomically (``pipeline.files.atomic_write``)."""
    import h5py

    out = split_dir / FAILURES_NAME
    old = []
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                old.append(json.loads(line))
            except ValueError:  # a line cut off by a killed writer of the old log: nothing to keep
                continue
    rows: list[dict] = []
    files = [split_dir / n for n in shards] + sorted((split_dir / STAGING_NAME).glob("v-*.h5"))
    for p in files:
        try:
            with h5py.File(p, "r") as f:
                if "failures" in f:
                    rows += read_failures(f)
                    continue
                legacy = {str(p)} | {r["path"] for r in (json.loads(x) for x in f["planned"][()])} \
                    if "planned" in f else {str(p)}
        except OSError:  # an unreadable file: its own row is in ``extra``
            continue
        rows += [r for r in old if r.get("file") in legacy or r.get("file", "").startswith(str(p))]
    rows += list(extra)
    # A late attempt can stage a video again after it was packed (an external cluster's retried task): the
    # next run drops that copy; until then its rows are the shard's, listed once.
    seen: set[str] = set()
    rows = [r for r in rows if not ((k := json.dumps(r, sort_keys=True)) in seen or seen.add(k))]
    return atomic_write(out, "".join(json.dumps(r) + "\n" for r in rows))


def finish_run(split_dir: Path, dataset: str, split: str, results: list[TaskResult], homeless: list[dict],
               failed: list[str], skipped: int, t0: float, extra: dict | None = None,
               listed: dict[str, dict] | None = None) -> RunSummary:
    """The end of every run: the failures log and ``index.json`` (``extra`` added to it) rebuilt from the split's
    readable shards, and the run's summary, also printed as one line.

    ``listed``: the entries of the index the run started from (the landmark stage). A listed shard that cannot
    be read stays listed as it was, so training and evaluation refuse it by name instead of silently using
    fewer videos; without ``listed`` (frames stage) it is left out and its videos are redone by the next run."""
    names = sorted(p.name for p in split_dir.glob("shard-*.h5"))
    done, kept = [], []
    for n in names:
        try:
            summarize_shard(split_dir / n)
            done.append(n)
        except (OSError, KeyError) as e:
            if listed and n in listed:
                kept.append(listed[n])
                print(f"{split_dir / n}: unreadable ({e}); still listed in {INDEX_NAME}, so training and "
                      f"evaluation refuse it: redo the split with extract-frames --overwrite", flush=True)
            else:  # an index lists readable shards only; the next extract-frames run redoes its videos
                print(f"{split_dir / n}: left out of {INDEX_NAME}: unreadable ({e}); rerun extract-frames to redo "
                      f"it", flush=True)
    # Temporaries of a writer killed inside atomic_write; the caller holds the split's lock, so none is live.
    for stale in leftover_temporaries(split_dir / FAILURES_NAME) + leftover_temporaries(split_dir / INDEX_NAME):
        stale.unlink(missing_ok=True)
    rebuild_failures(split_dir, done, homeless)
    write_index(split_dir, dataset, split, done, extra, kept)
    index = load_index(split_dir)
    n_fail = sum(len(r.failures) for r in results) + len(homeless)
    summary = RunSummary(split_dir=split_dir, shards=done, n_faces=index["n_faces"], n_videos=index["n_videos"],
                         n_frames=sum(r.n_frames for r in results), n_failures=n_fail, failed_shards=failed,
                         seconds=time.perf_counter() - t0, skipped=skipped,
                         n_new_videos=sum(r.n_videos for r in results))
    print(f"{split_dir}: {len(done)} shards, {summary.n_videos} videos, {summary.n_faces} faces; "
          f"{n_fail} new failures, all in {split_dir / FAILURES_NAME}; {summary.seconds:.1f} s", flush=True)
    return summary
