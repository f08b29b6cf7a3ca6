"""Run the stages over many videos: one Dask task per video (longest first); finished videos are packed into
size-bounded shards.

* ``run_extract``: frames -> RetinaFace -> 1.25x crops. Each video is one task that commits its own file in the
  split's ``.staging/`` folder (a per-attempt temporary file, committed without replacing, so a late or duplicate
  attempt can never replace or corrupt it). Tasks are submitted with Dask ``priority`` = frames x pixels from a
  probe, so the longest videos start first and a 1080p clip does not become the straggler. The client then
  packs the staged videos, in input order, into ``shard-NNNNN.h5`` files of at most ``shard_bytes``
  (``pipeline.shards.pack_shard``: crop chunks copied raw) and removes the staged files.
* ``run_landmarks``: dlib 68 points for every crop of every finished shard (shard replaced atomically).

Both resume by content (``pipeline.resume``): committed videos, packed or staged, are kept; the rest is redone;
a folder made with other settings or other videos stops the run before any work. Every failure (unreadable
video, frame without a face, crop without landmarks) is stored with the video's result (the ``failures``
dataset of its staged file, then of its shard), and ``failures.jsonl`` is rebuilt from the split at the end
of every run, plus the rows of this run that have no file (a task that crashed: its video is redone next
time). Each problem is also one line on the console; the rest of the run goes on (``on_error="raise"``
stops at the first unreadable video instead). ``index.json`` is written last.

Progress is a tqdm bar over videos, fed by worker events on a topic of this run only (two runs on one
scheduler do not mix) and counting each video once, however often its task is retried. A lost scheduler is
one line (``PipelineError``); the rerun resumes.

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
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.cluster import ClusterError, dask_client, quiet_client_log
from pipeline.extract import CROP_SCALE, CROP_SIZE, VideoFaces, extract_video, failure
from pipeline.faces import DetectorConfig, FaceDetector
from pipeline.landmarks import LandmarkPredictor
from pipeline.lock import SplitBusy, split_lock
from pipeline.manifest import VideoItem
from pipeline.resume import (
    PlanConflict,
    clear_split,
    free_shard_names,
    plan_resume,
    settings_hash,
    staged_path,
    video_record,
)
from pipeline.shards import (
    DEFAULT_COMPRESSION,
    DEFAULT_SHARD_BYTES,
    FAILURES_NAME,
    INDEX_NAME,
    STAGING_NAME,
    TMP_SUFFIX,
    AlreadyCommitted,
    ShardError,
    ShardReader,
    ShardWriter,
    add_landmarks,
    load_index,
    pack_shard,
    read_failures,
    stored_bytes,
    summarize_shard,
    write_index,
)

PROGRESS_TOPIC_PREFIX = "laanet-pipeline-progress-"  # + run id: one topic per run
ProgressFn = Callable[[dict], None]


class PipelineError(Exception):
    """A run cannot go on (``on_error="raise"`` and a video failed, the scheduler was lost, ...); one line."""


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
    part_rows: int = 128                # crops per landmark task (~0.4 s of dlib): a 1 GiB HD shard is ~34 tasks


@dataclass
class VideoJob:
    """One task of the frames stage: ``item`` goes into its committed file ``staged``; ``planned`` is its
    ``video_record`` (taken by the client when it planned the run, so the file records what the plan compared)."""
    item: VideoItem
    planned: dict
    staged: str


@dataclass
class TaskResult:
    """What a task reports back to the client (small: only landmark parts carry arrays, ~1 KiB per crop)."""
    file: str                           # the video's path (frames stage) or the shard's name (landmarks)
    n_faces: int = 0
    n_videos: int = 0
    n_frames: int = 0
    failures: list[dict] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False               # already committed when the task started
    duplicate: bool = False             # another attempt committed the video first; this one was discarded
    part: "LandmarkPart | None" = None  # landmark stage: the points of one row range of the shard


@dataclass
class LandmarkPart:
    """Landmarks of rows [start, stop) of one shard, computed by a task; the client writes whole shards."""
    start: int
    stop: int
    points: np.ndarray                  # float32 (stop - start, 68, 2), NaN where none
    ok: np.ndarray                      # bool (stop - start,)
    model_sha256: str
    settings: str


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


def extract_settings(cfg: ExtractConfig, items: Sequence[VideoItem]) -> dict:
    """The settings that shape a shard's contents (stored in every shard; a rerun must match them).

    Batch size, device, decoder threads and the error policy change speed or logging, not the crops.
    """
    d = cfg.detector
    settings = {"crop_scale": cfg.crop_scale, "crop_size": cfg.crop_size, "compression": cfg.compression,
                "detector": d.backend, "detector_weights": d.weights or "", "score_threshold": d.score_threshold,
                "max_faces": d.max_faces, "keep": d.keep, "max_side": d.max_side,
                "frames": sorted({it.n_frames for it in items}), "segment": sorted({tuple(it.segment) for it in items})}
    if d.face_px:  # only then: --face-px 0 is the single pass at max_side that shards made before levels record
        settings.update(face_px=d.face_px, min_side=d.min_side)
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


def _file_attrs(cfg: ExtractConfig, detector: FaceDetector) -> dict:
    return {"crop_scale": cfg.crop_scale, "detector": detector.name, "settings": cfg.settings,
            "settings_hash": settings_hash(json.loads(cfg.settings)) if cfg.settings else "",
            "detector_weights_sha256": detector.weights_sha256, "manifest_hash": cfg.manifest_hash,
            "source_root": cfg.source_root, "detector_score_threshold": cfg.detector.score_threshold,
            "detector_max_faces": cfg.detector.max_faces}


def extract_one(job: VideoJob, cfg: ExtractConfig, progress: ProgressFn | None = None) -> TaskResult:
    """Task body of the frames stage: extract one video and commit its file ``job.staged``; skip if committed.

    The video's failures are stored in the file with its crops. The commit never replaces: when another
    attempt of the same video (a retry, or a worker presumed dead that woke up) committed first, this
    attempt's file is discarded and the result says ``duplicate``.
    """
    t0 = time.perf_counter()
    item, path = job.item, Path(job.staged)
    want = settings_hash(json.loads(cfg.settings)) if cfg.settings else ""
    if path.exists():
        committed = _committed(path)
        if committed is not None and committed[0] == want:
            return TaskResult(file=item.path, skipped=True, n_videos=committed[1], n_faces=committed[2])
        # Committed after this run's plan by an attempt of an earlier run with other settings (its worker
        # outlived its client, e.g. before --overwrite): stale work of another plan, redone here.
        path.unlink(missing_ok=True)
    _limit_threads()
    detector = _detector(json.dumps(asdict(cfg.detector), sort_keys=True))
    v = extract_video(item, detector, cfg.crop_scale, cfg.crop_size, cfg.decode_threads)
    if v.row is None and cfg.on_error == "raise":
        raise PipelineError(f"{item.path}: {v.failures[0]['reason']}")
    result = TaskResult(file=item.path, failures=v.failures, messages=_video_messages(item.path, v),
                        n_frames=v.n_decoded, n_videos=int(v.row is not None), n_faces=len(v.faces))
    w = ShardWriter(path, cfg.crop_size, _file_attrs(cfg, detector), cfg.compression, planned=[job.planned])
    try:
        if v.row is not None:
            w.add_video(v.row, v.faces, v.frame_index, v.boxes, v.scores, v.kps5, v.crop_boxes, v.no_face)
        w.failures = list(v.failures)
        w.finish()
    except AlreadyCommitted:
        result.duplicate = True
    except BaseException:
        w.abort()
        w.tmp.unlink(missing_ok=True)
        raise
    if progress:
        progress({"key": item.id, "videos": 1, "frames": v.n_decoded, "faces": len(v.faces)})
    result.seconds = time.perf_counter() - t0
    return result


def _committed(path: Path) -> tuple[str, int, int] | None:
    """(settings_hash, videos, faces) of a committed file; None when it cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("settings_hash", "")), int(f["videos"].shape[0]), int(f["faces"].shape[0])
    except (OSError, KeyError):
        return None


