"""HDF5 shards: the storage contract between the preprocessing pipeline and everything that reads faces.

One shard holds the face crops of a group of videos, up to a size bound (``DEFAULT_SHARD_BYTES``). Every
file is written by one process to a per-attempt ``<name>.h5.<host>-<pid>-<uuid>.tmp`` and committed
without replacing (``commit_no_replace``: a hard link to the final name, which fails if that name exists):
a file without the ``.tmp`` suffix is always complete, and a late or duplicate attempt can never replace
or corrupt a committed one. The pipeline first commits one file per video into the split's hidden
``.staging/`` folder, then ``pack_shard`` copies them (raw chunks, no recompression) into ``shard-NNNNN.h5``.
A split folder ends with ``index.json``, written last, listing the finished shards.

Schema (``SCHEMA_VERSION = 2``; N faces, V videos, S crop side, K frames without a face):

=================  ======================  ===============================================================
dataset            dtype, shape            meaning
=================  ======================  ===============================================================
``faces``          uint8 (N, S, S, 3)      RGB square crops, chunked one face per chunk, lossless
``boxes``          float32 (N, 4)          detector box x1, y1, x2, y2 in source-frame pixels
``scores``         float32 (N,)            detector confidence
``kps5``           float32 (N, 5, 2)       detector keypoints (eyes, nose, mouth corners), source pixels
``crop_boxes``     float32 (N, 4)          the square crop x1, y1, x2, y2 in source pixels
``frame_index``    int32 (N,)              index of the frame in its video (0-based, decode order)
``video``          int32 (N,)              row of the ``videos`` table
``landmarks``      float32 (N, 68, 2)      dlib 68 points in crop pixels, NaN where none (landmark stage)
``landmark_ok``    bool (N,)               True where dlib found a face in the crop (landmark stage)
``videos``         fixed-length ASCII      one JSON object per video (keys in ``VIDEO_KEYS``)
``no_face``        int32 (K, 2)            (video row, frame_index) of sampled frames with no face
``planned``        fixed-length ASCII      one JSON object per video planned into the shard (id, path, size,
                                           mtime), including videos that failed; the resume key
=================  ======================  ===============================================================

File attributes: ``schema_version``, ``crop_scale``, ``crop_size``, ``detector``, ``detector_weights_sha256``,
``landmark_model_sha256``, ``landmark_detector`` (how dlib's face rectangle was found, e.g.
``dlib_hog luma@144 upsample=0``), ``settings`` (JSON of the settings that shape the crops: frames, segment,
crop scale and size, detector and its settings, compression) and ``settings_hash``, ``created``,
``package_version``, ``manifest_hash``, ``compression``, ``landmarks_done``.

Every dataset is chunked and written with HDF5's fletcher32 checksum (after the compressor, so it covers the
bytes on disk): plain h5py raises ``OSError`` on a chunk whose checksum does not match, and ``verify`` names
the shard, dataset and rows. Tables are fixed-length strings because variable-length ones cannot carry filters.

Everything above is readable with plain ``h5py`` (``json.loads`` on each ``videos`` row); crops written with
a ``blosc-*`` compression (the default, ``DEFAULT_COMPRESSION``) need ``import hdf5plugin`` once before
reading them (``ShardReader`` does it).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # 1: before per-shard plans and checksums (still readable; resume asks for --overwrite)
INDEX_NAME = "index.json"
FAILURES_NAME = "failures.jsonl"
TMP_SUFFIX = ".tmp"
STAGING_NAME = ".staging"  # per-video committed files of a split, waiting to be packed into shards
N_LANDMARKS = 68
# Shards are packed up to this many bytes of stored data (a video larger than the bound gets a shard of its
# own): big enough that a split of FF++ train is tens of files, small enough to copy and verify one at a time.
DEFAULT_SHARD_BYTES = 1 << 30

VIDEO_KEYS = ("id", "path", "label", "method", "source", "target", "fps", "n_frames", "width", "height",
              "split", "dataset")

# Chosen with bench/bench_codec.py on 384-px crops of HD videos: the smallest bytes per face among the codecs
# that read >= 1200 random faces per CPU-second (a tenth of a ~120 pairs/s training core's time) and write
# >= 150 (a tenth of preprocessing's time). Blosc-zstd level 3 stores ~56 % of raw where Blosc-LZ4 stored
# ~74 %; LZ4 reads ~2.5x faster (`--compression blosc-lz4` where reading speed matters more than disk).
# Blosc needs `import hdf5plugin` before h5py reads the crops (ShardReader does it).
DEFAULT_COMPRESSION = "blosc-zstd:3"
COMPRESSIONS = ("none", "lzf", "gzip", "blosc-lz4", "blosc-lz4hc", "blosc-zstd")

REQUIRED_ATTRS = ("schema_version", "crop_scale", "crop_size", "detector", "created")
PER_FACE = ("faces", "boxes", "scores", "kps5", "crop_boxes", "frame_index", "video")


class ShardError(Exception):
    """A shard or split folder is missing, unfinished or does not follow the schema (message names the file)."""


class AlreadyCommitted(ShardError):
    """Another attempt committed this file first; this attempt's temporary file was discarded."""


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


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``1GB``, ``1.5GiB``, ``512MB``, ``800k`` or ``1000000`` (decimal and binary units)."""
    import re

    if isinstance(text, bool) or isinstance(text, float):
        raise ValueError(f"not a size: {text!r} (expected e.g. 1GB, 512MB, 1.5GiB or a number of bytes)")
    if isinstance(text, int):
        if text < 1:
            raise ValueError(f"not a size: {text!r} (expected at least 1 byte)")
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a size: {text!r} (expected e.g. 1GB, 512MB, 1.5GiB or a number of bytes)")
    power = " kmgt".index(m.group(2) or " ")
    return max(1, int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power))


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


def unfinished(path: Path) -> list[Path]:
    """In-progress files of shard ``path`` left by attempts that did not finish (any writer, any host)."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(path.name)}*{TMP_SUFFIX}"))


