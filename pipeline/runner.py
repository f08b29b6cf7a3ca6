"""Run the stages over many videos: one task per group of videos writes one shard; Dask spreads the tasks.

* ``run_extract``: frames -> RetinaFace -> 1.25x crops -> ``shard-NNNNN.h5`` per group of videos.
* ``run_landmarks``: dlib 68 points for every crop of every finished shard (shard replaced atomically).

Both resume: a finished shard is kept, an unfinished one (``.tmp`` left by a killed run) is redone. The frames
stage resumes by content (``pipeline.resume``): shards record their videos and settings, new videos go into
new shards, and a folder made with other settings or other videos stops the run before any work.
Every failure (unreadable video, frame without a face, crop without landmarks, a task that crashed) is a
row of ``failures.jsonl`` with file, stage and reason, and a one-line message on the console; the rest of the
run goes on (``on_error="raise"`` stops at the first unreadable video instead). ``index.json`` is written last.

Workers: ``workers=0`` runs in this process (debugging, tests); otherwise a Dask ``LocalCluster`` with
``workers`` single-threaded processes (default: one per core), or an existing cluster via ``scheduler``.
Detector and landmark predictor are built once per worker process (``_detector``/``_predictor`` caches),
never shipped through the task graph.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.extract import CROP_SCALE, CROP_SIZE, VideoFaces, extract_video, failure
from pipeline.faces import DetectorConfig, FaceDetector
from pipeline.landmarks import LandmarkPredictor
from pipeline.lock import SplitBusy, split_lock
from pipeline.manifest import VideoItem
from pipeline.resume import PlanConflict, clear_split, plan_resume, settings_hash, video_record
from pipeline.shards import (DEFAULT_COMPRESSION, FAILURES_NAME, INDEX_NAME, ShardError, ShardReader, ShardWriter,
                             add_landmarks, load_index, summarize_shard, write_index)

PROGRESS_TOPIC = "laanet-pipeline-progress"
ProgressFn = Callable[[dict], None]


class PipelineError(Exception):
    """A run cannot go on (``on_error="raise"`` and a video failed, or no task could finish)."""


@dataclass
class ExtractConfig:
    """Settings of the frames stage (the CLI fills it from options and the manifest)."""
    crop_scale: float = CROP_SCALE
    crop_size: int = CROP_SIZE
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    compression: str = DEFAULT_COMPRESSION
    on_error: str = "skip"              # "skip": log and go on; "raise": stop at the first failed video
    manifest_hash: str = ""
    source_root: str = ""
    decode_threads: int = 1             # ffmpeg threads per video (one worker process per core); 0 = ffmpeg's choice
    settings: str = ""                  # extract_settings() as JSON, filled in by run_extract


@dataclass
class LandmarkConfig:
    """Settings of the landmark stage."""
    model_path: str | None = None
    upsample: int = 0
    block: int = 64                     # crops read from the shard at a time (bounds memory)


@dataclass
class ShardJob:
    """One task: ``items`` go into ``split_dir/name``; ``planned`` are their ``video_record``s (taken by the
    client when it planned the run, so the shard records what the plan compared)."""
    name: str
    items: list[VideoItem]
    planned: list[dict] = field(default_factory=list)


@dataclass
class TaskResult:
    """What a task reports back to the client (small: no arrays)."""
    file: str
    n_faces: int = 0
    n_videos: int = 0
    n_frames: int = 0
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False


@dataclass
class RunSummary:
    split_dir: Path
    shards: list[str]
    n_faces: int
    n_videos: int
    n_frames: int
    n_failures: int
    failed_shards: list[str]
    seconds: float
    skipped: int
    n_new_videos: int = 0               # videos this run read (0 with planned videos = every input failed)
    n_planned: int = 0                  # videos this run set out to read (extract-frames)


def extract_settings(cfg: ExtractConfig, items: Sequence[VideoItem]) -> dict:
    """The settings that shape a shard's contents (stored in every shard; a rerun must match them).

    Batch size, device, decoder threads and the error policy change speed or logging, not the crops.
    """
    d = cfg.detector
    settings = {"crop_scale": cfg.crop_scale, "crop_size": cfg.crop_size, "compression": cfg.compression,
                "detector": d.backend, "detector_weights": d.weights or "", "score_threshold": d.score_threshold,
                "max_faces": d.max_faces, "keep": d.keep, "max_side": d.max_side,
                "face_px": d.face_px, "min_side": d.min_side if d.face_px else None,
                "frames": sorted({it.n_frames for it in items}), "segment": sorted({tuple(it.segment) for it in items})}
    return json.loads(json.dumps(settings))  # tuples -> lists: equal to what a shard's JSON attribute gives back


@lru_cache(maxsize=2)
def _detector(cfg_json: str) -> FaceDetector:
    """One detector per worker process and configuration (the cache key is the config as JSON)."""
    return FaceDetector(DetectorConfig(**json.loads(cfg_json)))


@lru_cache(maxsize=2)
def _predictor(model_path: str | None, upsample: int) -> LandmarkPredictor:
    return LandmarkPredictor(model_path, upsample)


def preload_models(detector: DetectorConfig | None = None, landmarks: "LandmarkConfig | None" = None) -> int:
    """Build this process's detector and/or predictor now (e.g. ``client.run(preload_models, ...)`` on workers).

    Returns the process id (handy to see which worker did it).
    """
    if detector is not None:
        _detector(json.dumps(asdict(detector), sort_keys=True))
    if landmarks is not None:
        _predictor(landmarks.model_path, landmarks.upsample)
    return os.getpid()


def _limit_threads() -> None:
    # One worker process per core: keep OpenCV from starting its own thread pool in each.
    import cv2

    cv2.setNumThreads(1)


def extract_shard(job: ShardJob, split_dir: str, cfg: ExtractConfig, progress: ProgressFn | None = None
                  ) -> TaskResult:
    """Task body of the frames stage: write ``split_dir/job.name`` from ``job.items``; skip if finished."""
    t0 = time.perf_counter()
    path = Path(split_dir) / job.name
    if path.exists():
        return TaskResult(file=job.name, skipped=True)
    _limit_threads()
    detector = _detector(json.dumps(asdict(cfg.detector), sort_keys=True))
    attrs = {"crop_scale": cfg.crop_scale, "detector": detector.name, "settings": cfg.settings,
             "settings_hash": settings_hash(json.loads(cfg.settings)) if cfg.settings else "",
             "detector_weights_sha256": detector.weights_sha256, "manifest_hash": cfg.manifest_hash,
             "source_root": cfg.source_root, "detector_score_threshold": cfg.detector.score_threshold,
             "detector_max_faces": cfg.detector.max_faces}
    result = TaskResult(file=job.name)
    # Each attempt writes its own .tmp; the first to finish becomes the shard and removes the others'.
    with ShardWriter(path, cfg.crop_size, attrs, cfg.compression, planned=job.planned) as w:
        for item in job.items:
            v = extract_video(item, detector, cfg.crop_scale, cfg.crop_size, cfg.decode_threads)
            result.failures += v.failures
            if v.row is None and cfg.on_error == "raise":
                raise PipelineError(f"{item.path}: {v.failures[0]['reason']}")
            if v.row is not None:
                w.add_video(v.row, v.faces, v.frame_index, v.boxes, v.scores, v.kps5, v.crop_boxes, v.no_face)
                result.n_videos += 1
                result.n_faces += len(v.faces)
            result.n_frames += v.n_decoded
            if progress:
                progress({"videos": 1, "frames": v.n_decoded, "faces": len(v.faces),
                          "messages": _video_messages(item.path, v)})
    result.seconds = time.perf_counter() - t0
    return result


def _video_messages(path: str, v: VideoFaces) -> list[str]:
    """One console line per problem of a video (per-frame failures summarised)."""
    msgs = [f"{f['file']}: {f['stage']}: {f['reason']}" + (f" (frame {f['frame_index']})" if "frame_index" in f else "")
            for f in v.failures if "frame_index" not in f or f["stage"] == "decode"]
    if v.no_face:
        shown = ", ".join(str(i) for i in v.no_face[:8]) + (", ..." if len(v.no_face) > 8 else "")
        msgs.append(f"{path}: faces: no face in {len(v.no_face)} of {v.n_decoded} sampled frames (frames {shown})")
    return msgs


def landmark_shard(shard: str, cfg: LandmarkConfig, progress: ProgressFn | None = None) -> TaskResult:
    """Task body of the landmark stage: add landmarks to a finished shard; skip if already done."""
    t0 = time.perf_counter()
    path = Path(shard)
    reader = ShardReader(path)
    if reader.has_landmarks:
        return TaskResult(file=path.name, skipped=True)
    _limit_threads()
    pred = _predictor(cfg.model_path, cfg.upsample)
    n = len(reader)
    pts = np.full((n, 68, 2), np.nan, np.float32)
    ok = np.zeros(n, bool)
    root = str(reader.attrs.get("source_root", ""))
    result = TaskResult(file=path.name, n_faces=n, n_videos=len(reader.videos))
    # Progress counts a video as done once the block holding its last crop is processed.
    last_row = np.full(len(reader.videos), -1)
    if n:
        last_row[reader.video] = np.arange(n)  # later rows overwrite earlier: the last crop of each video
    for start in range(0, n, cfg.block):
        stop = min(n, start + cfg.block)
        crops = reader.read("faces", slice(start, stop))  # one block in memory at a time
        p, o = pred.predict_batch(crops)
        pts[start:stop], ok[start:stop] = p, o
        for j in np.flatnonzero(~o):
            row = reader.video_row(start + j)
            result.failures.append(failure(os.path.join(root, row["path"]) if root else row["path"], "landmarks",
                                           "dlib found no face in the crop", int(reader.frame_index[start + j])))
        if progress:
            finished = int(((last_row >= start) & (last_row < stop)).sum())
            progress({"videos": finished, "frames": stop - start, "faces": stop - start, "messages": []})
    reader.close()
    add_landmarks(path, pts, ok, pred.model_sha256, pred.settings)
    result.n_frames = n
    result.seconds = time.perf_counter() - t0
    if progress:
        bad = int((~ok).sum())
        progress({"videos": int((last_row < 0).sum()), "frames": 0, "faces": 0,  # videos without any crop
                  "messages": [f"{path}: landmarks: dlib found no face in {bad} of {n} crops"] if bad else []})
    return result


# ----------------------------------------------------------------------------------------------------------
# Client side: scheduling, progress, failures log, index.


class _ProgressBar:
    """tqdm over videos with frames/s in the postfix; fed by task events (thread-safe)."""

    def __init__(self, total: int, desc: str, unit_frames: str = "frames"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="video", dynamic_ncols=True)
        self.frames = 0
        self.faces = 0
        self.t0 = time.perf_counter()
        self.unit_frames = unit_frames
        self.lock = threading.Lock()

    def __call__(self, ev: dict) -> None:
        with self.lock:
            for m in ev.get("messages", []):
                self.bar.write(m)
            self.frames += ev.get("frames", 0)
            self.faces += ev.get("faces", 0)
            dt = max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.frames / dt:.1f} {self.unit_frames}/s, {self.faces} faces", refresh=False)
            self.bar.update(min(ev.get("videos", 0), self.bar.total - self.bar.n))

    def close(self) -> None:
        self.bar.close()


def append_failures(split_dir: Path, rows: list[dict]) -> None:
    """Append rows to ``split_dir/failures.jsonl`` (written by the client only: one writer)."""
    if not rows:
        return
    with open(split_dir / FAILURES_NAME, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _worker_progress(ev: dict) -> None:
    from distributed import get_worker

    get_worker().log_event(PROGRESS_TOPIC, ev)


def _extract_task(job: ShardJob, split_dir: str, cfg: ExtractConfig) -> TaskResult:
    return extract_shard(job, split_dir, cfg, _worker_progress)


def _landmark_task(shard: str, cfg: LandmarkConfig) -> TaskResult:
    return landmark_shard(shard, cfg, _worker_progress)


def local_cluster(n_workers: int, dashboard_address: str | None = ":0"):
    """A LocalCluster of ``n_workers`` single-threaded worker processes, set up for this pipeline.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off glibc's adaptive
    mmap threshold: every frame, crop and batch buffer (>= 128 KiB) is then mmap'ed and zero-filled afresh.
    Measured on this pipeline (``bench/bench_pipeline.py`` workload, one process): 25x the page faults and
    18 % more CPU time per face. The workers here start without it; their memory stays bounded by one
    shard's crops (see the benchmark's peak RSS per worker). For a cluster you start yourself, set
    ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in its Dask config for the same.
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=dashboard_address, silence_logs=40)


