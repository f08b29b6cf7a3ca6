"""Shard contract: write-then-read round trip, schema, atomic finish, index, fork-safe lazy reader."""
import json
import multiprocessing as mp

import h5py
import numpy as np
import pytest

from pipeline.shard_codec import DEFAULT_COMPRESSION
from pipeline.shard_index import write_index
from pipeline.shard_writer import ShardWriter, add_landmarks, write_shard
from pipeline.shards import (
    SCHEMA_VERSION,
    VIDEO_KEYS,
    AlreadyCommitted,
    ShardError,
    ShardReader,
    load_index,
    shard_paths,
    unfinished,
)
from tests.shard_faults import flip_chunk_bytes


def _arrays(n=6, s=32, seed=0):
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
    lms = rng.uniform(0, s, (n, 68, 2)).astype(np.float32)
    lms[1] = np.nan
    return faces, lms


@pytest.mark.parametrize("compression", ["lzf", "gzip", "none", "blosc-lz4", "blosc-zstd"])
def test_round_trip(tmp_path, compression):
    faces, lms = _arrays()
    videos = [{"id": "a", "label": 0}, {"id": "b", "label": 1, "method": "Deepfakes"}]
    video = np.array([0, 1, 0, 1, 1, 0])
    p = write_shard(tmp_path / "s" / "shard-00000.h5", faces, videos=videos, video=video,
                    frame_index=np.array([0, 0, 5, 5, 9, 9]), landmarks=lms, compression=compression)
    r = ShardReader(p)
    assert len(r) == 6 and r.crop_size == 32
    for i in range(6):
        np.testing.assert_array_equal(r.face(i), faces[i])
    np.testing.assert_array_equal(r.landmarks(2), lms[2])
    assert np.isnan(r.landmarks(1)).all()
    np.testing.assert_array_equal(r.landmark_ok, [True, False, True, True, True, True])
    np.testing.assert_array_equal(r.video, video)
    np.testing.assert_array_equal(r.frame_index, [0, 0, 5, 5, 9, 9])
    assert [v["id"] for v in r.videos] == ["a", "b"]
    assert r.video_row(1)["method"] == "Deepfakes" and r.video_row(1)["label"] == 1
    assert set(VIDEO_KEYS) <= set(r.videos[0])
    assert r.attrs["schema_version"] == SCHEMA_VERSION and r.attrs["landmarks_done"] is True
    assert r.attrs["compression"] == compression
    assert r.read("boxes").shape == (6, 4)
    r.close()
    assert not list(tmp_path.joinpath("s").glob("*.tmp"))


def test_plain_h5py_schema(tmp_path):
    """Someone who never saw this code reads a shard with h5py alone."""
    faces, lms = _arrays(n=3, s=16)
    import hdf5plugin  # noqa: F401  (registers the Blosc filter of the default compression)

    p = write_shard(tmp_path / "x.h5", faces, landmarks=lms, no_face=np.array([[0, 7]]))
    with h5py.File(p, "r") as f:
        assert f["faces"].dtype == np.uint8 and f["faces"].shape == (3, 16, 16, 3)
        assert f["faces"].chunks == (1, 16, 16, 3) and f.attrs["compression"] == DEFAULT_COMPRESSION
        np.testing.assert_array_equal(f["faces"][2], faces[2])
        for name, shape, dt in [("boxes", (3, 4), np.float32), ("scores", (3,), np.float32),
                                ("kps5", (3, 5, 2), np.float32), ("crop_boxes", (3, 4), np.float32),
                                ("frame_index", (3,), np.int32), ("video", (3,), np.int32),
                                ("landmarks", (3, 68, 2), np.float32), ("landmark_ok", (3,), bool),
                                ("no_face", (1, 2), np.int32)]:
            assert f[name].shape == shape and f[name].dtype == dt, name
        row = json.loads(f["videos"][0])
        assert set(row) >= set(VIDEO_KEYS)
        for k in ("schema_version", "crop_scale", "crop_size", "detector", "detector_weights_sha256",
                  "landmark_model_sha256", "landmark_detector", "created", "package_version", "manifest_hash"):
            assert k in f.attrs, k


