"""Run the stages over many videos: one Dask task per video (longest first); finished videos are packed into
size-bounded shards.

* ``run_extract``: frames -> RetinaFace -> 1.25x crops. Each video is one task (``pipeline.tasks.extract_one``)
  that commits its own file in the split's ``.staging/`` folder. Tasks are submitted with Dask ``priority`` =
  frames x pixels from a probe, so the longest videos start first and a 1080p clip does not become the
  straggler. The client then packs the staged videos, in input order, into ``shard-NNNNN.h5`` files of at most
  ``shard_bytes`` (``pipeline.packing``) and removes the staged files.
* ``run_landmarks``: dlib 68 points for every crop of every finished shard (shard replaced atomically).

Both resume by content (``pipeline.resume``): committed videos, packed or staged, are kept; the rest is redone;
a folder made with other settings or other videos stops the run before any work. Every failure (unreadable
video, frame without a face, crop without landmarks) is stored with the video's result (the ``failures``
dataset of its staged file, then of its shard), and ``failures.jsonl`` is rebuilt from the split at the end
of every run, plus the rows of this run that have no file (a task that crashed: its video is redone next
time). Each problem is also one line on the console; the rest of the run goes on (``on_error="raise"``
stops at the first unreadable video instead). ``index.json`` is written last.

Progress is a tqdm bar over videos (``pipeline.progress``). A lost scheduler is one line (``PipelineError``);
the rerun resumes.

Workers: ``workers=0`` runs in this process (debugging, tests); otherwise a Dask ``LocalCluster`` with
``workers`` single-threaded processes (default: one per core), or an existing cluster via ``scheduler``.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from pipeline.cluster import ClusterError, dask_client, quiet_client_log
from pipeline.extract import failure
from pipeline.files import is_disk_full
from pipeline.lock import SplitBusy, split_lock
from pipeline.manifest import VideoItem
from pipeline.packing import RunSummary, finish_run, pack_staged
from pipeline.progress import PROGRESS_TOPIC_PREFIX, ProgressBar
from pipeline.resume import PlanConflict, clear_split, plan_resume, settings_hash, staged_path, video_record
from pipeline.shards import DEFAULT_SHARD_BYTES, INDEX_NAME, STAGING_NAME, ShardError, ShardReader, load_index
from pipeline.tasks import (
    ErrorPolicy,
    ExtractConfig,
    LandmarkConfig,
    PipelineError,
    TaskResult,
    VideoJob,
    error_policy,
    extract_one,
    extract_settings,
    landmark_part,
    last_rows,
    part_ranges,
    part_videos,
    probe_costs,
    write_landmarks,
)


@dataclass
class _Task:
    """One Dask task as the client sees it: ``name`` (video id or shard name), ``file`` (named in messages),
    ``args`` of the task body, ``priority`` (higher starts first), ``n_videos`` for the progress bar."""
    name: str
    file: str
    args: tuple
    priority: float = 0.0
    n_videos: int = 1


def _remote(fn: Callable, topic: str, *args) -> TaskResult:
    """Run task body ``fn`` on a worker, its progress events going to this run's topic."""
    from distributed import get_worker

    worker = get_worker()
    return fn(*args, lambda ev: worker.log_event(topic, ev))


def _lost_scheduler_errors() -> tuple[type[BaseException], ...]:
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError

    return CommClosedError, CancelledError, TimeoutError, ConnectionError, OSError


def _lost(e: BaseException) -> PipelineError:
    from pipeline.errors import one_line

    reason = one_line(e) or type(e).__name__
    return PipelineError(f"lost the Dask scheduler ({type(e).__name__}: {reason}); committed videos are kept: "
                         f"rerun the same command to resume")


@contextmanager
def _dask_client(workers: int | None, scheduler: str | None, client):
    """``client`` as given, or ``pipeline.cluster.dask_client``'s (None for an in-process run, ``workers=0``; a
    new client is closed afterwards). A cluster that cannot be reached is one ``PipelineError`` line."""
    if client is not None:
        with quiet_client_log():
            yield client
        return
    with ExitStack() as stack:
        try:
            c = stack.enter_context(dask_client(workers, scheduler))  # prints the dashboard before the bar
        except ClusterError as e:
            raise PipelineError(str(e)) from None
        yield c


