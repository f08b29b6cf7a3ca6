"""Writing shards (the schema is in ``pipeline.shards``): one video at a time (``ShardWriter``), staged files
packed into one shard (``pack_shard``), landmarks added to a finished shard (``add_landmarks``) and a whole
shard from arrays (``write_shard``, for tests and small tools).

Every file is written by one process to a per-attempt ``<name>.h5.<host>-<pid>-<uuid>.tmp`` and committed
without replacing (``commit_no_replace``), so a late or duplicate attempt can never replace or corrupt a
committed file.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from pipeline.crop import CROP_SCALE
from pipeline.shard_codec import DEFAULT_COMPRESSION, compression_kwargs, ensure_filters_for
from pipeline.shards import (
    N_LANDMARKS,
    PER_FACE,
    SCHEMA_VERSION,
    TMP_SUFFIX,
    VIDEO_KEYS,
    AlreadyCommitted,
    ShardError,
    read_failures,
    read_json_rows,
    read_videos_table,
    unfinished,
)
from pipeline.version import package_version


def commit_no_replace(tmp: Path, final: Path) -> Path:
    """Give the finished temporary file ``tmp`` its final name ``final``, never replacing an existing one.

    ``os.link`` fails when ``final`` exists (POSIX, also on NFS and Lustre), unlike ``os.replace``: a
    worker that was frozen (SIGSTOP, a long GC or NFS stall) and wakes after its task was redone elsewhere
    cannot put its file over the committed one. ``tmp`` is removed either way. Raises ``AlreadyCommitted``
    when another attempt got there first.
    """
    tmp, final = Path(tmp), Path(final)
    try:
        os.link(tmp, final)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise AlreadyCommitted(f"{final}: another attempt finished it first; discarded {tmp.name}") from None
    except FileNotFoundError:  # our temporary file was removed by the attempt that committed first
        if final.exists():
            raise AlreadyCommitted(f"{final}: another attempt finished it first and discarded {tmp.name}") from None
        raise ShardError(f"{final}: its temporary file {tmp.name} disappeared before the commit") from None
    tmp.unlink()
    return final


def tmp_path(path: Path) -> Path:
    """A fresh in-progress name for one attempt at shard ``path``
    (``shard-00000.h5`` -> ``shard-00000.h5.<host>-<pid>-<uuid>.tmp``).

    Per attempt, so two writers of the same shard (a Dask task retried while a worker thought dead still
    runs, HDF5 file locking off on NFS) never write into one file; ``commit_no_replace`` makes the first
    to finish the shard.
    """
    import socket
    import uuid

    path = Path(path)
    return path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}{TMP_SUFFIX}")


def _check_video_row(row: dict, where: str) -> dict:
    missing = [k for k in VIDEO_KEYS if k not in row]
    if missing:
        raise ShardError(f"{where}: video row {row.get('id', '?')!r} lacks keys {missing}; expected {VIDEO_KEYS}")
    if row["label"] not in (0, 1):
        raise ShardError(f"{where}: video {row['id']!r} label must be 0 (real) or 1 (fake), got {row['label']!r}")
    return {k: row[k] for k in row}


class ShardWriter:
    """Appends the faces of one video at a time into ``<path>.<attempt>.tmp``; ``finish()`` commits it to ``path``
    without replacing (``commit_no_replace``; ``AlreadyCommitted`` if another attempt finished first).

    Peak memory is one video's crops, whatever the shard size. Use as a context manager: leaving the block
    with an exception closes the temporary file and leaves it on disk (a rerun sees it as unfinished and
    redoes the shard), leaving it normally finishes the shard.

    Args:
        path: final shard path, e.g. ``shards/ffpp/train/shard-00000.h5``.
        crop_size: S, the side of the square crops.
        attrs: file attributes (see module docstring); ``schema_version`` and ``created`` are filled in.
        compression: one of ``COMPRESSIONS``, optionally ``NAME:LEVEL`` (see ``compression_kwargs``).
    """

    def __init__(self, path: str | os.PathLike, crop_size: int, attrs: dict | None = None,
                 compression: str = DEFAULT_COMPRESSION, planned: Sequence[dict] | None = None):
        self.path = Path(path)
        self.tmp = tmp_path(self.path)
        self.crop_size = int(crop_size)
        self.videos: list[dict] = []
        self.no_face: list[tuple[int, int]] = []
        self.n = 0
        self.planned = list(planned or [])
        self.failures: list[dict] = []
        self._finished = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        s = self.crop_size
        comp = compression_kwargs(compression)
        # "x", not "w": "w" truncates an existing file before HDF5 takes its lock, so a name clash (never
        # expected with a uuid per attempt) must fail instead of destroying another attempt's file.
        self._f = h5py.File(self.tmp, "x")
        f = self._f
        # fletcher32 sits after the compressor in the filter pipeline, so it checks the bytes on disk;
        # HDF5 then refuses a corrupt chunk on read (OSError) with no extra code in any reader.
        f.create_dataset("faces", shape=(0, s, s, 3), maxshape=(None, s, s, 3), dtype=np.uint8,
                         chunks=(1, s, s, 3), fletcher32=True, **comp)
        # Small per-face arrays: one chunk of many rows keeps random reads cheap.
        for name, tail, dtype in (("boxes", (4,), np.float32), ("scores", (), np.float32),
                                  ("kps5", (5, 2), np.float32), ("crop_boxes", (4,), np.float32),
                                  ("frame_index", (), np.int32), ("video", (), np.int32)):
            f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                             chunks=(4096, *tail), fletcher32=True)
        base = {"schema_version": SCHEMA_VERSION, "crop_scale": CROP_SCALE, "crop_size": s, "detector": "unknown",
                "detector_weights_sha256": "", "landmark_model_sha256": "", "landmark_detector": "", "package_version": package_version(),
                "manifest_hash": "", "landmarks_done": False}
        base.update(attrs or {})
        base["crop_size"] = s
        base["compression"] = compression
        base["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for k, v in base.items():
            f.attrs[k] = v

    def add_video(self, row: dict, faces: np.ndarray, frame_index: np.ndarray, boxes: np.ndarray,
                  scores: np.ndarray, kps5: np.ndarray, crop_boxes: np.ndarray,
                  no_face_frames: Iterable[int] = ()) -> int:
        """Append one video's faces; returns its row in the ``videos`` table.

        Args:
            row: the video's table row (keys ``VIDEO_KEYS``).
            faces: (n, S, S, 3) uint8 RGB crops (n may be 0 when no sampled frame had a face).
            frame_index: (n,) frame index of each crop. boxes, crop_boxes: (n, 4); scores: (n,); kps5: (n, 5, 2).
            no_face_frames: sampled frame indices of this video where no face was found.
        """
        row = _check_video_row(row, str(self.path))
        s = self.crop_size
        faces = np.asarray(faces, dtype=np.uint8)
        n = len(faces)
        if faces.shape[1:] != (s, s, 3):
            raise ShardError(f"{self.path}: faces of video {row['id']!r} have shape {faces.shape}, expected (n, {s}, {s}, 3)")
        vid = len(self.videos)
        self._append({"faces": faces, "boxes": np.asarray(boxes, np.float32).reshape(n, 4),
                      "scores": np.asarray(scores, np.float32).reshape(n),
                      "kps5": np.asarray(kps5, np.float32).reshape(n, 5, 2),
                      "crop_boxes": np.asarray(crop_boxes, np.float32).reshape(n, 4),
                      "frame_index": np.asarray(frame_index, np.int32).reshape(n),
                      "video": np.full(n, vid, np.int32)})
        self.videos.append(row)
        self.no_face.extend((vid, int(i)) for i in no_face_frames)
        return vid

    def _append(self, arrays: dict[str, np.ndarray]) -> None:
        """Append equal-length per-face arrays (keys ``PER_FACE``) at the end of the shard."""
        n = len(arrays["faces"])
        if n == 0:
            return
        for name in PER_FACE:
            ds = self._f[name]
            ds.resize(self.n + n, axis=0)
            ds[self.n:self.n + n] = arrays[name]
        self.n += n

    def finish(self, landmarks: np.ndarray | None = None, landmark_ok: np.ndarray | None = None) -> Path:
        """Write the tables, close and atomically rename ``.tmp`` -> final path. Returns the final path.

        Args:
            landmarks: optional (N, 68, 2) float32 in crop pixels (NaN where none) to store right away.
            landmark_ok: (N,) bool, required with ``landmarks``.
        """
        f = self._f
        _write_json_rows(f, "videos", self.videos)
        if self.planned:
            _write_json_rows(f, "planned", self.planned)
        _write_json_rows(f, "failures", self.failures)  # always (even empty): marks a file that stores them
        _create_checked(f, "no_face", np.array(self.no_face, dtype=np.int32).reshape(-1, 2))
        if landmarks is not None:
            _write_landmarks(f, self.path, landmarks, landmark_ok, self.n)
        f.close()
        self._finished = True
        commit_no_replace(self.tmp, self.path)
        for stale in unfinished(self.path):  # other attempts' files: they can no longer replace this shard
            stale.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Close the temporary file without finishing; the ``.tmp`` stays and marks the shard unfinished."""
        self._finished = True
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._finished:
            self.finish()
        elif exc_type is not None:
            self.abort()