def make_client(workers: int | None, scheduler: str | None):
    """A Dask client: an existing cluster at ``scheduler``, or a LocalCluster of single-threaded processes."""
    from distributed import Client

    if scheduler:
        client = Client(scheduler)
    else:
        client = Client(local_cluster(workers or os.cpu_count() or 1))
    link = client.dashboard_link
    try:
        import bokeh  # noqa: F401  (the dashboard is served only when bokeh is installed)
        note = ""
    except ImportError:
        note = " (install bokeh>=3.1 for the web page)"
    n_workers = len(client.scheduler_info().get("workers", {}))
    print(f"Dask: {n_workers} workers, dashboard {link}{note}", flush=True)
    return client


def _run_tasks(fn_local: Callable, fn_remote: Callable, args_list: list[tuple], names: list[str],
               make_bar: Callable[[], _ProgressBar], split_dir: Path, workers: int | None, scheduler: str | None,
               on_error: str, client=None) -> tuple[list[TaskResult], list[str]]:
    """Run one task per args tuple in-process (workers=0), on ``client``, or on a new Dask cluster.

    Returns the results and the names of tasks that failed as a whole.
    """
    results: list[TaskResult] = []
    failed: list[str] = []
    bar: _ProgressBar | None = None

    def handle(name: str, res: TaskResult | None, exc: BaseException | None) -> None:
        if exc is not None:
            if on_error == "raise":
                raise exc
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            bar.bar.write(f"{split_dir / name}: shard: task failed ({reason})")
            append_failures(split_dir, [failure(str(split_dir / name), "shard", reason)])
            failed.append(name)
            return
        append_failures(split_dir, res.failures)
        results.append(res)

    if workers == 0 and not scheduler and client is None:
        bar = make_bar()
        try:
            for name, args in zip(names, args_list):
                try:
                    res = fn_local(*args, bar)
                except PipelineError:
                    raise
                except Exception as e:  # noqa: BLE001  (a crashed task is logged as data; the run goes on)
                    handle(name, None, e)
                    continue
                handle(name, res, None)
        finally:
            bar.close()
        return results, failed

    from distributed import as_completed

    own = client is None
    if own:
        client = make_client(workers, scheduler)  # prints the dashboard address before the bar starts
    bar = make_bar()
    try:
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: bar(event[1]))
        futures = {client.submit(fn_remote, *args, key=f"{fn_remote.__name__}-{split_dir.name}-{name}-"
                                 f"{time.time_ns()}", retries=0 if on_error == "raise" else 1, pure=False): name
                   for name, args in zip(names, args_list)}
        for fut in as_completed(futures):
            name = futures[fut]
            if fut.status == "error":
                exc = fut.exception()
                if isinstance(exc, PipelineError):
                    raise exc
                handle(name, None, exc)
            else:
                handle(name, fut.result(), None)
        client.unsubscribe_topic(PROGRESS_TOPIC)
    finally:
        bar.close()
        if own:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None and not scheduler:
                cluster.close()
    return results, failed