def _run_tasks(fn: Callable, tasks: list[_Task], bar: ProgressBar, client, on_error: str | ErrorPolicy, stage: str
               ) -> tuple[list[TaskResult], list[dict], list[str]]:
    """Run ``fn(*task.args, progress)`` for every task, in this process (``client`` None) or on Dask.

    Returns the results, the failure rows of tasks that failed as a whole (they have no file to live in:
    their video or shard is redone by the next run) and the names of those tasks.
    """
    on_error = error_policy(on_error)
    results: list[TaskResult] = []
    homeless: list[dict] = []
    failed: list[str] = []

    def handle(task: _Task, res: TaskResult | None, exc: BaseException | None) -> None:
        if exc is not None:
            if isinstance(exc, PipelineError):
                raise exc
            reason = "no space left on the device" if is_disk_full(exc) else \
                f"{type(exc).__name__}: {exc}".splitlines()[0]
            on_error(f"{task.file}: {stage}: task failed ({reason})")
            bar.write(f"{task.file}: {stage}: task failed ({reason})")
            homeless.append(failure(task.file, stage, f"task failed ({reason})"))
            failed.append(task.name)
            bar.finish_group(task.name, task.n_videos)
            return
        for m in res.messages:
            bar.write(m)
        bar.finish_group(task.name, task.n_videos, res.n_frames, res.n_faces)
        results.append(res)

    if client is None:
        for task in tasks:
            try:
                res = fn(*task.args, bar)
            except PipelineError:
                raise
            except Exception as e:  # noqa: BLE001  (a crashed task is logged as data; the run goes on)
                handle(task, None, e)
                continue
            handle(task, res, None)
        return results, homeless, failed

    from distributed import as_completed

    topic = PROGRESS_TOPIC_PREFIX + uuid.uuid4().hex  # this run's events only, whoever else uses the scheduler
    lost = _lost_scheduler_errors()
    try:
        client.subscribe_topic(topic, lambda event: bar(event[1]))
        # Submitted longest first as well: the scheduler hands a task to an idle worker as soon as it arrives,
        # so priorities alone would let the first-listed short videos start before a long one listed last.
        tasks = sorted(tasks, key=lambda t: -t.priority)
        futures = {client.submit(_remote, fn, topic, *task.args, key=f"{fn.__name__}-{topic[-8:]}-{task.name}",
                                 priority=task.priority, retries=on_error.retries, pure=False): task
                   for task in tasks}
        for fut in as_completed(futures):
            task = futures[fut]
            if fut.status == "error":
                handle(task, None, fut.exception())
            elif fut.status == "cancelled":  # the client lost its scheduler: every future is cancelled
                raise _lost(ConnectionError("connection closed, the run's tasks were cancelled"))
            else:
                handle(task, fut.result(), None)
    except PipelineError:
        raise
    except lost as e:
        raise _lost(e) from None
    finally:
        try:
            client.unsubscribe_topic(topic)
        except lost:  # the scheduler is gone, and the topic with it
            pass
    return results, homeless, failed