def _create_checked(f: h5py.File, name: str, data: np.ndarray, chunk_rows: int = 4096) -> None:
    """A dataset with the fletcher32 checksum (chunked, as HDF5 filters need; empty datasets too)."""
    data = np.asarray(data)
    chunks = (max(1, min(len(data), chunk_rows)), *data.shape[1:])
    f.create_dataset(name, data=data, chunks=chunks, maxshape=(None, *data.shape[1:]), fletcher32=True)


def _write_json_rows(f: h5py.File, name: str, rows: Sequence[dict]) -> None:
    """One JSON object per row as fixed-length ASCII bytes: variable-length strings cannot carry HDF5 filters,
    fixed-length ones can, so the table gets a fletcher32 checksum like every other dataset."""
    text = [json.dumps(r, sort_keys=True).encode("ascii") for r in rows]  # ensure_ascii: any name is ASCII
    width = max([len(t) for t in text] + [1])
    _create_checked(f, name, np.array(text, dtype=f"S{width}"))


def _write_landmarks(f: h5py.File, path: Path, landmarks: np.ndarray, landmark_ok: np.ndarray | None, n: int) -> None:
    landmarks = np.asarray(landmarks, np.float32)
    if landmarks.shape != (n, N_LANDMARKS, 2):
        raise ShardError(f"{path}: landmarks shape {landmarks.shape}, expected ({n}, {N_LANDMARKS}, 2)")
    if landmark_ok is None:
        raise ShardError(f"{path}: landmark_ok is required with landmarks")
    landmark_ok = np.asarray(landmark_ok, bool).reshape(n)
    for name in ("landmarks", "landmark_ok"):
        if name in f:
            del f[name]
    _create_checked(f, "landmarks", landmarks)
    _create_checked(f, "landmark_ok", landmark_ok)
    f.attrs["landmarks_done"] = True