def run_extract(items: Sequence[VideoItem], split_dir: str | os.PathLike, dataset: str, split: str,
                cfg: ExtractConfig, videos_per_shard: int = 16, workers: int | None = None,
                scheduler: str | None = None, client=None, overwrite: bool = False) -> RunSummary:
    """Frames stage over ``items`` into ``split_dir``; resumes by content; writes failures.jsonl and index.json.

    ``workers=0`` runs in this process; ``client`` (a ``distributed.Client``) reuses a running cluster.
    A folder holding shards of another plan (other settings, videos gone or changed) raises ``PipelineError``
    before any work, unless ``overwrite`` clears it first (see ``pipeline.resume``).
    """
    with _holding(split_dir):
        return _run_extract(items, Path(split_dir), dataset, split, cfg, videos_per_shard, workers, scheduler, client,
                            overwrite)


@contextmanager
def _holding(split_dir: str | os.PathLike):
    """The split's lock for one run (one writer per split); another holder is a one-line PipelineError."""
    try:
        with split_lock(split_dir):
            yield
    except SplitBusy as e:
        raise PipelineError(str(e)) from None


def _run_extract(items, split_dir: Path, dataset, split, cfg, videos_per_shard, workers, scheduler, client,
                 overwrite) -> RunSummary:
    t0 = time.perf_counter()
    settings = extract_settings(cfg, items)
    cfg = replace(cfg, settings=json.dumps(settings, sort_keys=True))
    if overwrite and clear_split(split_dir):
        print(f"overwrite: removed the shards, index and failures log of {split_dir}", flush=True)
    try:
        plan = plan_resume(split_dir, items, settings, videos_per_shard)
    except PlanConflict as e:
        raise PipelineError(str(e)) from e
    todo = [ShardJob(name, its, [video_record(it) for it in its]) for name, its in plan.jobs]
    if plan.kept or plan.removed:
        print(f"resume: {len(plan.kept)} finished shards kept, {len(plan.removed)} unreadable redone "
              f"({', '.join(plan.removed) or 'none'}), {sum(len(j.items) for j in todo)} videos into "
              f"{len(todo)} shards", flush=True)
    index_path = split_dir / INDEX_NAME
    if index_path.exists() and todo:
        index_path.unlink()  # the index is written last: its absence marks a run in progress
    results, failed = _run_tasks(
        lambda job, sd, c, b: extract_shard(job, sd, c, b), _extract_task,
        [(j, str(split_dir), cfg) for j in todo], [j.name for j in todo],
        lambda: _ProgressBar(sum(len(j.items) for j in todo), f"extract-frames {dataset}/{split}"), split_dir,
        workers, scheduler, cfg.on_error, client)
    names = sorted(plan.kept + [j.name for j in todo])
    summary = _finish(split_dir, dataset, split, names, results, failed, len(plan.kept), t0,
                      {"plan": {"settings": settings, "settings_hash": settings_hash(settings)}})
    summary.n_planned = sum(len(j.items) for j in todo)
    return summary