def probe_cost(path: str) -> float:
    """Work estimate of one video for scheduling: decoded frames x pixels (0 when it cannot be probed: it fails
    fast). Sampling N frames still decodes every frame before the last one (inter-coded streams)."""
    from pipeline.video import VideoError, probe

    try:
        info = probe(path)
    except (VideoError, OSError, ValueError):  # only a scheduling hint: the video's own task reports the problem
        return 0.0
    return float(info.n_frames) * info.width * info.height


def probe_costs(paths: list[str]) -> list[float]:
    """``probe_cost`` of several videos (one task probes a batch: a probe takes tens of milliseconds)."""
    return [probe_cost(p) for p in paths]


def _video_messages(path: str, v: VideoFaces) -> list[str]:
    """One console line per problem of a video (per-frame failures summarised)."""
    msgs = [f"{f['file']}: {f['stage']}: {f['reason']}" + (f" (frame {f['frame_index']})" if "frame_index" in f else "")
            for f in v.failures if "frame_index" not in f or f["stage"] == "decode"]
    if v.no_face:
        shown = ", ".join(str(i) for i in v.no_face[:8]) + (", ..." if len(v.no_face) > 8 else "")
        msgs.append(f"{path}: faces: no face in {len(v.no_face)} of {v.n_decoded} sampled frames (frames {shown})")
    return msgs