def _probe_priorities(client, jobs: list[VideoJob]) -> list[float]:
    """frames x pixels of every job's video, probed on the cluster in batches (0 for unreadable videos)."""
    if client is None or not jobs:
        return [0.0] * len(jobs)  # in one process the order does not change the total time
    batch = 16
    paths = [j.item.path for j in jobs]
    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    futures = client.map(probe_costs, chunks, key=[f"probe-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(chunks))],
                         pure=False)
    out: list[float] = []
    for fut, chunk in zip(futures, chunks):
        try:
            out += fut.result()
        except _lost_scheduler_errors():
            raise
        except Exception:  # noqa: BLE001  (a probe that failed, e.g. its worker died, only loses the priority)
            out += [0.0] * len(chunk)
    return out


def run_extract(items: Sequence[VideoItem], split_dir: str | os.PathLike, dataset: str, split: str,
                cfg: ExtractConfig, shard_bytes: int = DEFAULT_SHARD_BYTES, workers: int | None = None,
                scheduler: str | None = None, client=None, overwrite: bool = False) -> RunSummary:
    """Frames stage over ``items`` into ``split_dir``; resumes by content; writes failures.jsonl and index.json.

    One task per video (longest first); finished videos are packed, in input order, into shards of at most
    ``shard_bytes`` (a single larger video gets a shard of its own). ``workers=0`` runs in this process;
    ``client`` (a ``distributed.Client``) reuses a running cluster. A folder holding shards of another plan
    (other settings, videos gone or changed) raises ``PipelineError`` before any work, unless ``overwrite``
    clears it first (see ``pipeline.resume``).
    """
    if shard_bytes < 1:
        raise PipelineError(f"shard size must be at least 1 byte, got {shard_bytes}")
    split_dir = Path(split_dir).absolute()  # workers resolve a relative path in their own folders
    with _holding(split_dir):
        return _run_extract(items, Path(split_dir), dataset, split, cfg, shard_bytes, workers, scheduler, client,
                            overwrite)


@contextmanager
def _holding(split_dir: str | os.PathLike):
    """The split's lock for one run (one writer per split); another holder is a one-line PipelineError."""
    try:
        with split_lock(split_dir):
            yield
    except SplitBusy as e:
        raise PipelineError(str(e)) from None


def _run_extract(items, split_dir: Path, dataset, split, cfg, shard_bytes, workers, scheduler, client,
                 overwrite) -> RunSummary:
    t0 = time.perf_counter()
    settings = extract_settings(cfg, items)
    cfg = replace(cfg, settings=json.dumps(settings, sort_keys=True))
    if overwrite and clear_split(split_dir):
        print(f"overwrite: removed the shards, staged videos, index and failures log of {split_dir}", flush=True)
    try:
        plan = plan_resume(split_dir, items, settings)
    except PlanConflict as e:
        raise PipelineError(str(e)) from e
    n_kept = len(items) - len(plan.todo)
    if plan.kept or plan.staged or plan.removed or plan.dropped:
        print(f"resume: {n_kept} videos kept ({len(plan.kept)} shards, {len(plan.staged)} staged videos), "
              f"{len(plan.removed)} unreadable files redone ({', '.join(plan.removed) or 'none'}), "
              f"{len(plan.dropped)} staged copies of packed videos removed, {len(plan.todo)} videos to do",
              flush=True)
    index_path = split_dir / INDEX_NAME
    if index_path.exists() and (plan.todo or plan.staged):
        index_path.unlink()  # the index is written last: its absence marks a run in progress
    (split_dir / STAGING_NAME).mkdir(parents=True, exist_ok=True)
    jobs = [VideoJob(it, video_record(it), str(staged_path(split_dir, it.id))) for it in plan.todo]
    bar = None
    with _dask_client(workers, scheduler, client) as c:
        try:
            priorities = _probe_priorities(c, jobs)
        except _lost_scheduler_errors() as e:
            raise _lost(e) from None
        tasks = [_Task(j.item.id, j.item.path, (j, cfg), p) for j, p in zip(jobs, priorities)]
        bar = ProgressBar(len(jobs), f"extract-frames {dataset}/{split}")
        try:
            results, homeless, failed = _run_tasks(extract_one, tasks, bar, c, cfg.on_error, "task")
        finally:
            bar.close()
    failed += pack_staged(split_dir, items, shard_bytes, settings_hash(settings), homeless)
    summary = finish_run(split_dir, dataset, split, results, homeless, failed, n_kept, t0,
                         {"plan": {"settings": settings, "settings_hash": settings_hash(settings),
                                   "shard_bytes": shard_bytes}})
    summary.n_planned = len(jobs)
    return summary


def run_landmarks(split_dir: str | os.PathLike, cfg: LandmarkConfig, workers: int | None = None,
                  scheduler: str | None = None, on_error: str | ErrorPolicy = "skip", client=None) -> RunSummary:
    """Landmark stage over every finished shard of ``split_dir``; resumes; rewrites index.json last."""
    split_dir = Path(split_dir).absolute()  # workers resolve a relative path in their own folders
    try:
        index = load_index(split_dir)
    except Exception as e:
        raise PipelineError(f"{split_dir}: run extract-frames first ({e})") from e
    with _holding(split_dir):
        return _run_landmarks(split_dir, index, cfg, workers, scheduler, on_error, client)


def _run_landmarks(split_dir: Path, index: dict, cfg: LandmarkConfig, workers, scheduler, on_error, client
                   ) -> RunSummary:
    t0 = time.perf_counter()
    index = load_index(split_dir)  # again, now that no other run can be rewriting it
    entries = {s["file"]: s for s in index["shards"]}
    todo, unreadable, homeless = [], [], []
    for n in entries:
        try:
            if not ShardReader(split_dir / n).has_landmarks:
                todo.append(n)
        except ShardError as e:  # logged as data; the other shards still get their landmarks
            print(f"{e}", flush=True)
            homeless.append(failure(str(split_dir / n), "landmarks", str(e)))
            unreadable.append(n)
    skipped = len(entries) - len(todo) - len(unreadable)
    if skipped:
        print(f"resume: {skipped} shards already have landmarks, {len(todo)} to do", flush=True)
    # One task per part of a shard (cfg.part_rows crops), larger shards first; the client writes each shard once
    # all its parts are back, so the stage uses as many workers as the split has parts, not shards.
    tasks = []
    for n in todo:
        with ShardReader(split_dir / n) as reader:
            last_row, n_rows = last_rows(reader.video, len(reader.videos)), len(reader)
        for a, b in part_ranges(n_rows, cfg.part_rows):
            tasks.append(_Task(f"{n}#{a}", str(split_dir / n), (str(split_dir / n), a, b, cfg),
                               float(entries[n]["n_faces"]), part_videos(last_row, a, b, n_rows)))
    bar = ProgressBar(sum(t.n_videos for t in tasks),
                      f"cache-landmarks {index.get('dataset')}/{index.get('split')}", "crops")
    with _dask_client(workers, scheduler, client) as c:
        try:
            parts, more, failed_parts = _run_tasks(landmark_part, tasks, bar, c, on_error, "landmarks")
        finally:
            bar.close()
    by_shard: dict[str, list[TaskResult]] = {}
    for r in parts:
        by_shard.setdefault(r.file, []).append(r)
    failed = sorted({name.split("#")[0] for name in failed_parts})  # a shard with a failed part stays as it was
    results = []
    for n in todo:
        if n in failed or n not in by_shard:
            continue
        try:
            res = write_landmarks(split_dir / n, by_shard[n])
        except (ShardError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"{split_dir / n}: landmarks: not written ({reason}); rerun cache-landmarks", flush=True)
            more.append(failure(str(split_dir / n), "landmarks", f"not written ({reason})"))
            failed.append(n)
            continue
        for m in res.messages:
            print(m, flush=True)
        results.append(res)
    return finish_run(split_dir, index.get("dataset", ""), index.get("split", ""), results, homeless + more,
                      unreadable + failed, skipped, t0, {"plan": index["plan"]} if "plan" in index else None,
                      listed=entries)
