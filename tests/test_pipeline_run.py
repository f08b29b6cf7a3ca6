"""The stages end to end: sample videos, bad inputs, resume after a kill, the CLI, Dask."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline.faces import DetectorConfig
from pipeline.listing import list_videos
from pipeline.manifest import load_manifest
from pipeline.runner import run_extract, run_landmarks
from pipeline.shards import ShardReader, load_index, shard_paths
from pipeline.tasks import ExtractConfig, LandmarkConfig
from pipeline.verify import verify_split
from pipeline.video import ffmpeg_exe

REPO = Path(__file__).resolve().parents[1]
CROP = 128


def _cfg(**kw):
    return ExtractConfig(crop_size=CROP, detector=DetectorConfig(batch_size=4), **kw)


def _failures(split_dir):
    p = Path(split_dir) / "failures.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, sample_videos_dir):
    """A folder with one good clip and every kind of bad input."""
    d = tmp_path_factory.mktemp("bad")
    shutil.copy(sample_videos_dir / "carphone_pristine.mp4", d / "good.mp4")
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    data = (sample_videos_dir / "carphone_pristine.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])  # index at the end: nothing readable
    ff = ffmpeg_exe()
    # Index at the front, then cut: the first half of the frames stays readable.
    subprocess.run([ff, "-v", "error", "-y", "-i", str(d / "good.mp4"), "-c", "copy", "-movflags", "+faststart",
                    str(d / "fs.mp4")], check=True)
    fs = (d / "fs.mp4").read_bytes()
    (d / "halfcut.mp4").write_bytes(fs[: len(fs) // 2])
    (d / "fs.mp4").unlink()
    subprocess.run([ff, "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=160x120:d=1:r=25", "-vf",
                    "noise=alls=100:allf=t", "-pix_fmt", "yuv420p", str(d / "noise.mp4")], check=True)
    return d


def _list_manifest(path, root, videos, frames=4):
    doc = {"version": 1, "defaults": {"frames": {"train": frames, "test": frames}, "crop": {"size": CROP}},
           "datasets": {"mine": {"kind": "list", "root": str(root),
                                 "videos": [{"path": v, "label": 0} for v in videos]}}}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_sample_end_to_end(tmp_path, repo_root):
    m = load_manifest(repo_root / "data_manifest.yaml")
    out = {}
    for split in ("train", "test"):
        items = [type(it)(**{**it.__dict__, "n_frames": 6}) for it in list_videos(m, "sample", split)]
        d = tmp_path / split
        s = run_extract(items, d, "sample", split, _cfg(), shard_bytes=1, workers=0)
        assert s.n_videos == 2 and not s.failed_shards
        run_landmarks(d, LandmarkConfig(), workers=0)
        assert verify_split(d) == []
        out[split] = d
    frames = {}
    for split, d in out.items():
        idx = load_index(d)
        assert idx["dataset"] == "sample" and all(s["landmarks"] for s in idx["shards"])
        for p in shard_paths(d):
            r = ShardReader(p)
            row = r.videos[0]
            frames[(split, row["id"])] = set(r.frame_index.tolist())
            if row["id"] == "carphone_pristine":
                assert len(r) == 6 and len(r.no_face) == 0  # small face found in every sampled frame
                assert r.landmark_ok.sum() >= 5
                # landmarks lie inside the face crop, in crop pixels
                lm = np.stack([r.landmarks(i) for i in np.flatnonzero(r.landmark_ok)])
                assert lm.min() > 0 and lm.max() < CROP
            assert r.face(0).shape == (CROP, CROP, 3) and r.attrs["crop_size"] == CROP
            assert r.attrs["detector"] == "retinaface_mobilenet0.25" and len(r.attrs["detector_weights_sha256"]) == 64
            assert r.attrs["landmark_detector"] == "dlib_hog luma@144 upsample=0"
            # every crop box is square and 1.25x the larger detector-box side
            cb, b = r.read("crop_boxes"), r.read("boxes")
            np.testing.assert_allclose(cb[:, 2] - cb[:, 0], cb[:, 3] - cb[:, 1])
            np.testing.assert_allclose(cb[:, 2] - cb[:, 0],
                                       np.round(1.25 * np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])), atol=1)
    for vid in ("carphone_pristine", "short_hamilton_clip"):  # train and test never share a frame
        assert not frames[("train", vid)] & frames[("test", vid)]


def test_bad_inputs_logged_and_rest_completes(tmp_path, bad_dir, capsys):
    names = ["good.mp4", "zero.mp4", "text.mp4", "cut.mp4", "halfcut.mp4", "noise.mp4", "missing.mp4"]
    m = load_manifest(_list_manifest(tmp_path / "m.yaml", bad_dir, names))
    items = list_videos(m, "mine", "train")
    d = tmp_path / "out"
    s = run_extract(items, d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    err = capsys.readouterr().out + capsys.readouterr().err
    fails = _failures(d)
    by_file = {}
    for f in fails:
        by_file.setdefault(Path(f["file"]).name, []).append(f)
    assert by_file["zero.mp4"][0]["reason"] == "empty file (0 bytes)"
    assert "not a readable video" in by_file["text.mp4"][0]["reason"]
    assert "not a readable video" in by_file["cut.mp4"][0]["reason"]
    assert "no such file" in by_file["missing.mp4"][0]["reason"]
    assert "truncated" in by_file["halfcut.mp4"][0]["reason"]
    noise = by_file["noise.mp4"]
    assert len(noise) == 4 and all(f["stage"] == "faces" and "frame_index" in f for f in noise)
    assert "good.mp4" not in by_file
    for f in fails:
        assert set(f) >= {"file", "stage", "reason", "time"}
    # one line per bad video on the console, naming the file
    for name in ("zero.mp4", "text.mp4", "cut.mp4", "missing.mp4", "noise.mp4"):
        assert any(name in line for line in err.splitlines()), name
    # the readable videos are all in the shards; the noise video is there with its frames recorded as no-face
    rows = {}
    for p in shard_paths(d):
        r = ShardReader(p)
        for v, row in enumerate(r.videos):
            rows[row["id"]] = (int((r.video == v).sum()), r.no_face[r.no_face[:, 0] == v, 1].tolist())
    assert rows["good"][0] == 4 and rows["halfcut"][0] == 4 and rows["noise"] == (0, sorted(f["frame_index"]
                                                                                            for f in noise))
    assert set(rows) == {"good", "halfcut", "noise"} and s.n_faces == 8 and not s.failed_shards
    assert verify_split(d) == []


def _run_cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          **kw)


def _shard_content(d):
    import hdf5plugin  # noqa: F401  (registers the Blosc filter the crops are compressed with)

    out = {}
    for p in sorted(Path(d).glob("*.h5")):
        with h5py.File(p, "r") as f:
            out[p.name] = {k: f[k][()] for k in ("faces", "boxes", "frame_index", "video", "no_face", "videos")}
    return out


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted(tmp_path, sample_videos_dir):
    vids = []
    for k in range(4):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / f"v{k}.mp4")
        vids.append(f"v{k}.mp4")
    man = _list_manifest(tmp_path / "m.yaml", tmp_path, vids, frames=40)
    args = ["extract-frames", "--manifest", str(man), "--dataset", "mine", "--split", "train", "--dask-workers", "0"]
    full = _run_cli(args + ["--shards-root", str(tmp_path / "full")], timeout=120)
    assert full.returncode == 0, full.stderr
    # Kill a run while its second shard is being written (a .tmp on disk), then rerun it.
    d = tmp_path / "killed" / "mine" / "train"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args, "--shards-root", str(tmp_path / "killed")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(list(d.glob(".staging/v-*.h5"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(d.glob(".staging/v-*.h5"))) >= 2 and not list(d.glob("shard-*.h5"))
    assert not (d / "index.json").exists()
    assert verify_split(d)  # an interrupted split does not pass verification
    again = _run_cli(args + ["--shards-root", str(tmp_path / "killed")], timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resume:" in again.stdout and not list(d.glob("*.tmp")) and not list(d.glob(".staging/*"))
    a, b = _shard_content(tmp_path / "full" / "mine" / "train"), _shard_content(d)
    assert a.keys() == b.keys() and len(a) == 1  # 4 small videos: one shard under the default size bound
    for name in a:
        for k in a[name]:
            np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f"{name}/{k}")
    assert load_index(d)["n_faces"] == load_index(tmp_path / "full" / "mine" / "train")["n_faces"]


def test_leftover_tmp_is_redone_and_landmarks_resume(tmp_path, sample_videos_dir):
    shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / "a.mp4")
    shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / "b.mp4")
    m = load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, ["a.mp4", "b.mp4"]))
    d = tmp_path / "out"
    d.mkdir()
    (d / "shard-00000.h5.tmp").write_bytes(b"half a shard")
    run_extract(list_videos(m, "mine", "train"), d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    assert not list(d.glob("*.tmp")) and ShardReader(d / "shard-00000.h5").videos[0]["id"] == "a"
    # landmarks for one shard only, then a full run: the done shard is kept as is
    from pipeline.tasks import landmark_shard

    landmark_shard(str(d / "shard-00000.h5"), LandmarkConfig())
    before = (d / "shard-00000.h5").stat().st_mtime_ns
    s = run_landmarks(d, LandmarkConfig(), workers=0)
    assert s.skipped == 1 and (d / "shard-00000.h5").stat().st_mtime_ns == before
    assert all(x["landmarks"] for x in load_index(d)["shards"]) and verify_split(d) == []


@pytest.mark.slow
def test_cli_adhoc_verify_inspect_and_errors(tmp_path, sample_videos_dir):
    vids = tmp_path / "videos"
    vids.mkdir()
    shutil.copy(sample_videos_dir / "carphone_pristine.mp4", vids / "clip.mp4")
    out = tmp_path / "mine"
    r = _run_cli(["extract-frames", "--input", str(vids / "*.mp4"), "--label", "fake", "--shards-root", str(out),
                  "--frames", "3", "--crop-size", "96", "--dask-workers", "0", "--decode-threads", "2"])
    assert r.returncode == 0, r.stderr
    r = _run_cli(["cache-landmarks", "--shards-root", str(out), "--dask-workers", "0"])
    assert r.returncode == 0, r.stderr
    row = ShardReader(out / "shard-00000.h5").videos[0]
    assert row["label"] == 1 and row["id"] == "clip" and row["dataset"] == "adhoc"
    assert _run_cli(["verify", str(out)]).returncode == 0
    r = _run_cli(["inspect", str(out), "--png", str(tmp_path / "sheet.png")])
    assert r.returncode == 0 and "3 faces" in r.stdout and (tmp_path / "sheet.png").stat().st_size > 1000
    # wrong usage fails before any work, naming what is wrong
    r = _run_cli(["extract-frames", "--input", str(vids / "*.mp4"), "--shards-root", str(tmp_path / "x")])
    assert r.returncode == 2 and "--label" in r.stderr and not (tmp_path / "x").exists()
    r = _run_cli(["extract-frames", "--dataset", "nosuch", "--shards-root", str(tmp_path / "x")])
    assert r.returncode == 2 and "datasets.nosuch" in r.stderr
    r = _run_cli(["extract-frames", "--dataset", "ffpp", "--shards-root", str(tmp_path / "x")],
                 env={**os.environ, "FFPP_ROOT": str(tmp_path / "absent")})
    assert r.returncode == 2 and "datasets.ffpp.root" in r.stderr and not (tmp_path / "x").exists()
    r = _run_cli(["extract-frames", "--input", str(vids / "*.mp4"), "--label", "real", "--detector", "resnet50",
                  "--detector-weights", str(tmp_path / "none.pth"), "--shards-root", str(tmp_path / "x")])
    assert r.returncode == 2 and "none.pth" in r.stderr
    r = _run_cli(["cache-landmarks", "--shards-root", str(tmp_path / "empty")])
    assert r.returncode == 2 and "index.json" in r.stderr
    help_text = _run_cli(["extract-frames", "--help"]).stdout
    for opt in ("--dataset", "--input", "--label", "--dask-workers", "--scheduler", "--detector-weights", "--frames",
                "--decode-threads"):
        assert opt in help_text


@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client

    from pipeline.cluster import local_cluster

    with local_cluster(2, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_dask_local_cluster_two_workers(tmp_path, sample_videos_dir, dask_client):
    # Workers start without Dask's MALLOC_TRIM_THRESHOLD_ (it costs this pipeline 18 % CPU, see local_cluster).
    env = dask_client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert list(env.values()) == [None, None]
    for k in range(2):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / f"v{k}.mp4")
    m = load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, ["v0.mp4", "v1.mp4", "nope.mp4"], frames=3))
    d = tmp_path / "out"
    s = run_extract(list_videos(m, "mine", "train"), d, "mine", "train", _cfg(), shard_bytes=1,
                    client=dask_client)
    assert s.n_videos == 2 and s.n_faces == 6 and len(s.shards) == 3
    assert [f["stage"] for f in _failures(d)] == ["decode"]
    s = run_landmarks(d, LandmarkConfig(), client=dask_client)
    assert all(x["landmarks"] for x in load_index(d)["shards"]) and verify_split(d) == []


@pytest.mark.slow
def test_dask_killed_worker_resumes_to_same_result(tmp_path, sample_videos_dir, dask_client):
    """SIGKILL the worker process that is writing a video's file: its task is redone elsewhere, nothing is lost."""
    import threading

    import psutil

    names = []
    for k in range(4):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / f"v{k}.mp4")
        names.append(f"v{k}.mp4")
    items = list_videos(load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, names, frames=24)), "mine",
                        "train")
    run_extract(items, tmp_path / "ref", "mine", "train", _cfg(), shard_bytes=1, workers=0)
    d = tmp_path / "out"
    pids = set(dask_client.run(os.getpid).values())
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("s", run_extract(
        items, d, "mine", "train", _cfg(), shard_bytes=1, client=dask_client)))
    t.start()
    killed = None
    deadline = time.time() + 60
    while killed is None and time.time() < deadline and t.is_alive():
        for tmp in d.glob(".staging/*.tmp"):
            for pid in pids:
                try:
                    if any(f.path == str(tmp) for f in psutil.Process(pid).open_files()):
                        os.kill(pid, signal.SIGKILL)
                        killed = (pid, tmp.name)
                        break
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            if killed:
                break
        time.sleep(0.005)
    t.join(120)
    assert killed is not None, "no worker was caught writing a video's file"
    s = box["s"]
    assert len(s.shards) == 4 and not s.failed_shards and not list(d.glob("*.tmp")) and not list(d.glob(".staging/*"))
    a, b = _shard_content(tmp_path / "ref"), _shard_content(d)
    assert a.keys() == b.keys()
    for name in a:
        for k in a[name]:
            np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f"{name}/{k} after killing {killed}")