def part_ranges(n: int, part_rows: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of the landmark tasks of an n-crop shard (one empty range for an empty one)."""
    return [(a, min(n, a + part_rows)) for a in range(0, n, part_rows)] or [(0, 0)]


def _last_rows(video: np.ndarray, n_videos: int) -> np.ndarray:
    """Row of each video's last crop (-1 for a video without crops): progress counts it once that row is done."""
    last = np.full(n_videos, -1)
    if len(video):
        last[video] = np.arange(len(video))  # later rows overwrite earlier ones
    return last


def landmark_part(shard: str, start: int, stop: int, cfg: LandmarkConfig, progress: ProgressFn | None = None
                  ) -> TaskResult:
    """Task body of the landmark stage: dlib's 68 points for rows [start, stop) of a finished shard.

    Reads only; the client writes the shard once all its parts are back (``write_landmarks``), so a shard
    is never half-written and the stage spreads over as many workers as the split has parts.
    """
    t0 = time.perf_counter()
    path = Path(shard)
    reader = ShardReader(path)
    _limit_threads()
    pred = _predictor(cfg.model_path, cfg.upsample)
    n = len(reader)
    pts = np.full((stop - start, 68, 2), np.nan, np.float32)
    ok = np.zeros(stop - start, bool)
    root = str(reader.attrs.get("source_root", ""))
    last_row = _last_rows(reader.video, len(reader.videos))
    result = TaskResult(file=path.name, n_faces=stop - start, n_frames=stop - start)
    for b0 in range(start, stop, cfg.block):
        b1 = min(stop, b0 + cfg.block)
        crops = reader.read("faces", slice(b0, b1))  # one block in memory at a time
        p, o = pred.predict_batch(crops)
        pts[b0 - start:b1 - start], ok[b0 - start:b1 - start] = p, o
        for j in np.flatnonzero(~o):
            row = reader.video_row(b0 + j)
            result.failures.append(failure(os.path.join(root, row["path"]) if root else row["path"], "landmarks",
                                           "dlib found no face in the crop", int(reader.frame_index[b0 + j])))
        if progress:  # keyed by shard and block: a retried task does not count its videos twice
            finished = int(((last_row >= b0) & (last_row < b1)).sum())
            progress({"key": f"{path.name}#{b0}", "group": f"{path.name}#{start}", "videos": finished,
                      "frames": b1 - b0, "faces": b1 - b0})
    reader.close()
    result.part = LandmarkPart(start, stop, pts, ok, pred.model_sha256, pred.settings)
    result.n_videos = _part_videos(last_row, start, stop, n)
    result.seconds = time.perf_counter() - t0
    return result


def _part_videos(last_row: np.ndarray, start: int, stop: int, n: int) -> int:
    """Videos a part completes: those whose last crop it holds, and for the last part the videos without crops."""
    return int(((last_row >= start) & (last_row < stop)).sum()) + (int((last_row < 0).sum()) if stop == n else 0)


def write_landmarks(path: Path, parts: Sequence[TaskResult]) -> TaskResult:
    """Join the landmark parts of one shard (any order) and write them into it atomically (``add_landmarks``)."""
    parts = sorted(parts, key=lambda r: r.part.start)
    with ShardReader(path) as reader:
        n = len(reader)
    reached = 0
    for r in parts:
        if r.part.start != reached:
            break
        reached = r.part.stop
    if reached != n:
        raise ShardError(f"{path}: landmark parts cover crops [0, {reached}) of {n}; rerun cache-landmarks")
    pts = np.concatenate([r.part.points for r in parts])  # an empty shard has one empty part (part_ranges)
    ok = np.concatenate([r.part.ok for r in parts])
    failures = [f for r in parts for f in r.failures]
    add_landmarks(path, pts, ok, parts[0].part.model_sha256, parts[0].part.settings, failures)
    bad = int((~ok).sum())
    return TaskResult(file=path.name, n_faces=n, n_frames=n, n_videos=sum(r.n_videos for r in parts),
                      failures=failures, seconds=sum(r.seconds for r in parts),
                      messages=[f"{path}: landmarks: dlib found no face in {bad} of {n} crops"] if bad else [])


def landmark_shard(shard: str, cfg: LandmarkConfig, progress: ProgressFn | None = None) -> TaskResult:
    """The landmark stage for one shard in this process: every part, then the write; skip if already done."""
    path = Path(shard)
    with ShardReader(path) as reader:
        done, n = reader.has_landmarks, len(reader)
    if done:
        return TaskResult(file=path.name, skipped=True)
    return write_landmarks(path, [landmark_part(shard, a, b, cfg, progress) for a, b in part_ranges(n, cfg.part_rows)])


# ----------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------
# Client side: scheduling, progress, packing, failures log, index.


class _ProgressBar:
    """tqdm over videos with frames/s in the postfix; fed by task events and results (thread-safe).

    Every event names its ``key`` (a video, or a block of a shard) and its ``group`` (the task's video or
    shard); an event whose key was seen is ignored, and ``finish_group`` tops the count up to the group's
    videos when its result arrives and ignores its later events. A retried task, or an event that arrives
    after its result, therefore never counts a video twice.
    """

    def __init__(self, total: int, desc: str, unit_frames: str = "frames"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="video", dynamic_ncols=True)
        self.frames = 0
        self.faces = 0
        self.t0 = time.perf_counter()
        self.unit_frames = unit_frames
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.counted: dict[str, int] = {}
        self.closed: set[str] = set()

    def __call__(self, ev: dict) -> None:
        with self.lock:
            key, group = ev.get("key"), ev.get("group", ev.get("key"))
            if key is not None and (key in self.seen or group in self.closed):
                return
            self.seen.add(key)
            self.counted[group] = self.counted.get(group, 0) + ev.get("videos", 0)
            self._add(ev.get("videos", 0), ev.get("frames", 0), ev.get("faces", 0))

    def finish_group(self, group: str, videos: int, frames: int = 0, faces: int = 0) -> None:
        """A task's result: its group counts ``videos`` in all (frames and faces only if no event came)."""
        with self.lock:
            if group in self.closed:
                return
            self.closed.add(group)
            had_events = group in self.counted
            self._add(max(0, videos - self.counted.get(group, 0)), 0 if had_events else frames,
                      0 if had_events else faces)

    def _add(self, videos: int, frames: int, faces: int) -> None:
        self.frames += frames
        self.faces += faces
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.frames / dt:.1f} {self.unit_frames}/s, {self.faces} faces", refresh=False)
        self.bar.update(min(videos, self.bar.total - self.bar.n))

    def write(self, msg: str) -> None:
        self.bar.write(msg)

    def close(self) -> None:
        self.bar.close()


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
    from pipeline.cli_errors import one_line

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