def _compression_kwargs(compression: str) -> dict[str, Any]:
    """h5py ``create_dataset`` keyword arguments for a compression name: one of ``COMPRESSIONS``, optionally
    with a level, ``NAME:LEVEL`` (0-9; gzip and blosc-* only), e.g. ``blosc-zstd:3``."""
    def bad(why: str) -> ValueError:
        return ValueError(f"unknown shard compression {compression!r} ({why}); expected one of "
                          f"{', '.join(COMPRESSIONS)}, with ':LEVEL' (0-9) for gzip and blosc-*")

    name, _, level_text = str(compression).partition(":")
    if name not in COMPRESSIONS:
        raise bad(f"no codec {name!r}")
    if level_text:
        if name in ("none", "lzf"):
            raise bad(f"{name} has no levels")
        if not level_text.isdigit() or not 0 <= int(level_text) <= 9:
            raise bad(f"level {level_text!r} is not 0-9")
    level = int(level_text) if level_text else None
    if name == "none":
        return {}
    if name == "lzf":
        return {"compression": "lzf"}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4 if level is None else level}
    import hdf5plugin  # registers the Blosc filter with HDF5; only needed for this choice

    # Byte shuffle does nothing for uint8 pixels and only costs time.
    return dict(hdf5plugin.Blosc(cname=name.split("-", 1)[1], clevel=5 if level is None else level,
                                 shuffle=hdf5plugin.Blosc.NOSHUFFLE))


def check_compression(compression: str) -> str:
    """``compression`` if it names a shard compression, else ``ValueError`` saying why (for CLI checks)."""
    _compression_kwargs(compression)
    return compression


def _ensure_filters_for(path: Path, f: h5py.File) -> None:
    """Register hdf5plugin filters when a shard was written with Blosc (plain h5py lacks them)."""
    if str(f.attrs.get("compression", "")).startswith("blosc"):
        import hdf5plugin  # noqa: F401  (import registers the filters)


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
        compression: one of ``COMPRESSIONS``, optionally ``NAME:LEVEL`` (see ``_compression_kwargs``).
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
        comp = _compression_kwargs(compression)
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
        base = {"schema_version": SCHEMA_VERSION, "crop_scale": 1.25, "crop_size": s, "detector": "unknown",
                "detector_weights_sha256": "", "landmark_model_sha256": "", "landmark_detector": "", "package_version": _package_version(),
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


def read_json_rows(f: h5py.File, name: str) -> list[dict]:
    """Rows of a JSON-rows dataset (``videos``, ``planned``) of an open shard as dicts."""
    return [json.loads(r.decode() if isinstance(r, bytes) else r) for r in f[name][()]]


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


def read_failures(f: h5py.File) -> list[dict]:
    """Failure rows stored in an open shard or staged file (none for files written before they were stored)."""
    return read_json_rows(f, "failures") if "failures" in f else []


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
                attrs: dict | None = None, compression: str = DEFAULT_COMPRESSION) -> Path:
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
    writer = ShardWriter(path, s, base_attrs, compression)
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
        _ensure_filters_for(sources[0], first)
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