def run_landmarks(split_dir: str | os.PathLike, cfg: LandmarkConfig, workers: int | None = None,
                  scheduler: str | None = None, on_error: str = "skip", client=None) -> RunSummary:
    """Landmark stage over every finished shard of ``split_dir``; resumes; rewrites index.json last."""
    split_dir = Path(split_dir)
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
    names = [s["file"] for s in index["shards"]]
    todo, unreadable = [], []
    for n in names:
        try:
            if not ShardReader(split_dir / n).has_landmarks:
                todo.append(n)
        except ShardError as e:  # logged as data; the other shards still get their landmarks
            print(f"{e}", flush=True)
            append_failures(split_dir, [failure(str(split_dir / n), "landmarks", str(e))])
            unreadable.append(n)
    skipped = len(names) - len(todo) - len(unreadable)
    if skipped:
        print(f"resume: {skipped} shards already have landmarks, {len(todo)} to do", flush=True)
    total_videos = sum(s["n_videos"] for s in index["shards"] if s["file"] in todo)
    results, failed = _run_tasks(
        lambda shard, c, b: landmark_shard(shard, c, b), _landmark_task,
        [(str(split_dir / n), cfg) for n in todo], todo,
        lambda: _ProgressBar(total_videos, f"cache-landmarks {index.get('dataset')}/{index.get('split')}", "crops"),
        split_dir, workers, scheduler, on_error, client)
    return _finish(split_dir, index.get("dataset", ""), index.get("split", ""), names, results,
                   unreadable + failed, skipped, t0,
                   {"plan": index["plan"]} if "plan" in index else None)


