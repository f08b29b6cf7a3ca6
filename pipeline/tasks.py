"""Worker task bodies of the two stages, their settings and what they report back.

* ``extract_one``: frames -> RetinaFace -> 1.25x crops of one video, committed as its own file in the split's
  ``.staging/`` folder (a per-attempt temporary file, committed without replacing, so a late or duplicate
  attempt can never replace or corrupt it).
* ``landmark_part``: dlib 68 points for a row range of a finished shard; ``write_landmarks`` joins the parts
  of one shard and writes them into it (shard replaced atomically); ``landmark_shard`` does both in one process.

Detector and landmark predictor are built once per worker process (``_detector``/``_predictor`` caches),
never shipped through the task graph. ``pipeline.runner`` schedules these bodies, in this process or on Dask.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.crop import CROP_SCALE, CROP_SIZE
from pipeline.errors import UserError
from pipeline.extract import VideoFaces, extract_video, failure
from pipeline.faces import DetectorConfig, FaceDetector
from pipeline.landmarks import LandmarkPredictor
from pipeline.manifest import VideoItem
from pipeline.progress import ProgressFn
from pipeline.resume import settings_hash
from pipeline.shard_codec import DEFAULT_COMPRESSION
from pipeline.shard_writer import ShardWriter, add_landmarks
from pipeline.shards import AlreadyCommitted, ShardError, ShardReader


class PipelineError(UserError):
    """A run cannot go on (``on_error="raise"`` and a video failed, the scheduler was lost, ...); one line."""


@dataclass(frozen=True)
class ErrorPolicy:
    """What a failed video or task does to the run (``--on-error``): a handler called with the failure's one-line
    message once the failure is logged. ``skip`` returns (the run goes on, the failure stays in
    failures.jsonl, and a crashed task is retried once on Dask); ``raise`` stops the run with the message."""

    name: str
    stops: bool
    retries: int

    def __call__(self, message: str) -> None:
        if self.stops:
            raise PipelineError(message)


ERROR_POLICIES = {"skip": ErrorPolicy("skip", stops=False, retries=1), "raise": ErrorPolicy("raise", stops=True, retries=0)}


def error_policy(on_error: str | ErrorPolicy) -> ErrorPolicy:
    """The handler of an ``--on-error`` value (or the handler itself)."""
    if isinstance(on_error, ErrorPolicy):
        return on_error
    if on_error not in ERROR_POLICIES:
        raise ValueError(f"on_error must be one of {', '.join(ERROR_POLICIES)}, got {on_error!r}")
    return ERROR_POLICIES[on_error]


@dataclass
class ExtractConfig:
    """Settings of the frames stage (the CLI fills it from options and the manifest)."""
    crop_scale: float = CROP_SCALE
    crop_size: int = CROP_SIZE
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    compression: str = DEFAULT_COMPRESSION
    on_error: str = "skip"              # the ErrorPolicy by name (error_policy): "skip" logs and goes on, "raise" stops
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


def extract_settings(cfg: ExtractConfig, items: Sequence[VideoItem]) -> dict:
    """The settings that shape a shard's contents (stored in every shard; a rerun must match them).

    Batch size, device, decoder threads and the error policy change speed or logging, not the crops.
    """
    d = cfg.detector
    settings = {"crop_scale": cfg.crop_scale, "crop_size": cfg.crop_size, "compression": cfg.compression,
                "detector": d.backend, "detector_weights": d.weights or "", "score_threshold": d.score_threshold,
                "max_faces": d.max_faces, "keep": d.keep, "max_side": d.max_side,
                "frames": sorted({it.n_frames for it in items}), "segment": sorted({tuple(it.segment) for it in items}),
                "pixels": "display"}  # non-square pixels decoded at the display aspect (before: the stored size)
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
    _quiet_h5py_teardown()


def _quiet_h5py_teardown() -> None:
    """After a failed write (a full disk), h5py's objects report the same error again while they are freed:
    "Exception ignored in: h5py._objects.ObjectID.__dealloc__" with a traceback, a dozen per task. The task's
    own failure is already one line and a failures row; those echoes are dropped, other ones kept."""
    import sys

    if getattr(sys.unraisablehook, "_laanet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if "h5py" in repr(unraisable.object) or "h5py" in str(getattr(unraisable, "err_msg", "")):
            return
        previous(unraisable)

    def excepthook(kind, value, tb):  # Cython prints the traceback of an unraisable error through excepthook
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None and "h5py" in tb.tb_frame.f_code.co_filename and "_dealloc" in tb.tb_frame.f_code.co_name:
            return
        previous_excepthook(kind, value, tb)

    previous_excepthook = sys.excepthook
    hook._laanet = True
    sys.unraisablehook = hook
    sys.excepthook = excepthook


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
        committed = committed_info(path)
        if committed is not None and committed[0] == want:
            return TaskResult(file=item.path, skipped=True, n_videos=committed[1], n_faces=committed[2])
        # Committed after this run's plan by an attempt of an earlier run with other settings (its worker
        # outlived its client, e.g. before --overwrite): stale work of another plan, redone here.
        path.unlink(missing_ok=True)
    _limit_threads()
    detector = _detector(json.dumps(asdict(cfg.detector), sort_keys=True))
    v = extract_video(item, detector, cfg.crop_scale, cfg.crop_size, cfg.decode_threads)
    if v.row is None:
        error_policy(cfg.on_error)(f"{item.path}: {v.failures[0]['reason']}")
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


def committed_info(path: Path) -> tuple[str, int, int] | None:
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
    if v.row is not None and v.row.get("pixel_aspect", "1:1") != "1:1":
        msgs.append(f"{path}: decode: non-square pixels (aspect {v.row['pixel_aspect']}): frames decoded at the "
                    f"display size {v.row['width']}x{v.row['height']} (recorded in the shard's videos table)")
    if v.no_face:
        shown = ", ".join(str(i) for i in v.no_face[:8]) + (", ..." if len(v.no_face) > 8 else "")
        msgs.append(f"{path}: faces: no face in {len(v.no_face)} of {v.n_decoded} sampled frames (frames {shown})")
    return msgs


def part_ranges(n: int, part_rows: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of the landmark tasks of an n-crop shard (one empty range for an empty one)."""
    return [(a, min(n, a + part_rows)) for a in range(0, n, part_rows)] or [(0, 0)]


def last_rows(video: np.ndarray, n_videos: int) -> np.ndarray:
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
    last_row = last_rows(reader.video, len(reader.videos))
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
    result.n_videos = part_videos(last_row, start, stop, n)
    result.seconds = time.perf_counter() - t0
    return result


def part_videos(last_row: np.ndarray, start: int, stop: int, n: int) -> int:
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