def read_videos_table(f: h5py.File) -> list[dict]:
    """Rows of the ``videos`` dataset of an open shard as dicts."""
    return read_json_rows(f, "videos")


def _open_read_only(path: Path) -> h5py.File:
    """``path`` read-only without HDF5 file locks: finished shards never change, so a reader needs none, and
    skipping them saves a lock call per open and works on file systems without locks (some NFS/Lustre
    mounts). HDF5 refuses a second handle on a file this process already holds open with other locking
    flags: then the file is opened with h5py's default flags, as that handle was."""
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as e:
        if "locking flag values don't match" not in str(e):
            raise
        return h5py.File(path, "r")


class ShardReader:
    """Read-only access to one shard; the HDF5 handle is opened lazily per process (safe across fork).

    Small per-face arrays are loaded in ``__init__`` (the file is opened and closed again); the crop
    and landmark datasets are opened on the first ``face()``/``landmarks()`` call in the calling process,
    so a reader built before DataLoader workers fork is safe to use inside them.

    Attributes:
        path: the shard file. videos: the videos table, rows as dicts. video: (N,) int32 row into videos.
        frame_index: (N,) int32. landmark_ok: (N,) bool (all False before the landmark stage).
        attrs: file attributes as a plain dict. crop_size: S.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (an unfinished .tmp exists: rerun the pipeline to finish it)" if unfinished(self.path) else ""
            raise ShardError(f"{self.path}: shard not found{hint}")
        try:
            f = _open_read_only(self.path)
        except OSError as e:
            raise ShardError(f"{self.path}: not a readable HDF5 file ({e})") from e
        with f:
            _ensure_filters_for(self.path, f)
            try:
                self._load(f)
            except OSError as e:  # a checksum or decompression failure in one of the per-face tables
                raise ShardError(f"{self.path}: unreadable ({_reason(e)}); the shard is corrupt: "
                                 f"rerun extract-frames on its folder to redo it") from e
        self._f: h5py.File | None = None
        self._pid: int | None = None

    def _load(self, f: h5py.File) -> None:
        self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        for k in REQUIRED_ATTRS:
            if k not in self.attrs:
                raise ShardError(f"{self.path}: missing attribute {k!r}; not a pipeline shard")
        if int(self.attrs["schema_version"]) not in READABLE_SCHEMAS:
            raise ShardError(f"{self.path}: schema_version {self.attrs['schema_version']}, this code reads "
                             f"{READABLE_SCHEMAS}")
        for name in PER_FACE + ("videos",):
            if name not in f:
                raise ShardError(f"{self.path}: missing dataset {name!r}")
        self.videos = read_videos_table(f)
        self.video = f["video"][()].astype(np.int32)
        self.frame_index = f["frame_index"][()].astype(np.int32)
        self.has_landmarks = bool(self.attrs.get("landmarks_done", False)) and "landmarks" in f
        n = len(self.video)
        self.landmark_ok = f["landmark_ok"][()].astype(bool) if self.has_landmarks else np.zeros(n, bool)
        self.no_face = f["no_face"][()].astype(np.int32) if "no_face" in f else np.zeros((0, 2), np.int32)
        self.crop_size = int(f["faces"].shape[1])

    def _file(self) -> h5py.File:
        # A handle inherited through fork shares HDF5 state with the parent: reopen in each process.
        if self._f is None or self._pid != os.getpid():
            self._f = _open_read_only(self.path)
            self._pid = os.getpid()
            self._datasets = {}
        return self._f

    def _dataset(self, name: str) -> h5py.Dataset:
        # Looking a dataset up by name costs about as much as reading one crop: keep the handles.
        f = self._file()
        cache = self.__dict__.setdefault("_datasets", {})
        ds = cache.get(name)
        if ds is None:
            ds = cache[name] = f[name]
        return ds

    def __len__(self) -> int:
        return len(self.video)

    def face(self, i: int) -> np.ndarray:
        """(S, S, 3) uint8 RGB crop ``i``."""
        return self.read("faces", int(i))

    def landmarks(self, i: int) -> np.ndarray:
        """(68, 2) float32 landmarks of crop ``i`` in crop pixels; all NaN if none or not cached yet."""
        if not self.has_landmarks:
            return np.full((N_LANDMARKS, 2), np.nan, np.float32)
        return self.read("landmarks", int(i))

    def read(self, name: str, i: int | slice | np.ndarray | None = None) -> np.ndarray:
        """Any per-face dataset (e.g. ``boxes``, ``crop_boxes``, ``kps5``, ``scores``) at rows ``i`` (all if None).

        Raises ``ShardError`` naming the file, dataset and rows when HDF5 cannot read them (a chunk whose
        fletcher32 checksum fails, a cut-off file).
        """
        try:
            ds = self._dataset(name)
            if isinstance(i, (int, np.integer)) and 0 <= i < ds.shape[0] and ds.ndim > 1:
                return self._read_row(ds, int(i))
            return ds[()] if i is None else ds[i]
        except OSError as e:
            rows = "all rows" if i is None else f"row {i}" if isinstance(i, int) else f"rows {_rows(i)}"
            raise ShardError(f"{self.path}: dataset {name!r} {rows} unreadable ({_reason(e)}); the shard is "
                             f"corrupt: run `python -m pipeline verify` on its folder and rerun extract-frames") from e

    @staticmethod
    def _read_row(ds: h5py.Dataset, i: int) -> np.ndarray:
        """Row ``i`` of ``ds`` through the low-level API: the same bytes as ``ds[i]`` (checksums verified
        alike), without h5py's selection parsing, which cost a quarter of a 384-px crop read."""
        shape = (1,) + ds.shape[1:]
        out = np.empty(shape, ds.dtype)
        space = ds.id.get_space()
        space.select_hyperslab((i,) + (0,) * (ds.ndim - 1), shape)
        ds.id.read(h5py.h5s.create_simple(shape), space, out)
        return out[0]

    def video_row(self, i: int) -> dict:
        """The videos-table row of crop ``i``."""
        return self.videos[int(self.video[int(i)])]

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None
        self._pid = None
        self._datasets = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_f"] = None
        state["_pid"] = None
        state["_datasets"] = {}
        return state

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown: h5py may already be torn down; nothing to release
            return


