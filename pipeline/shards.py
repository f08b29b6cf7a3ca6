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

Modules: this one holds the contract's names and the reading side (``ShardReader``, ``load_index``,
``shard_paths``); ``pipeline.shard_writer`` writes shards (``ShardWriter``, ``pack_shard``, ``add_landmarks``,
``write_shard``), ``pipeline.shard_codec`` holds the compressions and ``pipeline.shard_index`` writes a split's
``index.json``.
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import h5py
import numpy as np

from pipeline.errors import UserError
from pipeline.shard_codec import ensure_filters_for

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

REQUIRED_ATTRS = ("schema_version", "crop_scale", "crop_size", "detector", "created")
PER_FACE = ("faces", "boxes", "scores", "kps5", "crop_boxes", "frame_index", "video")


class ShardError(UserError):
    """A shard or split folder is missing, unfinished or does not follow the schema (message names the file)."""


class AlreadyCommitted(ShardError):
    """Another attempt committed this file first; this attempt's temporary file was discarded."""


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


def unfinished(path: Path) -> list[Path]:
    """In-progress files of shard ``path`` left by attempts that did not finish (any writer, any host)."""
    path = Path(path)
    return sorted(path.parent.glob(f"{glob.escape(path.name)}*{TMP_SUFFIX}"))


def read_json_rows(f: h5py.File, name: str) -> list[dict]:
    """Rows of a JSON-rows dataset (``videos``, ``planned``) of an open shard as dicts."""
    return [json.loads(r.decode() if isinstance(r, bytes) else r) for r in f[name][()]]


def read_failures(f: h5py.File) -> list[dict]:
    """Failure rows stored in an open shard or staged file (none for files written before they were stored)."""
    return read_json_rows(f, "failures") if "failures" in f else []


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
            ensure_filters_for(self.path, f)
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
