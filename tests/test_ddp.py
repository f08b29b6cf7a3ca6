"""Distributed training: two CPU processes (gloo) launched by torchrun take two optimiser steps (one
with the backbone frozen, one after unfreezing) and end with identical weights on both ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.tiny import tiny_overrides, write_split

LAUNCHER = textwrap.dedent("""
    import sys
    import torch
    import model.train.main as train
    from model.config_io import load_config

    dist = train.setup_distributed()
    torch.set_num_threads(1)
    cfg = load_config(None, sys.argv[2:])
    t = train.train(cfg, sys.argv[1], dist)
    torch.save({k: v.detach() for k, v in t.model.state_dict().items()}, f"{sys.argv[1]}/rank{dist.rank}.pt")
    print(f"rank {dist.rank}: steps {t.step}, pairs seen per step {cfg.train.batch_pairs}")
    train.teardown_distributed(dist)
""")


@pytest.mark.slow
def test_two_process_gloo_run_keeps_replicas_identical(tmp_path, repo_root):
    shards = {"train": write_split(tmp_path / "toy" / "train", n_videos=4, frames=4, seed=0)}
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    run_dir = tmp_path / "run"
    # epoch 0 with the backbone frozen, epoch 1 unfrozen: the DDP wrapper is rebuilt in between
    overrides = tiny_overrides(shards, tmp_path, "train.epochs=2", "train.max_steps_per_epoch=1",
                               "train.freeze_backbone_epochs=1", "model.dropout=0.2")
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(launcher), str(run_dir), *overrides]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0: steps 2" in proc.stdout and "rank 1: steps 2" in proc.stdout

    w0 = torch.load(run_dir / "rank0.pt", weights_only=True)
    w1 = torch.load(run_dir / "rank1.pt", weights_only=True)
    start = torch.load(run_dir / "last.pt", weights_only=True)
    params = {n for n, _ in __import__("model.net.laanet", fromlist=["build_model"]).build_model(
        start["config"]["model"]).named_parameters()}
    for name in params:
        assert torch.equal(w0[name], w1[name]), name
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["replica_max_abs_diff"] for h in history] == [0.0, 0.0] and history[-1]["step"] == 2
    assert start["world_size"] == 2 and len(start["rng"]) == 2
    assert "2 process(es)" in (run_dir / "train.log").read_text()


# The first attempt stops after one checkpointed epoch and exits non-zero, like a node lost mid-run; torchrun
# (--max-restarts 1) restarts every rank with the same command, and --resume auto continues the run.
CRASHING = textwrap.dedent("""
    import os
    import sys
    import torch
    import model.train.main as train

    torch.set_num_threads(1)
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        train.cli(sys.argv[1:] + ["--stop-after-epochs", "1"])
        sys.exit(3)
    train.cli(sys.argv[1:])
""")


@pytest.mark.slow
def test_torchrun_restart_continues_the_run_with_resume_auto(tmp_path, repo_root):
    shards = {"train": write_split(tmp_path / "toy" / "train", n_videos=4, frames=4, seed=0)}
    launcher = tmp_path / "crashing.py"
    launcher.write_text(CRASHING)
    overrides = tiny_overrides(shards, tmp_path, "train.epochs=2", "train.max_steps_per_epoch=2",
                               "train.freeze_backbone_epochs=0", "train.run_name=elastic")
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "1", str(launcher), "--config", "configs/demo_cpu.yaml", "--resume", "auto", *overrides]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "elastic"
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["world_size"]) == (2, 4, 2)
    log_text = (run / "train.log").read_text()
    assert f"resumed {run} at epoch 1, step 2" in log_text
    # the global batch of 2 pairs is split over the two processes, the demo's LRs scaled x 2/2
    assert "batch: 2 pairs (4 images) per step = 2 process(es) x 1" in log_text
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and [h["replica_max_abs_diff"] for h in history] == [0.0, 0.0]