def test_on_error_raise_stops_at_first_bad_video(tmp_path, bad_dir):
    from pipeline.tasks import PipelineError

    m = load_manifest(_list_manifest(tmp_path / "m.yaml", bad_dir, ["good.mp4", "zero.mp4", "noise.mp4"]))
    with pytest.raises(PipelineError, match=r"zero.mp4: empty file"):
        run_extract(list_videos(m, "mine", "train"), tmp_path / "o", "mine", "train", _cfg(on_error="raise"),
                    shard_bytes=1, workers=0)
    assert not (tmp_path / "o" / "index.json").exists() and not (tmp_path / "o" / "shard-00000.h5").exists()


def _held(d):
    """video id -> shard names holding it, over the split's finished shards."""
    out = {}
    for p in sorted(Path(d).glob("shard-*.h5")):
        for v in ShardReader(p).videos:
            out.setdefault(v["id"], []).append(p.name)
    return out


def test_rerun_with_a_new_video_puts_it_in_a_new_shard(tmp_path, sample_videos_dir):
    for k in ("v0", "v1", "v0b"):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / f"{k}.mp4")
    d = tmp_path / "out"
    m = load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, ["v0.mp4", "v1.mp4"], frames=2))
    run_extract(list_videos(m, "mine", "train"), d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    before = {p.name: p.stat().st_mtime_ns for p in d.glob("*.h5")}
    # the new video sorts between the old ones: shard names by position would shift every later video
    m = load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, ["v0.mp4", "v0b.mp4", "v1.mp4"], frames=2))
    s = run_extract(list_videos(m, "mine", "train"), d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    assert _held(d) == {"v0": ["shard-00000.h5"], "v1": ["shard-00001.h5"], "v0b": ["shard-00002.h5"]}
    assert s.skipped == 2 and {p: (d / p).stat().st_mtime_ns for p in before} == before
    assert verify_split(d) == [] and load_index(d)["shards"][2]["videos"] == ["v0b"]
    # verify sees one video in two shards
    shutil.copy(d / "shard-00000.h5", d / "shard-00009.h5")
    from pipeline.shard_index import write_index

    write_index(d, "mine", "train", extra={"plan": load_index(d)["plan"]})
    assert any("'v0' is also in shard-00000.h5" in p for p in verify_split(d))


def test_rerun_with_other_settings_or_videos_stops_before_any_work(tmp_path, sample_videos_dir):
    from pipeline.tasks import PipelineError

    for k in ("real", "fake"):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / f"{k}.mp4")
    d = tmp_path / "out"
    real = list_videos(load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, ["real.mp4"], frames=2)),
                       "mine", "train")
    run_extract(real, d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir())
    with pytest.raises(PipelineError, match=r"other settings \(crop_size 128 -> 96\).*--overwrite.*--out"):
        run_extract(real, d, "mine", "train", ExtractConfig(crop_size=96), shard_bytes=1, workers=0)
    more = [type(it)(**{**it.__dict__, "n_frames": 3}) for it in real]
    with pytest.raises(PipelineError, match=r"frames \[2\] -> \[3\]"):
        run_extract(more, d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    fake = list_videos(load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, ["fake.mp4"], frames=2)),
                       "mine", "train")
    with pytest.raises(PipelineError, match=r"1 videos in the shards are not in this run's input \(e.g. 'real'"):
        run_extract(fake, d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    os.utime(tmp_path / "real.mp4", (1, 1))
    with pytest.raises(PipelineError, match=r"changed on disk.*'real': mtime"):
        run_extract(real, d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir()) == before  # nothing touched
    s = run_extract(fake, d, "mine", "train", _cfg(), shard_bytes=1, workers=0, overwrite=True)
    assert s.n_videos == 1 and _held(d) == {"fake": ["shard-00000.h5"]} and verify_split(d) == []


def test_second_run_into_a_locked_split_is_refused_and_a_stale_lock_taken_over(tmp_path, sample_videos_dir):
    shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / "clip.mp4")
    d = tmp_path / "out"
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"}  # as on NFS / Lustre: HDF5's own locks are off
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pipeline.lock import split_lock\n"
                               "with split_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
                               str(d)], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["extract-frames", "--input", str(tmp_path / "clip.mp4"), "--label", "real", "--shards-root", str(d),
                "--frames", "2", "--crop-size", "64", "--dask-workers", "0"]
        r = _run_cli(args, env=env)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"pid {holder.pid}" in r.stderr and "another run is writing this split" in r.stderr
        assert not list(d.glob("*.h5*"))
    finally:
        holder.kill()  # kill -9: its holder note stays behind, the kernel frees the lock itself
        holder.wait()
    r = _run_cli(args, env=env)
    assert r.returncode == 0, r.stderr
    assert f"stale lock of host {os.uname().nodename} pid {holder.pid}" in r.stdout and verify_split(d) == []


