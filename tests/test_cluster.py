"""Cluster runs: which cluster a run uses, the client's checks of its workers, and relative paths.

The fast tests use an in-process cluster; the slow ones start ``dask scheduler`` and ``dask worker`` as
separate processes in other folders, with the project as installed (no PYTHONPATH to the checkout).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import distributed  # noqa: F401  (its config defaults must exist before any dask.config.set below)
import h5py
import pytest
from typer.testing import CliRunner

from pipeline import cluster
from pipeline.cli import app
from pipeline.cluster import ClusterError, check_workers, choose_cluster, version_mismatches
from pipeline.faces import MOBILENET_ONNX
from pipeline.landmarks import default_model_path

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# Which cluster.


def test_cluster_precedence():
    import dask

    with dask.config.set({"scheduler-address": None}):
        assert choose_cluster(None)[0] == "local"
        assert choose_cluster(0)[0] == "inline"
        assert choose_cluster(0, "tcp://a:1") == ("address", "tcp://a:1", "--scheduler")
        kind, target, _ = choose_cluster(None, None, "rel/sched.json")
        assert kind == "file" and target == os.path.abspath("rel/sched.json")
        with pytest.raises(ClusterError, match="not both"):
            choose_cluster(None, "tcp://a:1", "s.json")
    # DASK_SCHEDULER_ADDRESS reaches the pipeline through Dask's own config (read as Dask reads the environment)
    with dask.config.set(dask.config.collect_env({"DASK_SCHEDULER_ADDRESS": "tcp://env:8786"})):
        assert choose_cluster(None) == ("address", "tcp://env:8786", "DASK_SCHEDULER_ADDRESS")
        assert choose_cluster(None, "tcp://a:1")[1] == "tcp://a:1"          # --scheduler first
        assert choose_cluster(None, None, "/s.json")[1] == "/s.json"        # then --scheduler-file
        assert choose_cluster(2)[0] == "local" and choose_cluster(0)[0] == "inline"  # explicit --workers wins


def test_unreachable_scheduler_and_missing_file_are_one_line(tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(ClusterError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:1 \(from "
                                               r"--scheduler\)") as e:
            cluster.make_client(None, "tcp://127.0.0.1:1")
        assert "\n" not in str(e.value)
        with pytest.raises(ClusterError, match="scheduler file not found after 1 s"):
            cluster.make_client(None, None, tmp_path / "absent.json")


# ---------------------------------------------------------------------------------------------------------
# Environment checks.


def _versions(client: dict, workers: dict, scheduler: dict | None = None) -> dict:
    return {"client": {"packages": client}, "scheduler": {"packages": scheduler or client},
            "workers": {a: {"packages": p} for a, p in workers.items()}}


def test_version_mismatches_name_the_worker_and_package():
    mine = {"python": "3.11.7", "dask": "2026.8.0", "numpy": "2.2.6", "h5py": "3.16.0"}
    same_minor = {**mine, "python": "3.11.9"}
    v = _versions(mine, {"tcp://w1:1": same_minor, "tcp://w2:1": {**mine, "numpy": "2.1.0"},
                         "tcp://w3:1": {k: x for k, x in mine.items() if k != "h5py"}},
                  scheduler={**mine, "h5py": "3.0"})  # the scheduler does not read HDF5: not compared
    assert version_mismatches(v) == {"tcp://w2:1": ["numpy 2.1.0 (client 2.2.6)"],
                                     "tcp://w3:1": ["h5py missing (client 3.16.0)"]}
    v = _versions(mine, {"tcp://w1:1": mine}, scheduler={**mine, "python": "3.12.1", "dask": "2025.1.0"})
    assert version_mismatches(v) == {"scheduler": ["python 3.12 (client 3.11)", "dask 2025.1.0 (client 2026.8.0)"]}


def test_import_problem_of_a_worker_without_the_project():
    # What Dask hands back when a worker cannot unpickle the check (the project is not importable there).
    e = Exception("ModuleNotFoundError(\"No module named 'pipeline'\")")
    msg = cluster._import_problem(e)
    assert msg.startswith("cannot import the project (No module named 'pipeline'): install it")
    assert cluster._import_problem(RuntimeError("boom")) == "check failed (RuntimeError: boom)"


def test_short_lists_three_workers_then_counts():
    s = cluster._short([f"w{i}" for i in range(5)], ["x"] * 5)
    assert s == "worker w0: x; worker w1: x; worker w2: x; and 2 more workers"


# ---------------------------------------------------------------------------------------------------------
# What a worker lacks (the probe runs here as a worker would run it).


def test_probe_reports_what_a_worker_lacks(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m").write_text("token")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 10)
    weights = tmp_path / "w.onnx"
    weights.write_bytes(b"y" * 5)
    ok = cluster._probe(str(out), "m", "token", [("detector weights", str(weights), 5)], ["detector", "landmarks"],
                        [(str(video), 10)])
    assert ok["problems"] == [] and ok["host"]
    bad = cluster._probe(str(out), "m", "another-token", [("detector weights", str(weights), 6),
                                                          ("landmark model", str(tmp_path / "no.dat"), 9)],
                         ["nosuch"], [(str(video), 11), (str(tmp_path / "gone.mp4"), 3)])["problems"]
    assert bad[0].startswith(f"output folder {out} is not the client's")
    assert bad[1] == f"detector weights {weights} differs from the client's (5 bytes, client 6)"
    assert bad[2] == f"no landmark model {tmp_path / 'no.dat'}"
    assert bad[3].startswith("packaged nosuch model: ValueError")
    assert bad[4] == f"2 of 2 sampled input videos missing or different (first: {video})"
    assert cluster._probe(str(tmp_path / "absent"), "m", "t", [], [], [])["problems"] == \
        [f"no output folder {tmp_path / 'absent'}"]


def test_sample_spreads_over_the_list():
    paths = [str(i) for i in range(100)]
    s = cluster.sample(paths, 16)
    assert len(s) == 16 and s[0] == "0" and s[-1] == "99"
    assert cluster.sample(paths[:5], 16) == paths[:5]


# ---------------------------------------------------------------------------------------------------------
# In-process cluster: the CLI with relative paths, --scheduler and --scheduler-file.


@pytest.fixture(scope="module")
def thread_cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
            Client(c) as client:
        yield c, client


def test_cli_relative_paths_on_a_cluster(tmp_path, monkeypatch, sample_videos_dir, thread_cluster):
    lc, client = thread_cluster
    client.write_scheduler_file(str(tmp_path / "sched.json"))
    (tmp_path / "videos").mkdir()
    shutil.copy(sample_videos_dir / "carphone_pristine.mp4", tmp_path / "videos" / "a.mp4")
    shutil.copy(MOBILENET_ONNX, tmp_path / "det.onnx")
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    r = run(app, ["extract-frames", "--input", "videos/*.mp4", "--label", "real", "--frames", "2", "--crop-size",
                  "96", "--shards-root", "shards", "--detector-weights", "det.onnx", "--scheduler", lc.scheduler_address])
    assert r.exit_code == 0, r.output
    assert "Dask: 1 workers" in r.output
    r = run(app, ["cache-landmarks", "--shards-root", "shards", "--scheduler-file", "sched.json"])
    assert r.exit_code == 0, r.output
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["n_videos"] == 1 and index["shards"][0]["landmarks"]
    with h5py.File(tmp_path / "shards" / index["shards"][0]["file"], "r") as f:
        assert json.loads(f.attrs["settings"])["detector_weights"] == str(tmp_path / "det.onnx")
        assert f["faces"].shape[0] == 2
    assert not list((tmp_path / "shards").glob(cluster.MARKER_PREFIX + "*"))  # the check leaves nothing behind


def test_check_workers_stops_before_any_work(tmp_path, thread_cluster):
    _, client = thread_cluster
    out = tmp_path / "out"
    with pytest.raises(ClusterError) as e:
        check_workers(client, out, [("landmark model", str(tmp_path / "none.dat"))], ["detector"],
                      [str(tmp_path / "none.mp4")])
    msg = str(e.value)
    assert msg.startswith("workers cannot run this job: worker inproc://") and "\n" not in msg
    assert f"no landmark model {tmp_path / 'none.dat'}" in msg
    assert "sampled input videos" not in msg  # videos the client lacks too are the run's failures, not the cluster's
    assert list(out.iterdir()) == []          # marker removed
    check_workers(client, out, [], ["detector", "landmarks"], [])  # all there: no error


def test_check_workers_skips_a_worker_that_leaves_during_the_check(tmp_path, capsys):
    """A worker whose connection closes while it is being checked (its batch job was cancelled) has left: the
    run goes on with the others, and stops with one line only when none answered."""
    from distributed.comm.core import CommClosedError

    class Client:  # what client.run(..., on_error="return") gives when one worker's job is cancelled mid-check
        def __init__(self, answers):
            self.answers = answers

        def run(self, *args, on_error):
            assert on_error == "return"
            return self.answers

    ok = {"host": "node1", "problems": []}
    gone = CommClosedError("in <TCP (closed) Scheduler Broadcast>: Stream is closed")
    check_workers(Client({"tcp://a:1": ok, "tcp://b:2": gone}), tmp_path / "out")
    assert "1 worker(s) left during the check" in capsys.readouterr().out
    with pytest.raises(ClusterError, match=r"^no worker answered the check: tcp://b:2 left the cluster during it$"):
        check_workers(Client({"tcp://b:2": gone}), tmp_path / "out")
    with pytest.raises(ClusterError, match="workers cannot run this job: worker tcp://a:1"):  # a real failure still
        check_workers(Client({"tcp://a:1": RuntimeError("boom"), "tcp://b:2": gone}), tmp_path / "out")


def test_check_versions_passes_on_one_environment(thread_cluster):
    cluster.check_versions(thread_cluster[1])


# ---------------------------------------------------------------------------------------------------------
# Separate processes: a scheduler and workers started in other folders, the project as installed.


def _installed_env() -> dict:
    """The environment for processes that must use the installed project: PYTHONPATH without the checkout."""
    env = dict(os.environ)
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != REPO]
    if keep:
        env["PYTHONPATH"] = os.pathsep.join(keep)
    else:
        env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    r = subprocess.run([sys.executable, "-c", "import pipeline.cluster, pipeline.faces as f; "
                        "assert f.MOBILENET_ONNX.is_file(); print(pipeline.cluster.__file__)"],
                       cwd=elsewhere, env=_installed_env(), capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("the project is not installed in this interpreter's environment (make install, or "
                    "pip install -e .): " + (r.stderr.strip().splitlines() or ["?"])[-1])
    return _installed_env()


def _start(args: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_workers(sched_file: Path, n: int, env: dict, timeout: float = 90) -> None:
    code = ("import sys; from distributed import Client; "
            f"c = Client(scheduler_file={str(sched_file)!r}, timeout=30); c.wait_for_workers({n}, timeout={timeout})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=timeout + 40, capture_output=True)


@pytest.fixture
def separate_cluster(tmp_path, installed):
    """``dask scheduler --scheduler-file`` and two ``dask worker`` processes, each in its own folder."""
    sched_dir, worker_dir = tmp_path / "scheduler_cwd", tmp_path / "worker_cwd"
    sched_dir.mkdir()
    worker_dir.mkdir()
    sched_file = tmp_path / "scheduler.json"
    procs = [_start([sys.executable, "-m", "dask", "scheduler", "--scheduler-file", str(sched_file), "--host",
                     "127.0.0.1", "--port", "0", "--dashboard-address", ":0"], sched_dir, installed,
                    tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.is_file():
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.2)
        for k in range(2):
            procs.append(_start([sys.executable, "-m", "dask", "worker", "--scheduler-file", str(sched_file),
                                 "--nthreads", "1", "--name", f"w{k}"], worker_dir, installed,
                                tmp_path / f"worker{k}.log"))
        _wait_workers(sched_file, 2, installed)
        yield {"file": sched_file, "worker_dir": worker_dir, "procs": procs, "env": installed, "tmp": tmp_path}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _cli(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_separate_scheduler_and_workers_relative_out(separate_cluster, sample_videos_dir):
    c = separate_cluster
    client_dir = c["tmp"] / "client_cwd"
    (client_dir / "videos").mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", client_dir / "videos" / f"{name}.mp4")
    # model files given by relative paths too: the workers' folder has none of them
    shutil.copy(MOBILENET_ONNX, client_dir / "det.onnx")
    (client_dir / "lm.dat").symlink_to(default_model_path())
    sched = os.path.relpath(c["file"], client_dir)
    r = _cli(["extract-frames", "--input", "videos/*.mp4", "--label", "real", "--frames", "3", "--crop-size", "96",
              "--shards-root", "out", "--detector-weights", "det.onnx", "--scheduler-file", sched], client_dir, c["env"])
    assert r.returncode == 0, r.stderr
    assert "Dask: 2 workers" in r.stdout
    r = _cli(["cache-landmarks", "--shards-root", "out", "--landmark-model", "lm.dat", "--scheduler-file", sched],
             client_dir, c["env"])
    assert r.returncode == 0, r.stderr
    index = json.loads((client_dir / "out" / "index.json").read_text())
    assert index["n_videos"] == 2 and index["n_faces"] == 6 and all(s["landmarks"] for s in index["shards"])
    assert list(c["worker_dir"].rglob("*.h5")) == []     # nothing landed in the workers' folder
    r = _cli(["verify", "out"], client_dir, c["env"])
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


@pytest.mark.slow
def test_worker_without_the_project_stops_the_run(separate_cluster, sample_videos_dir):
    c = separate_cluster
    # A third worker whose Python cannot import the project (no nanny, so the block stays in its process).
    code = ("import sys; sys.modules['pipeline'] = None; from distributed.cli.dask_worker import main; "
            "sys.argv = ['dask-worker', '--scheduler-file', sys.argv[1], '--nthreads', '1', '--no-nanny', "
            "'--name', 'bare']; main()")
    c["procs"].append(_start([sys.executable, "-c", code, str(c["file"])], c["worker_dir"], c["env"],
                             c["tmp"] / "worker_bare.log"))
    _wait_workers(c["file"], 3, c["env"])
    client_dir = c["tmp"] / "client_cwd"
    (client_dir / "videos").mkdir(parents=True)
    shutil.copy(sample_videos_dir / "carphone_pristine.mp4", client_dir / "videos" / "a.mp4")
    r = _cli(["extract-frames", "--input", "videos/*.mp4", "--label", "real", "--frames", "2", "--shards-root", "out",
              "--scheduler-file", str(c["file"])], client_dir, c["env"])
    assert r.returncode == 1
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("error: workers cannot run this client's project code: worker tcp://")
    assert "cannot import the project" in err
    assert not list((client_dir / "out").glob("*.h5")) and not (client_dir / "out" / "index.json").exists()


def test_other_project_code_on_a_worker_is_one_line(thread_cluster, monkeypatch):
    # As a worker with another installed version would answer the check (the in-process worker runs this module).
    monkeypatch.setattr(cluster, "_worker_code", lambda: ("0.0.9", "ffffffffffff"))
    with pytest.raises(ClusterError) as e:
        cluster.check_versions(thread_cluster[1])
    msg = str(e.value)
    assert msg.startswith("workers cannot run this client's project code: worker inproc://") and "\n" not in msg
    assert f"laanet 0.0.9, code ffffffffffff (client: laanet {cluster.package_version()}, code " \
           f"{cluster.code_hash()}" in msg