def add_landmarks(path: str | os.PathLike, landmarks: np.ndarray, landmark_ok: np.ndarray,
                  landmark_model_sha256: str = "", landmark_detector: str = "",
                  failures: Sequence[dict] = ()) -> Path:
    """Store landmarks in a finished shard without ever leaving it half-written.

    The shard is copied to a per-attempt ``.tmp``, the landmark datasets are added to the copy, and the copy
    replaces the original by an atomic rename (readers holding the old file keep a complete view). This is
    the one replacing commit: every attempt derives the same landmarks from the same committed crops, so a
    late attempt can only put an equal, complete file in place.

    Args:
        landmarks: (N, 68, 2) float32 crop pixels, NaN where none. landmark_ok: (N,) bool.
        landmark_model_sha256, landmark_detector: provenance stored as file attributes.
        failures: the landmark stage's failure rows; they replace the shard's earlier ``landmarks`` rows.
    """
    import shutil

    path = Path(path)
    tmp = tmp_path(path)
    shutil.copyfile(path, tmp)
    with h5py.File(tmp, "r+") as f:
        _write_landmarks(f, path, landmarks, landmark_ok, f["faces"].shape[0])
        f.attrs["landmark_model_sha256"] = landmark_model_sha256
        f.attrs["landmark_detector"] = landmark_detector
        rows = [r for r in read_failures(f) if r.get("stage") != "landmarks"] + list(failures)
        stores = "failures" in f  # even empty, the table marks a shard that stores its failures: keep it
        if stores:
            del f["failures"]
        if stores or rows:
            _write_json_rows(f, "failures", rows)
    os.replace(tmp, path)
    for stale in unfinished(path):
        stale.unlink(missing_ok=True)
    return path


