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
    with LocalSlurm(nodes=2, cpus=2) as cluster:
        yield cluster


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
