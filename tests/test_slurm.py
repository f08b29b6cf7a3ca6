"""The documented cluster recipes, run as written on a real one-machine SLURM (bench.slurm_cluster: munged,
slurmctld and two slurmd nodes on 127.0.0.1). Skipped, with the reason, where SLURM cannot be installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE_DOC = (REPO / "docs" / "pipeline.md").read_text()


def _block(doc: str, heading: str, lang: str) -> str:
    """The first ``lang`` code block after ``heading`` in a doc."""
    part = doc.split(heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", part, re.S).group(1)


@pytest.fixture(scope="module")
def slurm():
    from bench.slurm_cluster import LocalSlurm, ensure_slurm

    why = ensure_slurm()
    if why:
        pytest.skip(why)
    cluster = LocalSlurm(nodes=2, cpus=2)
    try:
        cluster.__enter__()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:  # the machine cannot host the daemons
        pytest.skip(f"a local SLURM cannot run here: {' '.join(str(e).split())[:200]}")
    try:
        yield cluster
    finally:
        cluster.__exit__(None, None, None)


@pytest.mark.slow
def test_sbatch_scheduler_file_recipe_gives_the_shards_of_a_local_run(slurm, tmp_path, sample_videos_dir):
    """docs/pipeline.md "SLURM, one job": the sbatch script as written (sized for this cluster by sbatch flags, which
    override its #SBATCH lines), both stages on srun-started Dask workers of two nodes; the shards equal those of
    a LocalCluster run of the same split."""
    from pipeline.shards import ShardReader, shard_paths

    job = tmp_path / "job"
    job.mkdir()
    (job / "prep.sbatch").write_text(_block(PIPELINE_DOC, "#### SLURM, one job", "bash"))
    shutil.copy(REPO / "data_manifest.yaml", job / "data_manifest.yaml")
    env = {"VENV": str(REPO / ".venv"), "SAMPLE_ROOT": str(sample_videos_dir), "OMP_NUM_THREADS": "1"}
    r = slurm.run(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", "--mem=1G", "--time=00:10:00",
                   f"--chdir={job}", f"--output={job}/slurm-%j.out", str(job / "prep.sbatch"), "sample", "test"],
                  env=env, check=False, timeout=600)
    log = "".join(p.read_text() for p in job.glob("slurm-*.out"))
    assert r.returncode == 0, r.stderr + log[-3000:]
    local = tmp_path / "local"
    for stage in ("extract-frames", "cache-landmarks"):  # the same split on a LocalCluster of two workers
        subprocess.run([sys.executable, "-m", "pipeline", stage, "--dataset", "sample", "--split", "test",
                        "--shards-root", str(local), "--dask-workers", "2", "--manifest", str(job / "data_manifest.yaml")],
                       cwd=REPO, check=True, capture_output=True, env={**os.environ, **env})
    ours = {row["id"]: (p, row) for p in shard_paths(job / "shards" / "sample" / "test") for row in ShardReader(p).videos}
    ref = {row["id"]: (p, row) for p in shard_paths(local / "sample" / "test") for row in ShardReader(p).videos}
    assert sorted(ours) == sorted(ref) and len(ours) == 2

    def faces(split):
        out = {}
        for p in shard_paths(split):
            r = ShardReader(p)
            for i in range(len(r)):
                out[(r.videos[r.video[i]]["id"], int(r.frame_index[i]))] = (r.face(i), r.landmarks(i))
        return out

    a, b = faces(job / "shards" / "sample" / "test"), faces(local / "sample" / "test")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_allclose(a[k][1], b[k][1], equal_nan=True)
    assert re.search(r"Dask: [12] workers at tcp://", log), log[-2000:]  # the stages ran on the job's workers


@pytest.mark.slow
def test_dask_jobqueue_recipe_survives_a_cancelled_worker_job(slurm, tmp_path, sample_videos_dir):
    """docs/pipeline.md "SLURM, jobs on demand": the slurm_prep.py script as written, sized for this cluster (this
    partition, no account, 1-core jobs, at most 2), with ``adapt``: worker jobs come and go as sbatch jobs, one is
    cancelled with scancel mid-run, and the run still ends with every video in the shards."""
    import time

    pytest.importorskip("dask_jobqueue")
    from pipeline.shards import ShardReader, shard_paths
    from pipeline.verify import verify_split

    script = _block(PIPELINE_DOC, "#### SLURM, jobs on demand", "python")
    for doc, here in (('queue="cpu", account="myaccount",', 'queue="debug",'),
                      ('cores=16, processes=16, memory="64GB",', 'cores=1, processes=1, memory="1GB",'),
                      ("maximum_jobs=20", "maximum_jobs=2")):
        assert doc in script, doc
        script = script.replace(doc, here)
    job = tmp_path / "job"
    job.mkdir()
    (job / "slurm_prep.py").write_text(script)
    shutil.copy(REPO / "data_manifest.yaml", job / "data_manifest.yaml")
    env = {**slurm.env, "SAMPLE_ROOT": str(sample_videos_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "python"), "slurm_prep.py", "sample", "val", "--frames",
                             "8"], cwd=job, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cancelled, deadline = None, time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        running = slurm.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], check=False).stdout.split()
        if cancelled is None and running and (job / "shards" / "sample" / "val").is_dir():
            cancelled = running[0]
            slurm.run(["scancel", cancelled])
        time.sleep(0.3)
    out = proc.communicate(timeout=max(1, deadline - time.time()))[0]
    assert proc.returncode == 0, out[-3000:]
    assert cancelled is not None, "no worker job was running to cancel"
    split = job / "shards" / "sample" / "val"
    assert verify_split(split) == []
    assert sorted(r["id"] for p in shard_paths(split) for r in ShardReader(p).videos) == \
        ["carphone_pristine", "short_hamilton_clip"]


TRAIN_DOC = (REPO / "docs" / "training.md").read_text()


def _training_job(tmp_path: Path, name: str) -> Path:
    """docs/training.md's requeue sbatch script, sized for this cluster (no GPUs, one CPU and one torchrun process
    per node, two nodes: two DDP processes over gloo) and pointed at a tiny network on synthetic shards."""
    from tests.tiny import tiny_overrides, write_split

    script = _block(TRAIN_DOC, "SLURM with requeue", "bash")
    train = tmp_path / "toy" / "train"
    shards = {"train": train if train.is_dir() else write_split(train, n_videos=4, frames=6, seed=0)}
    overrides = tiny_overrides(shards, tmp_path / "runs", "train.epochs=3", "train.max_steps_per_epoch=2",
                               "train.deterministic=true")
    for doc, here in (("#SBATCH --gpus-per-node=4\n", ""), ("--nproc-per-node 4", "--nproc-per-node 1"),
                      ("train.py --config configs/laanet_sbi.yaml",
                       f"{REPO / 'train.py'} --config {REPO / 'configs' / 'demo_cpu.yaml'}"),
                      ("train.run_name=laanet-sbi-$SLURM_JOB_NAME &",
                       f"train.run_name=laanet-sbi-$SLURM_JOB_NAME {' '.join(overrides)} &")):
        assert doc in script, doc
        script = script.replace(doc, here)
    job = tmp_path / name
    (job / "runs").mkdir(parents=True)
    (job / "train.sbatch").write_text(script)
    return job


def _job_state(slurm, job_id: str) -> dict:
    out = slurm.run(["scontrol", "show", "job", job_id], check=False).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


@pytest.mark.slow
def test_training_sbatch_requeued_by_its_signal_continues_to_the_same_weights(slurm, tmp_path):
    """docs/training.md "SLURM with requeue": the job gets its time-limit signal (scancel --signal=USR1 --batch, as
    --signal=B:USR1@300 sends it), requeues itself with scontrol requeue, and the requeued job continues the run with
    --resume auto; its final weights equal those of the same job run without interruption."""
    import time

    import torch

    env = {"PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    flags = ["--cpus-per-task=1", "--mem=1G"]
    whole = _training_job(tmp_path, "whole")
    r = slurm.run(["sbatch", "--wait", *flags, f"--chdir={whole}", "--job-name=whole", str(whole / "train.sbatch")],
                  env=env, check=False, timeout=600)
    assert r.returncode == 0, r.stderr + "".join(p.read_text() for p in (whole / "runs").glob("slurm-*.out"))[-3000:]
    job = _training_job(tmp_path, "requeued")
    job_id = slurm.run(["sbatch", "--parsable", *flags, f"--chdir={job}", "--job-name=requeued",
                        str(job / "train.sbatch")], env=env).stdout.strip().split(";")[0]
    run_dir = tmp_path / "runs" / "laanet-sbi-requeued"
    deadline = time.time() + 120
    while not (run_dir / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (run_dir / "last.pt").exists(), (_job_state(slurm, job_id), list(tmp_path.glob("runs/*")),
                                            "".join(p.read_text() for p in (job / "runs").glob("slurm-*.out"))[-3000:])
    slurm.run(["scancel", "--signal=USR1", "--batch", job_id])
    deadline, released = time.time() + 420, False
    while time.time() < deadline:
        state = _job_state(slurm, job_id)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        if not released and state.get("JobState") == "PENDING" and state.get("Restarts") == "1":
            # SLURM holds a requeued job back for two minutes (its BeginTime); let it start now, as a quiet
            # cluster would soon after (the recipe is unchanged: only the wait is shortened)
            slurm.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
            released = True
        time.sleep(0.5)
    log = "".join(p.read_text() for p in (job / "runs").glob("slurm-*.out"))
    assert state.get("JobState") == "COMPLETED" and int(state.get("Restarts", "0")) == 1, (state, log[-3000:])
    a = torch.load(tmp_path / "runs" / "laanet-sbi-whole" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