def write_shard(path: str | os.PathLike, faces: np.ndarray, videos: Sequence[dict] | None = None,
                video: np.ndarray | None = None, frame_index: np.ndarray | None = None,
                landmarks: np.ndarray | None = None, landmark_ok: np.ndarray | None = None,
                boxes: np.ndarray | None = None, scores: np.ndarray | None = None, kps5: np.ndarray | None = None,
                crop_boxes: np.ndarray | None = None, no_face: np.ndarray | None = None,
                attrs: dict | None = None, compression: str = DEFAULT_COMPRESSION,
                planned: Sequence[dict] | None = None) -> Path:
    """Write a complete shard from in-memory arrays (for tests and small tools); atomic like the pipeline.

    Only ``faces`` is required; everything else gets a plausible default so tests can build a shard in one
    line: one real video named ``synthetic/000`` holding every face, frame indices 0..N-1, detector boxes
    and crop boxes equal to the whole crop, scores 1, kps5 at fixed relative positions, no landmarks unless
    given (``landmark_ok`` defaults to "landmarks are finite").

    Args:
        path: final shard path (parent folders are created).
        faces: (N, S, S, 3) uint8 RGB.
        videos: table rows; missing keys are filled (``id`` "synthetic/<row>", ``label`` 0, ...).
        video: (N,) int row into ``videos`` (default all 0). frame_index: (N,) int (default arange).
        landmarks: (N, 68, 2) float32 crop pixels or None. landmark_ok: (N,) bool or None.
        boxes, crop_boxes: (N, 4); scores: (N,); kps5: (N, 5, 2); no_face: (K, 2) int (video row, frame).
        attrs: extra file attributes (e.g. ``{"detector": "synthetic"}``).
        planned: rows of the ``planned`` table (id, path, size, mtime of each source video), or None.

    Example::

        write_shard(d / "shard-00000.h5", faces, videos=[{"id": "a", "label": 0}, {"id": "b", "label": 1}],
                    video=np.repeat([0, 1], 4), landmarks=lms)
        write_index(d, dataset="toy", split="train")
    """
    faces = np.asarray(faces, np.uint8)
    if faces.ndim != 4 or faces.shape[3] != 3 or faces.shape[1] != faces.shape[2]:
        raise ShardError(f"{path}: faces shape {faces.shape}, expected (N, S, S, 3)")
    n, s = faces.shape[0], faces.shape[1]
    video = np.zeros(n, np.int32) if video is None else np.asarray(video, np.int32)
    n_videos = int(video.max()) + 1 if n else 0
    videos = list(videos) if videos is not None else [{} for _ in range(max(n_videos, 1))]
    if n and n_videos > len(videos):
        raise ShardError(f"{path}: video rows reference row {n_videos - 1} but only {len(videos)} videos given")
    frame_index = np.arange(n, dtype=np.int32) if frame_index is None else np.asarray(frame_index, np.int32)
    whole = np.tile(np.array([0, 0, s, s], np.float32), (n, 1))
    boxes = whole if boxes is None else np.asarray(boxes, np.float32)
    crop_boxes = whole if crop_boxes is None else np.asarray(crop_boxes, np.float32)
    scores = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32)
    if kps5 is None:
        rel = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]], np.float32)
        kps5 = np.tile(rel * s, (n, 1, 1))
    kps5 = np.asarray(kps5, np.float32)
    no_face = np.zeros((0, 2), np.int32) if no_face is None else np.asarray(no_face, np.int32).reshape(-1, 2)
    if landmarks is not None and landmark_ok is None:
        landmark_ok = np.isfinite(np.asarray(landmarks, np.float32)).all(axis=(1, 2))
    base_attrs = {"detector": "synthetic"}
    base_attrs.update(attrs or {})
    writer = ShardWriter(path, s, base_attrs, compression, planned=planned)
    try:
        for v, row in enumerate(videos):
            full = {"id": f"synthetic/{v:03d}", "path": f"synthetic/{v:03d}.mp4", "label": 0, "method": "original",
                    "source": "", "target": "", "fps": 25.0, "n_frames": int((video == v).sum()), "width": s,
                    "height": s, "split": "train", "dataset": "synthetic"}
            full.update(row)
            writer.videos.append(_check_video_row(full, str(path)))
        writer.no_face.extend((int(v), int(i)) for v, i in no_face)
        # Keep the caller's face order (row i of every array is face i), unlike add_video's per-video blocks.
        writer._append({"faces": faces, "boxes": boxes.reshape(n, 4), "scores": scores.reshape(n),
                        "kps5": kps5.reshape(n, 5, 2), "crop_boxes": crop_boxes.reshape(n, 4),
                        "frame_index": frame_index.reshape(n), "video": video.reshape(n)})
        return writer.finish(landmarks, landmark_ok)
    except BaseException:
        writer.abort()
        raise