def test_writer_per_video_and_interrupted_tmp(tmp_path):
    p = tmp_path / "shard-00001.h5"
    faces, _ = _arrays(n=4, s=16)
    row = {k: "" for k in VIDEO_KEYS} | {"id": "v", "label": 1, "fps": 25.0, "n_frames": 10, "width": 64,
                                        "height": 48}
    with pytest.raises(RuntimeError):
        with ShardWriter(p, 16) as w:
            w.add_video(row, faces[:2], [0, 3], np.zeros((2, 4)), [0.9, 0.8], np.zeros((2, 5, 2)), np.zeros((2, 4)))
            raise RuntimeError("killed mid-write")
    # an interrupted writer leaves only the .tmp: the final name never holds a partial shard
    assert tmp_path_exists(p) and not p.exists()
    with pytest.raises(ShardError, match="unfinished .tmp"):
        ShardReader(p)
    with ShardWriter(p, 16) as w:
        w.add_video(row, faces[:2], [0, 3], np.zeros((2, 4)), [0.9, 0.8], np.zeros((2, 5, 2)), np.zeros((2, 4)),
                    no_face_frames=[6])
        w.add_video(row | {"id": "w"}, faces[:0], [], np.zeros((0, 4)), [], np.zeros((0, 5, 2)), np.zeros((0, 4)),
                    no_face_frames=[0, 5])
    assert p.exists() and not tmp_path_exists(p)
    r = ShardReader(p)
    assert len(r) == 2 and len(r.videos) == 2
    np.testing.assert_array_equal(r.no_face, [[0, 6], [1, 0], [1, 5]])
    assert not r.landmark_ok.any() and np.isnan(r.landmarks(0)).all()


def tmp_path_exists(p):
    return bool(unfinished(p))


def test_add_landmarks_atomic(tmp_path):
    faces, lms = _arrays(n=3, s=16)
    p = write_shard(tmp_path / "a.h5", faces)
    assert ShardReader(p).attrs["landmarks_done"] is False
    add_landmarks(p, lms[:3], np.array([True, False, True]), "abc", "dlib_hog luma@144 upsample=0")
    r = ShardReader(p)
    assert r.attrs["landmarks_done"] is True and r.attrs["landmark_model_sha256"] == "abc"
    assert r.attrs["landmark_detector"] == "dlib_hog luma@144 upsample=0"
    np.testing.assert_array_equal(r.landmarks(0), lms[0])
    np.testing.assert_array_equal(r.face(2), faces[2])
    assert not tmp_path_exists(p)
    r.close()
    with h5py.File(p, "r") as f:  # the empty table stays: it marks a shard that stores its failures
        assert "failures" in f and f["failures"].shape == (0,)
    q = write_shard(tmp_path / "b.h5", faces)
    with h5py.File(q, "r+") as f:  # as written before shards stored their failures
        del f["failures"]
    add_landmarks(q, lms[:3], np.ones(3, bool))
    with h5py.File(q, "r") as f:  # stays without one: its rows still come from the old log
        assert "failures" not in f
    with pytest.raises(ShardError, match="landmarks shape"):
        add_landmarks(p, lms[:2], np.ones(2, bool))