def _run_tasks(fn: Callable, tasks: list[_Task], bar: _ProgressBar, client, on_error: str, stage: str
               ) -> tuple[list[TaskResult], list[dict], list[str]]:
    """Run ``fn(*task.args, progress)`` for every task, in this process (``client`` None) or on Dask.

    Returns the results, the failure rows of tasks that failed as a whole (they have no file to live in:
    their video or shard is redone by the next run) and the names of those tasks.
    """
    results: list[TaskResult] = []
    homeless: list[dict] = []
    failed: list[str] = []

    def handle(task: _Task, res: TaskResult | None, exc: BaseException | None) -> None:
        if exc is not None:
            if isinstance(exc, PipelineError):
                raise exc
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if on_error == "raise":
                raise PipelineError(f"{task.file}: {stage}: task failed ({reason})")
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
                                 priority=task.priority, retries=0 if on_error == "raise" else 1, pure=False): task
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



def local_cluster(n_workers: int, dashboard_address: str | None = ":0"):
    """A LocalCluster of ``n_workers`` single-threaded worker processes, set up for this pipeline.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off glibc's adaptive
    mmap threshold: every frame, crop and batch buffer (>= 128 KiB) is then mmap'ed and zero-filled afresh.
    Measured on this pipeline (``bench/bench_pipeline.py`` workload, one process): 25x the page faults and
    18 % more CPU time per face. The workers here start without it; their memory stays bounded by one
    video's crops (see the benchmark's peak RSS per worker). For a cluster you start yourself, set
    ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in its Dask config for the same.
    """
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=dashboard_address, silence_logs=40)


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
        bar = _ProgressBar(len(jobs), f"extract-frames {dataset}/{split}")
        try:
            results, homeless, failed = _run_tasks(extract_one, tasks, bar, c, cfg.on_error, "task")
        finally:
            bar.close()
    failed += _pack(split_dir, items, shard_bytes, settings_hash(settings), homeless)
    summary = _finish(split_dir, dataset, split, results, homeless, failed, n_kept, t0,
                      {"plan": {"settings": settings, "settings_hash": settings_hash(settings),
                                "shard_bytes": shard_bytes}})
    summary.n_planned = len(jobs)
    return summary