def _finish(split_dir: Path, dataset: str, split: str, names: list[str], results: list[TaskResult],
            failed: list[str], skipped: int, t0: float, extra: dict | None = None) -> RunSummary:
    done = []
    for n in names:
        if not (split_dir / n).exists():
            continue
        try:
            summarize_shard(split_dir / n)
            done.append(n)
        except (OSError, KeyError) as e:  # an index must list readable shards only; the shard is reported
            print(f"{split_dir / n}: left out of {INDEX_NAME}: unreadable ({e}); rerun extract-frames to redo it",
                  flush=True)
    write_index(split_dir, dataset, split, done, extra)
    index = load_index(split_dir)
    n_fail = sum(len(r.failures) for r in results) + len(failed)
    summary = RunSummary(split_dir=split_dir, shards=done, n_faces=index["n_faces"], n_videos=index["n_videos"],
                         n_frames=sum(r.n_frames for r in results), n_failures=n_fail, failed_shards=failed,
                         seconds=time.perf_counter() - t0, skipped=skipped,
                         n_new_videos=sum(r.n_videos for r in results))
    print(f"{split_dir}: {len(done)}/{len(names)} shards, {summary.n_videos} videos, {summary.n_faces} faces; "
          f"{n_fail} new failures logged in {split_dir / FAILURES_NAME}; {summary.seconds:.1f} s", flush=True)
    return summary