def _reason(e: OSError) -> str:
    """The first clause of an h5py error (e.g. 'Can't synchronously read data (filter returned failure ...)')."""
    return (str(e).split(";")[0].strip() or type(e).__name__)[:160]


def _rows(i) -> str:
    if isinstance(i, slice):
        return f"{i.start or 0}-{(i.stop - 1) if i.stop is not None else 'end'}"
    rows = np.asarray(i).reshape(-1)
    return ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")


def load_index(split_dir: str | os.PathLike) -> dict:
    """Parsed ``<split_dir>/index.json``; raises ``ShardError`` naming the folder if absent or malformed."""
    split_dir = Path(split_dir)
    p = split_dir / INDEX_NAME
    if not p.is_file():
        raise ShardError(f"{split_dir}: no {INDEX_NAME}; the split was not prepared or its run did not finish "
                         f"(run `python -m pipeline extract-frames` for it)")
    try:
        index = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{p}: not valid JSON ({e})") from e
    for k in ("schema", "shards", "n_faces", "n_videos"):
        if k not in index:
            raise ShardError(f"{p}: missing key {k!r}")
    if int(index["schema"]) not in READABLE_SCHEMAS:
        raise ShardError(f"{p}: schema {index['schema']}, this code reads {READABLE_SCHEMAS}")
    return index


def shard_paths(split_dir: str | os.PathLike) -> list[Path]:
    """Finished shards listed by ``index.json`` of ``split_dir``, in index order."""
    split_dir = Path(split_dir)
    return [split_dir / s["file"] for s in load_index(split_dir)["shards"]]


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
                shards: Sequence[str | os.PathLike] | None = None, extra: dict | None = None) -> Path:
    """Write ``index.json`` for the finished shards of ``split_dir`` (all ``*.h5`` when ``shards`` is None).

    Written to a temporary name and renamed, so a reader never sees half an index.
    """
    split_dir = Path(split_dir)
    files = sorted(split_dir.glob("*.h5")) if shards is None else [split_dir / Path(s).name for s in shards]
    summaries = [summarize_shard(p) for p in files]
    index = {"schema": SCHEMA_VERSION, "dataset": dataset, "split": split,
             "shards": [s.entry() for s in summaries],
             "n_faces": sum(s.n_faces for s in summaries), "n_videos": sum(s.n_videos for s in summaries),
             "failures": FAILURES_NAME,
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    index.update(extra or {})
    out = split_dir / INDEX_NAME
    tmp = out.with_name(out.name + TMP_SUFFIX)
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out)
    return out


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("laanet")
    except PackageNotFoundError:
        return "0.1.0+source"