def test_schema_errors(tmp_path):
    with pytest.raises(ShardError, match="faces shape"):
        write_shard(tmp_path / "b.h5", np.zeros((2, 8, 9, 3), np.uint8))
    with pytest.raises(ShardError, match="label must be 0"):
        write_shard(tmp_path / "c.h5", np.zeros((1, 8, 8, 3), np.uint8), videos=[{"label": 3}])
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ShardError, match="junk.h5: not a readable HDF5"):
        ShardReader(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.attrs.update({"schema_version": 99, "crop_scale": 1.25, "crop_size": 8, "detector": "x", "created": ""})
    with pytest.raises(ShardError, match="schema_version 99"):
        ShardReader(tmp_path / "old.h5")
    with pytest.raises(ShardError, match="shard not found"):
        ShardReader(tmp_path / "missing.h5")


def test_index(tmp_path):
    d = tmp_path / "toy" / "train"
    faces, lms = _arrays(n=4, s=16)
    write_shard(d / "shard-00000.h5", faces, landmarks=lms)
    write_shard(d / "shard-00001.h5", faces[:2], videos=[{"id": "q"}, {"id": "r"}], video=[0, 1])
    tmp_path_obj = d / "shard-00002.h5.tmp"
    tmp_path_obj.write_bytes(b"partial")  # unfinished shards are not listed
    with pytest.raises(ShardError, match="no index.json"):
        load_index(d)
    write_index(d, "toy", "train")
    idx = load_index(d)
    assert idx["n_faces"] == 6 and idx["n_videos"] == 3 and idx["failures"] == "failures.jsonl"
    assert idx["shards"][0] == {"file": "shard-00000.h5", "n_faces": 4, "n_videos": 1, "landmarks": True}
    assert idx["shards"][1]["landmarks"] is False
    assert shard_paths(d) == [d / "shard-00000.h5", d / "shard-00001.h5"]


def _child_read(reader, q):
    q.put(int(reader.face(1).sum()))


def test_reader_lazy_and_fork_safe(tmp_path):
    faces, _ = _arrays(n=3, s=16)
    p = write_shard(tmp_path / "f.h5", faces)
    r = ShardReader(p)
    assert r._f is None  # nothing held open after construction
    assert int(r.face(0).sum()) == int(faces[0].sum())  # parent opens a handle before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_read, args=(r, q))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0 and q.get(timeout=5) == int(faces[1].sum())


@pytest.mark.parametrize("compression", ["blosc-lz4", "none"])
def test_verify_finds_flipped_bytes_in_a_crop_chunk(tmp_path, compression):
    """Every dataset carries fletcher32: 8 flipped bytes in one crop chunk are named by shard, dataset, row."""
    from pipeline.verify import verify_split

    faces, lms = _arrays(n=6, s=32)
    d = tmp_path / "split"
    p = write_shard(d / "shard-00000.h5", faces, landmarks=lms, compression=compression)
    write_index(d, "toy", "train")
    assert verify_split(d) == []
    with h5py.File(p, "r") as f:
        assert all(f[k].fletcher32 for k in f)
    flip_chunk_bytes(p, "faces", 4)
    problems = verify_split(d)
    assert len(problems) == 1 and "shard-00000.h5" in problems[0] and "'faces' rows 4-4" in problems[0], problems


def test_verify_names_a_corrupt_landmarks_chunk_and_checks_the_other_shards(tmp_path):
    """Fault matrix: a corrupt landmarks chunk crashed verify with `error: OSError: ...` naming no shard, before
    the other shards were checked (train.py --verify-shards printed a traceback)."""
    from pipeline.verify import verify_split

    faces, lms = _arrays(n=6, s=32)
    d = tmp_path / "split"
    first = write_shard(d / "shard-00000.h5", faces, landmarks=lms)
    second = write_shard(d / "shard-00001.h5", faces, landmarks=lms)
    write_index(d, "toy", "train")
    flip_chunk_bytes(first, "landmarks", 0)
    flip_chunk_bytes(second, "faces", 5)
    problems = verify_split(d)
    assert any("shard-00000.h5: dataset 'landmarks'" in p and "corrupt" in p for p in problems), problems
    assert any("shard-00001.h5: dataset 'faces' rows 5-5" in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_reader_names_file_and_row_of_a_corrupt_crop(tmp_path):
    faces, lms = _arrays(n=4, s=16)
    p = write_shard(tmp_path / "shard-00000.h5", faces, landmarks=lms)
    flip_chunk_bytes(p, "faces", 2)
    r = ShardReader(p)
    np.testing.assert_array_equal(r.face(1), faces[1])
    with pytest.raises(ShardError, match=r"shard-00000.h5: dataset 'faces' row 2 unreadable .*corrupt"):
        r.face(2)
    flip_chunk_bytes(p, "video", 0)  # a per-face table: found when the reader opens the shard
    with pytest.raises(ShardError, match=r"shard-00000.h5: unreadable .*corrupt"):
        ShardReader(p)


def test_contact_sheet_captions_draw_unicode_names():
    from pipeline.inspect_shards import draw_caption

    tile = np.zeros((160, 160, 3), np.uint8)
    accented, ascii_ = draw_caption(tile, "Sé f3"), draw_caption(tile, "S? f3")
    assert accented.shape == tile.shape and accented.any()
    assert not np.array_equal(accented, ascii_)  # OpenCV's fonts drew both as "S? f3"


def test_two_attempts_at_one_shard_write_separate_files(tmp_path):
    """A retried task while the first attempt still runs: neither writes into the other's file, and the late
    one can neither replace nor corrupt the committed shard (it was renamed over it before)."""
    faces, _ = _arrays(n=2, s=16)
    p = tmp_path / "shard-00000.h5"
    row = {"id": "v", "path": "v.mp4", "label": 0, "method": "original", "source": "", "target": "", "fps": 25.0,
           "n_frames": 2, "width": 16, "height": 16, "split": "train", "dataset": "toy"}
    first, second = ShardWriter(p, 16), ShardWriter(p, 16)
    assert first.tmp != second.tmp and len(unfinished(p)) == 2
    for w in (first, second):
        w.add_video(row, faces, [0, 1], np.zeros((2, 4)), [1, 1], np.zeros((2, 5, 2)), np.zeros((2, 4)))
    second.finish()
    committed = p.read_bytes()
    with pytest.raises(AlreadyCommitted, match="another attempt finished it first"):
        first.finish()  # its .tmp was removed by the commit: it wrote into an unlinked file
    # A late attempt whose temporary file survived (e.g. another host's): the link refuses the existing name.
    late = ShardWriter(p, 16)
    late.add_video(row | {"id": "late"}, faces[:1], [0], np.zeros((1, 4)), [1], np.zeros((1, 5, 2)),
                   np.zeros((1, 4)))
    with pytest.raises(AlreadyCommitted):
        late.finish()
    assert p.read_bytes() == committed and unfinished(p) == []
    assert [v["id"] for v in ShardReader(p).videos] == ["v"] and len(ShardReader(p)) == 2


def test_pack_copies_chunks_raw_and_plain_h5py_reads_the_shard(tmp_path):
    """Per-video files packed into one shard: same crops and rows, video column renumbered, raw chunks."""
    import hdf5plugin  # noqa: F401

    from pipeline.shard_writer import pack_shard

    srcs, all_faces = [], []
    for k in range(3):
        faces = _arrays(n=6, s=16, seed=k)[0][:k + 1]
        w = ShardWriter(tmp_path / f"v{k}.h5", 16, {"settings_hash": "abc", "detector": "synthetic"},
                        planned=[{"id": f"v{k}"}])
        w.add_video({k2: "" for k2 in VIDEO_KEYS} | {"id": f"v{k}", "label": k % 2, "fps": 25.0, "n_frames": 9,
                     "width": 16, "height": 16}, faces, np.arange(k + 1), np.zeros((k + 1, 4)), np.ones(k + 1),
                    np.zeros((k + 1, 5, 2)), np.zeros((k + 1, 4)), no_face_frames=[7])
        w.failures = [{"file": f"v{k}.mp4", "stage": "faces", "reason": "no face detected", "frame_index": 7}]
        srcs.append(w.finish())
        all_faces.append(faces)
    out = pack_shard(srcs, tmp_path / "shard-00000.h5")
    with h5py.File(out, "r") as f, h5py.File(srcs[2], "r") as src:
        np.testing.assert_array_equal(f["faces"][()], np.concatenate(all_faces))
        np.testing.assert_array_equal(f["video"][()], [0, 1, 1, 2, 2, 2])
        np.testing.assert_array_equal(f["no_face"][()], [[0, 7], [1, 7], [2, 7]])
        assert [json.loads(r)["id"] for r in f["planned"][()]] == ["v0", "v1", "v2"]
        assert len(f["failures"]) == 3 and f.attrs["settings_hash"] == "abc"
        assert f["faces"].id.read_direct_chunk((3, 0, 0, 0)) == src["faces"].id.read_direct_chunk((0, 0, 0, 0))
    assert ShardReader(out).video_row(5)["id"] == "v2" and not unfinished(out)


def test_parse_size_units_and_errors():
    from pipeline.shards import DEFAULT_SHARD_BYTES, parse_size

    assert parse_size("1GB") == 10 ** 9 and parse_size("1GiB") == DEFAULT_SHARD_BYTES == 2 ** 30
    assert parse_size("512MB") == 512 * 10 ** 6 and parse_size("1.5g") == 1.5e9 and parse_size("800k") == 800_000
    assert parse_size("1000") == 1000 and parse_size(7) == 7
    for bad in ("lots", "0", "-1GB", "1XB", "", 0, -5, 1.5, True):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)