def _pack(split_dir: Path, items: Sequence[VideoItem], shard_bytes: int, want_hash: str, homeless: list[dict]
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
        committed = _committed(p)
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


def run_landmarks(split_dir: str | os.PathLike, cfg: LandmarkConfig, workers: int | None = None,
                  scheduler: str | None = None, on_error: str = "skip", client=None) -> RunSummary:
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
            last_row, n_rows = _last_rows(reader.video, len(reader.videos)), len(reader)
        for a, b in part_ranges(n_rows, cfg.part_rows):
            tasks.append(_Task(f"{n}#{a}", str(split_dir / n), (str(split_dir / n), a, b, cfg),
                               float(entries[n]["n_faces"]), _part_videos(last_row, a, b, n_rows)))
    bar = _ProgressBar(sum(t.n_videos for t in tasks),
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
    return _finish(split_dir, index.get("dataset", ""), index.get("split", ""), results, homeless + more,
                   unreadable + failed, skipped, t0, {"plan": index["plan"]} if "plan" in index else None)


def rebuild_failures(split_dir: Path, shards: Sequence[str], extra: Sequence[dict] = ()) -> Path:
    """Write ``failures.jsonl`` from the rows stored in the split (shards in order, then staged videos), then
    ``extra`` (rows of this run without a file). Shards written before files stored their failures keep the
    rows the old log has for their videos. Written to a temporary name and renamed."""
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
    tmp = out.with_name(out.name + TMP_SUFFIX)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out)
    return out


def _finish(split_dir: Path, dataset: str, split: str, results: list[TaskResult], homeless: list[dict],
            failed: list[str], skipped: int, t0: float, extra: dict | None = None) -> RunSummary:
    names = sorted(p.name for p in split_dir.glob("shard-*.h5"))
    done = []
    for n in names:
        try:
            summarize_shard(split_dir / n)
            done.append(n)
        except (OSError, KeyError) as e:  # an index must list readable shards only; the shard is reported
            print(f"{split_dir / n}: left out of {INDEX_NAME}: unreadable ({e}); rerun extract-frames to redo it",
                  flush=True)
    rebuild_failures(split_dir, done, homeless)
    write_index(split_dir, dataset, split, done, extra)
    index = load_index(split_dir)
    n_fail = sum(len(r.failures) for r in results) + len(homeless)
    summary = RunSummary(split_dir=split_dir, shards=done, n_faces=index["n_faces"], n_videos=index["n_videos"],
                         n_frames=sum(r.n_frames for r in results), n_failures=n_fail, failed_shards=failed,
                         seconds=time.perf_counter() - t0, skipped=skipped,
                         n_new_videos=sum(r.n_videos for r in results))
    print(f"{split_dir}: {len(done)} shards, {summary.n_videos} videos, {summary.n_faces} faces; "
          f"{n_fail} new failures, all in {split_dir / FAILURES_NAME}; {summary.seconds:.1f} s", flush=True)
    return summary