def stored_bytes(path: str | os.PathLike) -> int:
    """Bytes a staged file adds to a shard: its file size (crops dominate; chunks are copied as stored)."""
    return Path(path).stat().st_size


def pack_shard(sources: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """Concatenate finished single-writer files (the per-video staged files) into one shard at ``path``.

    Crop chunks are copied as stored (``read_direct_chunk``/``write_direct_chunk``: no decompression or
    recompression, and each chunk keeps its fletcher32 checksum); the small per-face arrays and tables are
    concatenated, ``video`` and ``no_face`` rows renumbered. Attributes come from the first source (all were
    made with one plan). The result goes to a per-attempt ``.tmp`` and is committed without replacing, so
    packing can be interrupted at any point: the sources are untouched until the caller removes them.
    Sources without landmarks only (landmarks are added to finished shards).
    """
    path = Path(path)
    sources = [Path(p) for p in sources]
    if not sources:
        raise ShardError(f"{path}: nothing to pack")
    with h5py.File(sources[0], "r") as first:  # one source open at a time: a shard may gather thousands
        ensure_filters_for(sources[0], first)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in first.attrs.items()}
        crop_size = int(first["faces"].shape[1])
    compression = str(attrs.get("compression", DEFAULT_COMPRESSION))
    writer = ShardWriter(path, crop_size, attrs, compression)
    try:
        dst = writer._f["faces"]
        for src_path in sources:
            with h5py.File(src_path, "r") as f:
                if f.attrs.get("settings_hash") != attrs.get("settings_hash") or \
                        str(f.attrs.get("compression", DEFAULT_COMPRESSION)) != compression:
                    raise ShardError(f"{src_path}: made with other settings than {sources[0].name}; cannot pack")
                base_video, n0, n = len(writer.videos), writer.n, f["faces"].shape[0]
                small = {name: f[name][()] for name in PER_FACE if name != "faces"}
                small["video"] = small["video"].astype(np.int32) + base_video
                for name, data in small.items():
                    writer._f[name].resize(n0 + n, axis=0)
                    writer._f[name][n0:n0 + n] = data
                dst.resize(n0 + n, axis=0)
                src = f["faces"].id
                for i in range(n):
                    mask, chunk = src.read_direct_chunk((i, 0, 0, 0))
                    dst.id.write_direct_chunk((n0 + i, 0, 0, 0), chunk, mask)
                writer.n += n
                writer.videos += read_videos_table(f)
                writer.planned += read_json_rows(f, "planned") if "planned" in f else []
                writer.failures += read_failures(f)
                if "no_face" in f:
                    writer.no_face += [(int(v) + base_video, int(i)) for v, i in f["no_face"][()]]
        return writer.finish()
    except BaseException:
        writer.abort()
        writer.tmp.unlink(missing_ok=True)
        raise