def test_corrupt_shard_logged_by_landmarks_and_redone_by_extract(tmp_path, sample_videos_dir):
    from tests.shard_faults import flip_chunk_bytes

    names = []
    for k in range(3):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / f"v{k}.mp4")
        names.append(f"v{k}.mp4")
    items = list_videos(load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, names, frames=2)), "mine", "train")
    d = tmp_path / "out"
    run_extract(items, d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    flip_chunk_bytes(d / "shard-00001.h5", "faces", 1)
    s = run_landmarks(d, LandmarkConfig(), workers=0)
    assert s.failed_shards == ["shard-00001.h5"]
    assert [ShardReader(p).has_landmarks for p in sorted(d.glob("*.h5"))] == [True, False, True]
    row = [f for f in _failures(d) if "shard-00001.h5" in f["file"]]
    assert len(row) == 1 and "dataset 'faces' rows 0-1 unreadable" in row[0]["reason"], row
    before = (d / "shard-00000.h5").stat().st_mtime_ns
    run_extract(items, d, "mine", "train", _cfg(), shard_bytes=1, workers=0)  # redoes the corrupt shard
    assert (d / "shard-00000.h5").stat().st_mtime_ns == before and verify_split(d) == []
    assert _held(d) == {"v0": ["shard-00000.h5"], "v1": ["shard-00001.h5"], "v2": ["shard-00002.h5"]}


def test_image_folder_bad_and_truncated_jpeg_skip_their_frame_only(tmp_path, sample_videos_dir):
    import cv2

    from pipeline.manifest import VideoItem
    from pipeline.video import sample_frames

    folder = tmp_path / "clip"
    folder.mkdir()
    _, frames = sample_frames(sample_videos_dir / "carphone_pristine.mp4", 4)
    for k, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{k}.jpg"), f[:, :, ::-1])
    (folder / "1.jpg").write_bytes(b"not a jpeg at all")
    data = (folder / "2.jpg").read_bytes()
    (folder / "2.jpg").write_bytes(data[: len(data) * 2 // 3])  # OpenCV would decode it with grey rows
    item = VideoItem(id="clip", path=str(folder), rel_path="clip", label=0, split="train", dataset="mine", n_frames=4)
    d = tmp_path / "out"
    run_extract([item], d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    bad = sorted((Path(f["file"]).name, f["frame_index"], f["reason"]) for f in _failures(d) if f["stage"] == "decode")
    assert bad == [("1.jpg", 1, "not a readable image"), ("2.jpg", 2, "truncated JPEG (no end-of-image marker)")]
    assert sorted(ShardReader(d / "shard-00000.h5").frame_index.tolist()) == [0, 3]


def test_run_where_every_input_fails_exits_non_zero(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "empty.mp4").write_bytes(b"")  # exists, cannot be read (a missing --input stops up front)
    r = _run_cli(["extract-frames", "--input", str(tmp_path / "empty.mp4"), "--label", "real", "--shards-root", str(out),
                  "--dask-workers", "0"])
    assert r.returncode == 1 and "none of the 1 videos of this run could be read" in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) == 1
    v = _run_cli(["verify", str(out)])
    assert v.returncode == 1 and "holds no video" in v.stderr


def test_dask_on_error_raise_does_not_retry_the_failing_shard(tmp_path, bad_dir, dask_client, monkeypatch):
    """A retry would decode the shard's good videos a second time only to fail again."""
    from pipeline.tasks import PipelineError

    retries = []
    submit = dask_client.submit
    monkeypatch.setattr(dask_client, "submit", lambda *a, **kw: retries.append(kw.get("retries")) or submit(*a, **kw))
    m = load_manifest(_list_manifest(tmp_path / "m.yaml", bad_dir, ["zero.mp4"]))
    with pytest.raises(PipelineError, match=r"zero.mp4: empty file"):
        run_extract(list_videos(m, "mine", "train"), tmp_path / "o", "mine", "train", _cfg(on_error="raise"),
                    shard_bytes=1, client=dask_client)
    assert retries == [0]


def test_a_user_error_is_one_line_and_anything_else_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    from pipeline import cli
    from pipeline.shards import ShardError

    def bad_shard(*a, **kw):
        raise ShardError("x/shard-00000.h5: dataset 'faces' row 3: checksum mismatch\nsecond line")

    def boom(*a, **kw):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(sys, "argv", ["pipeline", "verify", str(tmp_path)])
    monkeypatch.delenv("LAANET_DEBUG", raising=False)
    monkeypatch.setattr("pipeline.verify.verify_split", bad_shard)
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.strip() == ("error: x/shard-00000.h5: dataset 'faces' row 3: checksum mismatch "
                                                 "second line")
    monkeypatch.setattr("pipeline.verify.verify_split", boom)  # a bug, not the user's input: the traceback stays
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main()
    monkeypatch.setattr("pipeline.verify.verify_split", bad_shard)
    monkeypatch.setenv("LAANET_DEBUG", "1")
    with pytest.raises(ShardError):
        cli.main()


# ---------------------------------------------------------------------------------------------------------
# One task per video: commits that never replace, size-bounded packing, per-video resume, progress, a lost
# scheduler.


def _copies(tmp_path, sample_videos_dir, n, frames=2):
    names = []
    for k in range(n):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / f"v{k}.mp4")
        names.append(f"v{k}.mp4")
    return list_videos(load_manifest(_list_manifest(tmp_path / "m.yaml", tmp_path, names, frames=frames)), "mine",
                       "train")


def _job(d, item, cfg):
    from pipeline.resume import staged_path, video_record
    from pipeline.tasks import VideoJob, extract_settings

    cfg.settings = json.dumps(extract_settings(cfg, [item]), sort_keys=True)
    return VideoJob(item, video_record(item), str(staged_path(d, item.id)))


def test_leftover_temporaries_of_the_index_failures_log_and_lock_are_reported_then_removed(tmp_path,
                                                                                           sample_videos_dir):
    """A run killed inside pipeline.files.atomic_write leaves ``<name>.<pid>.tmp``: verify reports it, and the
    next run of either stage (holding the split's lock) removes it."""
    d = tmp_path / "out"
    run_extract(_copies(tmp_path, sample_videos_dir, 1), d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    left = [d / "index.json.4242.tmp", d / "failures.jsonl.4242.tmp", d / "pipeline.lock.json.4242.tmp"]
    for p in left:
        p.write_text('{"half')
    assert sorted(p.split(": ")[0] for p in verify_split(d)) == sorted(map(str, left))
    run_landmarks(d, LandmarkConfig(), workers=0)
    assert not [p for p in left if p.exists()] and verify_split(d) == []


def test_late_duplicate_attempt_cannot_replace_the_committed_video(tmp_path, sample_videos_dir, monkeypatch):
    """Attempt A starts, stalls (a frozen worker); attempt B of the same video runs and commits; A wakes up and
    finishes: B's file stays, byte for byte, and A's temporary file is gone."""
    from pipeline import tasks as runner

    item = _copies(tmp_path, sample_videos_dir, 1)[0]
    d = tmp_path / "out"
    cfg = _cfg()
    job = _job(d, item, cfg)
    real = runner.extract_video
    calls = []

    def stalls_first(*a, **kw):
        v = real(*a, **kw)
        calls.append(1)
        if len(calls) == 1:  # A is frozen here; B runs from start to commit meanwhile
            b = runner.extract_one(job, cfg)
            assert not b.duplicate and Path(job.staged).exists()
            box["committed"] = Path(job.staged).read_bytes()
            v.faces = 255 - v.faces  # A's crops differ, so a replaced file would show
        return v

    box = {}
    monkeypatch.setattr(runner, "extract_video", stalls_first)
    a = runner.extract_one(job, cfg)
    assert a.duplicate and len(calls) == 2
    assert Path(job.staged).read_bytes() == box["committed"]
    assert [p.name for p in Path(job.staged).parent.iterdir()] == [Path(job.staged).name]  # no .tmp left
    # a third attempt that starts after the commit does no work at all
    third = runner.extract_one(job, cfg)
    assert third.skipped and third.n_videos == 1 and third.n_faces == a.n_faces and len(calls) == 2


def _flaky_task(marker: str, progress=None):
    """Reports progress for its video, then fails on its first attempt only (Dask retries it)."""
    from pipeline.tasks import TaskResult

    progress({"key": "clip", "videos": 1, "frames": 3, "faces": 3})
    if not os.path.exists(marker):
        Path(marker).write_text("failed once")
        raise RuntimeError("first attempt fails")
    return TaskResult(file="clip.mp4", n_videos=1, n_frames=3, n_faces=3)


def test_progress_counts_a_retried_video_once(tmp_path, dask_client):
    from pipeline.progress import ProgressBar as _ProgressBar
    from pipeline.runner import _run_tasks, _Task

    bar = _ProgressBar(1, "test")
    results, homeless, failed = _run_tasks(_flaky_task, [_Task("clip", "clip.mp4", (str(tmp_path / "m"),))], bar,
                                           dask_client, "skip", "task")
    time.sleep(0.5)  # events of both attempts have arrived by now
    assert (tmp_path / "m").exists() and len(results) == 1 and not failed and not homeless
    assert bar.bar.n == 1 and bar.frames == 3 and bar.faces == 3
    bar.close()


def test_two_runs_on_one_scheduler_use_their_own_progress_topics(tmp_path, dask_client):
    from pipeline.progress import PROGRESS_TOPIC_PREFIX
    from pipeline.progress import ProgressBar as _ProgressBar
    from pipeline.runner import _run_tasks, _Task

    topics = []
    subscribe = dask_client.subscribe_topic

    def spy(topic, handler):
        topics.append(topic)
        return subscribe(topic, handler)

    dask_client.subscribe_topic = spy
    try:
        for k in range(2):
            (tmp_path / f"m{k}").write_text("no failure")
            bar = _ProgressBar(1, "test")
            _run_tasks(_flaky_task, [_Task("clip", "clip.mp4", (str(tmp_path / f"m{k}"),))], bar, dask_client,
                       "skip", "task")
            bar.close()
    finally:
        dask_client.subscribe_topic = subscribe
    assert len(set(topics)) == 2 and all(t.startswith(PROGRESS_TOPIC_PREFIX) for t in topics)


def test_packing_respects_the_size_bound_and_plain_h5py_reads_the_shards(tmp_path, sample_videos_dir):
    import hdf5plugin  # noqa: F401  (the crops' Blosc filter)

    items = _copies(tmp_path, sample_videos_dir, 5)
    one = tmp_path / "one"
    run_extract(items, one, "mine", "train", _cfg(), shard_bytes=1, workers=0)  # a video over the bound: alone
    sizes = [p.stat().st_size for p in sorted(one.glob("shard-*.h5"))]
    assert len(sizes) == 5
    bound = int(2.5 * max(sizes))
    d = tmp_path / "packed"
    s = run_extract(items, d, "mine", "train", _cfg(), shard_bytes=bound, workers=0)
    shards = sorted(d.glob("shard-*.h5"))
    assert [p.name for p in shards] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"] == s.shards
    assert all(p.stat().st_size <= bound for p in shards)
    assert not list(d.glob(".staging/*")) and verify_split(d) == []
    ids, faces = [], []
    for p in shards:
        with h5py.File(p, "r") as f:
            ids += [json.loads(r)["id"] for r in f["videos"][()]]
            faces.append(f["faces"][()])
            assert f["faces"].chunks[0] == 1 and f["video"][()].max() == len(f["videos"]) - 1
    assert ids == ["v0", "v1", "v2", "v3", "v4"]  # input order
    ref = np.concatenate([h5py.File(p, "r")["faces"][()] for p in sorted(one.glob("shard-*.h5"))])
    np.testing.assert_array_equal(np.concatenate(faces), ref)


def test_resume_per_video_after_an_interruption(tmp_path, sample_videos_dir, monkeypatch):
    """Two videos packed, one staged, one staged again after its shard was committed (packing interrupted),
    an orphan temporary: the rerun extracts only the missing video and every video ends in one shard."""
    from pipeline import tasks as runner

    items = _copies(tmp_path, sample_videos_dir, 4)
    d = tmp_path / "out"
    run_extract(items[:2], d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    cfg = _cfg()
    for it in (items[0], items[2]):
        runner.extract_one(_job(d, it, cfg), cfg)
    orphan = d / ".staging" / "v-0123.h5.host-1-dead.tmp"
    orphan.write_bytes(b"half a video")
    calls = []
    real = runner.extract_video
    monkeypatch.setattr(runner, "extract_video", lambda it, *a, **kw: calls.append(it.id) or real(it, *a, **kw))
    s = run_extract(items, d, "mine", "train", _cfg(), shard_bytes=1, workers=0)
    assert calls == ["v3"] and s.skipped == 3 and s.n_planned == 1
    assert _held(d) == {"v0": ["shard-00000.h5"], "v1": ["shard-00001.h5"], "v2": ["shard-00002.h5"],
                        "v3": ["shard-00003.h5"]}
    assert not orphan.exists() and not list(d.glob(".staging/*")) and verify_split(d) == []


def test_failure_rows_survive_reruns(tmp_path, bad_dir):
    """A failed video's rows live in its committed file: a worker that finished while its client died, and
    any number of reruns, leave exactly one copy of each row in failures.jsonl."""
    from pipeline import tasks as runner

    items = list_videos(load_manifest(_list_manifest(tmp_path / "m.yaml", bad_dir, ["good.mp4", "zero.mp4",
                                                                                    "noise.mp4"])), "mine", "train")
    d = tmp_path / "out"
    cfg = _cfg()
    runner.extract_one(_job(d, items[1], cfg), cfg)  # zero.mp4 committed; its client never saw the result
    for _ in range(2):
        run_extract(items, d, "mine", "train", _cfg(), workers=0)
        rows = _failures(d)
        assert sorted(Path(r["file"]).name for r in rows if r["stage"] == "decode") == ["zero.mp4"]
        assert len([r for r in rows if Path(r["file"]).name == "noise.mp4"]) == 4
        assert verify_split(d) == []


def test_lost_scheduler_is_one_line_and_the_rerun_completes(tmp_path, sample_videos_dir, monkeypatch, capsys):
    """The connection to the scheduler closes during as_completed: one PipelineError line, nothing packed;
    the rerun keeps what was committed and finishes."""
    import distributed
    from distributed.comm.core import CommClosedError

    from pipeline.tasks import PipelineError

    items = _copies(tmp_path, sample_videos_dir, 3)
    out = tmp_path / "out"

    def closed(futures, *a, **kw):
        raise CommClosedError("in <TCP (closed) ConnectionPool.gather local=tcp://127.0.0.1:1234>: Stream is closed")

    monkeypatch.setattr(distributed, "as_completed", closed)
    with pytest.raises(PipelineError) as e:
        run_extract(items, out, "mine", "train", _cfg(), workers=1)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("lost the Dask scheduler (CommClosedError") and "rerun" in msg
    assert not list(out.glob("shard-*.h5")) and not (out / "index.json").exists()
    monkeypatch.undo()
    s = run_extract(items, out, "mine", "train", _cfg(), workers=0)
    assert s.n_videos == 3 and verify_split(out) == []


def test_a_staged_file_of_another_plan_is_redone_not_kept(tmp_path, sample_videos_dir):
    """A worker of an earlier run (other settings) that outlived its client commits after this run planned:
    this run's task redoes the video instead of keeping the stale file."""
    from pipeline import tasks as runner

    item = _copies(tmp_path, sample_videos_dir, 1)[0]
    d = tmp_path / "out"
    old = ExtractConfig(crop_size=64, detector=DetectorConfig(batch_size=4))
    runner.extract_one(_job(d, item, old), old)
    cfg = _cfg()
    job = _job(d, item, cfg)
    r = runner.extract_one(job, cfg)
    assert not r.skipped and not r.duplicate and ShardReader(job.staged).crop_size == CROP


@pytest.mark.slow
def test_killed_scheduler_is_one_line_and_the_rerun_completes(tmp_path, sample_videos_dir):
    """The reviewer's case: `dask scheduler` killed mid-run. One error line (no traceback), exit 2; the rerun
    keeps the committed videos and finishes."""
    vids = tmp_path / "videos"
    vids.mkdir()
    for k in range(8):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", vids / f"c{k}.mp4")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}
    sched_file = tmp_path / "scheduler.json"
    dask_bin = Path(sys.executable).parent / "dask"
    sched = subprocess.Popen([str(dask_bin), "scheduler", "--scheduler-file", str(sched_file), "--port", "0",
                              "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        worker = subprocess.Popen([str(dask_bin), "worker", address, "--nthreads", "1", "--no-dashboard"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = tmp_path / "out"
        args = ["extract-frames", "--input", str(vids / "*.mp4"), "--label", "real", "--shards-root", str(out), "--frames",
                "60"]
        run = subprocess.Popen([sys.executable, "-m", "pipeline", *args, "--scheduler", address], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not list(out.glob(".staging/v-*.h5")) and time.time() < deadline and run.poll() is None:
            time.sleep(0.05)
        sched.kill()
        _, err = run.communicate(timeout=120)
    finally:
        for p in (sched, worker):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert run.returncode == 1, err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("extract-frames")]
    assert len(lines) == 1 and lines[0].startswith("error: lost the Dask scheduler"), err
    assert not list(out.glob("shard-*.h5"))
    again = _run_cli(args + ["--dask-workers", "0"], timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resume:" in again.stdout and verify_split(out) == [] and load_index(out)["n_videos"] == 8


def test_cli_shard_size_is_checked_before_any_work(tmp_path):
    r = _run_cli(["extract-frames", "--input", str(tmp_path / "*.mp4"), "--label", "real", "--shards-root",
                  str(tmp_path / "x"), "--shard-size", "lots"])
    assert r.returncode == 2 and "--shard-size: not a size: 'lots'" in r.stderr and not (tmp_path / "x").exists()


def test_a_shard_that_cannot_be_packed_fails_the_run_and_the_rerun_packs_it(tmp_path, sample_videos_dir,
                                                                            monkeypatch):
    from pipeline import packing as runner
    from pipeline.shards import ShardError

    items = _copies(tmp_path, sample_videos_dir, 2)
    d = tmp_path / "out"

    def no_space(group, path):
        raise ShardError(f"{path}: No space left on device")

    monkeypatch.setattr(runner, "pack_shard", no_space)
    s = run_extract(items, d, "mine", "train", _cfg(), workers=0)
    assert sorted(s.failed_shards) == ["v0", "v1"] and not s.shards  # the CLI exits 1 on failed_shards
    assert len(list(d.glob(".staging/v-*.h5"))) == 2
    assert any(r["stage"] == "pack" and "No space left" in r["reason"] for r in _failures(d))
    monkeypatch.undo()
    s = run_extract(items, d, "mine", "train", _cfg(), workers=0)
    assert not s.failed_shards and len(s.shards) == 1 and load_index(d)["n_videos"] == 2
    assert not [r for r in _failures(d) if r["stage"] == "pack"]  # solved problems leave the log


def test_a_single_pass_split_made_before_detection_levels_resumes_with_face_px_0(tmp_path, sample_videos_dir):
    """Splits made before `face_px` existed recorded no such key; --face-px 0 is that single pass again, and
    a rerun with the new default names the key it lacks instead of an empty difference."""
    from pipeline.resume import _diff
    from pipeline.tasks import extract_settings

    items = _copies(tmp_path, sample_videos_dir, 1)
    single = ExtractConfig(crop_size=CROP, detector=DetectorConfig(batch_size=4, face_px=None))
    assert "face_px" not in extract_settings(single, items) and "min_side" not in extract_settings(single, items)
    assert extract_settings(_cfg(), items)["face_px"] == 64
    assert _diff({"a": 1}, {"a": 1, "face_px": None}) == "face_px (absent) -> None"


def test_landmark_parts_spread_one_shard_over_tasks_and_a_failed_part_leaves_it_unwritten(tmp_path,
                                                                                         sample_videos_dir,
                                                                                         monkeypatch):
    """A size-bounded shard is several landmark tasks (part_rows crops each): the joined result equals one
    pass over the shard, and a shard with a failed part is not written (the rerun completes it)."""
    from pipeline import runner

    items = _copies(tmp_path, sample_videos_dir, 3, frames=4)
    d, ref = tmp_path / "parts", tmp_path / "whole"
    for out in (d, ref):
        run_extract(items, out, "mine", "train", _cfg(), workers=0)  # one shard of 12 crops
    run_landmarks(ref, LandmarkConfig(), workers=0)
    calls = []
    real_part = runner.landmark_part

    def flaky(shard, start, stop, cfg, progress=None):
        calls.append((start, stop))
        if start == 5 and len(calls) <= 3:
            raise RuntimeError("worker lost")
        return real_part(shard, start, stop, cfg, progress)

    monkeypatch.setattr(runner, "landmark_part", flaky)
    s = run_landmarks(d, LandmarkConfig(part_rows=5), workers=0)
    assert calls == [(0, 5), (5, 10), (10, 12)] and s.failed_shards == ["shard-00000.h5"]
    assert not ShardReader(d / "shard-00000.h5").has_landmarks
    s = run_landmarks(d, LandmarkConfig(part_rows=5), workers=0)
    assert not s.failed_shards and verify_split(d) == []
    a, b = ShardReader(d / "shard-00000.h5"), ShardReader(ref / "shard-00000.h5")
    np.testing.assert_array_equal(a.read("landmarks"), b.read("landmarks"))
    np.testing.assert_array_equal(a.read("landmark_ok"), b.read("landmark_ok"))
    assert [r for r in _failures(d) if r["stage"] == "landmarks"] == \
        [r for r in _failures(ref) if r["stage"] == "landmarks"]


def test_on_error_is_a_handler():
    from pipeline.tasks import ERROR_POLICIES, PipelineError, error_policy

    skip, stop = error_policy("skip"), error_policy("raise")
    assert skip("a.mp4: unreadable") is None and skip.retries == 1 and error_policy(skip) is skip
    with pytest.raises(PipelineError, match="a.mp4: unreadable"):
        stop("a.mp4: unreadable")
    assert stop.retries == 0 and set(ERROR_POLICIES) == {"skip", "raise"}
    with pytest.raises(ValueError, match="on_error must be one of skip, raise"):
        error_policy("ignore")


def test_landmark_stage_keeps_a_truncated_shard_listed_so_readers_refuse_it(tmp_path):
    """Fault matrix: `truncate -s 50% shard; cache-landmarks` dropped the shard from index.json, after which training
    and evaluation used 2 of 4 videos without a word. The shard stays listed; the stage fails; readers refuse it."""
    from model.data.datasets import EvalDataset
    from pipeline.runner import run_landmarks
    from pipeline.shard_index import write_index
    from pipeline.shard_writer import write_shard
    from pipeline.shards import ShardError, load_index
    from pipeline.tasks import LandmarkConfig

    split = tmp_path / "toy" / "test"
    rng = np.random.default_rng(0)
    for k in range(2):
        write_shard(split / f"shard-0000{k}.h5", rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8),
                    videos=[{"id": f"v{k}{j}", "label": 0} for j in range(2)], video=np.repeat(np.arange(2), 2))
    write_index(split, "toy", "test")
    victim = split / "shard-00001.h5"
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    summary = run_landmarks(split, LandmarkConfig(), workers=0)
    assert summary.failed_shards == ["shard-00001.h5"]
    index = load_index(split)
    assert [s["file"] for s in index["shards"]] == ["shard-00000.h5", "shard-00001.h5"] and index["n_videos"] == 4
    with pytest.raises(ShardError, match="shard-00001.h5"):
        EvalDataset([str(split)], 64)


def test_a_dangling_symlink_in_an_input_folder_is_a_failure_row_not_silence(tmp_path, sample_videos_dir, capsys):
    """Fault matrix: a dangling symlink in an input folder was skipped without a line or a failures row."""
    from pipeline.adhoc import adhoc_items
    from pipeline.shards import FAILURES_NAME

    mine = tmp_path / "mine" / "real"
    mine.mkdir(parents=True)
    shutil.copy(sample_videos_dir / "carphone_pristine.mp4", mine / "a.mp4")
    (mine / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")
    items = adhoc_items(str(tmp_path / "mine"), None, 2)
    assert sorted(Path(it.path).name for it in items) == ["a.mp4", "gone.mp4"]
    out = tmp_path / "out"
    summary = run_extract(items, out, "adhoc", "test", _cfg(), workers=0)
    assert summary.n_videos == 1
    rows = [json.loads(line) for line in (out / FAILURES_NAME).read_text().splitlines()]
    assert any(r["file"].endswith("gone.mp4") for r in rows), rows
    assert "gone.mp4" in capsys.readouterr().out


def test_fewer_frames_than_requested_and_tiny_faces_are_warned_about(tmp_path, sample_videos_dir, capsys):
    """Fault matrix: a 1-frame video gave 1 crop of 8 requested without a line; faces far below the detector's
    useful size passed without a warning. Each is now a console line and a failures row."""
    from pipeline.extract import MIN_FACE_PX, _small_face_warning
    from pipeline.manifest import VideoItem
    from pipeline.shards import FAILURES_NAME

    one = tmp_path / "in" / "one.mp4"
    one.parent.mkdir()
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(sample_videos_dir / "carphone_pristine.mp4"),
                    "-frames:v", "1", str(one)], check=True)
    items = [VideoItem(id="one", path=str(one), rel_path="one.mp4", label=0, split="test", dataset="adhoc",
                       method="original", n_frames=8)]
    run_extract(items, tmp_path / "out", "adhoc", "test", _cfg(), workers=0)
    rows = [json.loads(line) for line in (tmp_path / "out" / FAILURES_NAME).read_text().splitlines()]
    assert any(r["stage"] == "frames" and r["reason"].startswith("warning: 1 of the 8 requested frames")
               for r in rows), rows
    assert "1 of the 8 requested frames" in capsys.readouterr().out
    (row,) = _small_face_warning("v.mp4", [np.array([10, 10, 27, 30]), np.array([0, 0, 200, 220])])
    assert row["stage"] == "faces" and f"1 of 2 faces are smaller than {MIN_FACE_PX} px (smallest 20 px)" in row["reason"]
    assert _small_face_warning("v.mp4", [np.array([0, 0, 200, 220])]) == []


def test_a_wrong_input_path_fails_up_front_naming_it(tmp_path):
    """Fault matrix: a wrong --input path said "no folder says real or fake" (--label-from-folder) or wrote an empty
    split and exited 1 (--label), where a glob that matches nothing failed up front."""
    from pipeline.adhoc import adhoc_items
    from pipeline.manifest import ManifestError

    for label in (None, 0):
        with pytest.raises(ManifestError, match=r"--input '.*nowhere/clips': no such file or folder"):
            adhoc_items(str(tmp_path / "nowhere" / "clips"), label, 8)
    r = _run_cli(["extract-frames", "--input", str(tmp_path / "typo.mp4"), "--label", "real", "--shards-root",
                  str(tmp_path / "out"), "--dask-workers", "0"])
    assert r.returncode == 2 and "typo.mp4': no such file or folder" in r.stderr and not (tmp_path / "out").exists()


def test_strict_makes_dropped_videos_visible_to_scripts(tmp_path, bad_dir):
    """Scripts could not see dropped videos: a run that read some videos exits 0. --strict exits 1 naming how many."""
    args = ["extract-frames", "--input", str(bad_dir / "good.mp4"), "--input", str(bad_dir / "zero.mp4"), "--label",
            "real", "--frames", "2", "--crop-size", "64", "--dask-workers", "0"]
    assert _run_cli([*args, "--shards-root", str(tmp_path / "a")]).returncode == 0
    r = _run_cli([*args, "--shards-root", str(tmp_path / "b"), "--strict"])
    assert r.returncode == 1 and "1 of the 2 videos of this run could not be read (--strict" in r.stderr, r.stderr


def test_full_disk_during_a_run_is_one_line_per_video_and_one_at_the_end(tmp_path, sample_videos_dir):
    """Fault matrix: on a full disk each failed task printed a multi-line Dask dump and the final line named no
    path. Run on a real 300 KiB tmpfs where the machine allows mounting one (root), else skipped."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        for k in range(3):
            shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / f"v{k}.mp4")
        r = _run_cli(["extract-frames", "--input", str(tmp_path / "v*.mp4"), "--label", "real", "--frames", "8",
                      "--shards-root", str(mnt / "out"), "--dask-workers", "2"], timeout=300)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert r.returncode == 1
    assert r.stdout.count("task failed (no space left on the device)") == 3, r.stdout
    err = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip() and "video/s" not in ln
           and "s/video" not in ln and not ln.startswith("extract-frames")]
    assert len(err) == 1 and err[0].startswith(f"error: {mnt / 'out'}: no space left on the device"), r.stderr


def test_non_square_pixels_are_cropped_at_the_display_aspect_and_said(tmp_path, sample_videos_dir, capsys):
    """Fault matrix: non-square pixels gave stretched crops without a word. carphone_pristine.mp4 stores 176x144
    pixels of aspect 128:117: its frames are decoded at 192x144, a line says so, and the videos table records it."""
    from pipeline.manifest import VideoItem

    items = [VideoItem(id="c", path=str(sample_videos_dir / "carphone_pristine.mp4"), rel_path="c.mp4", label=0,
                       split="test", dataset="adhoc", method="original", n_frames=2)]
    run_extract(items, tmp_path / "out", "adhoc", "test", _cfg(), workers=0)
    assert "non-square pixels (aspect 128:117): frames decoded at the display size 192x144" in capsys.readouterr().out
    (row,) = ShardReader(shard_paths(tmp_path / "out")[0]).videos
    assert (row["pixel_aspect"], row["width"], row["height"]) == ("128:117", 192, 144)
