"""bench.gpu_check, the prepared check for the first minutes on a GPU: its CPU path (the same code, a tiny network)
runs every part in under 2 minutes and writes the table and the JSON."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_quick_path_runs_every_part(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.perf_counter() - t0 < 120
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = result["parts"]
    assert set(parts) == {"train", "ddp", "eval", "detectors", "loader"}
    assert not any("error" in p or "cut" in p for p in parts.values()), parts
    train = {(row["amp"], row["compile"]): row for row in parts["train"]["rows"]}
    assert train[("off", False)]["finite"] and train[("off", False)]["images_per_s"] > 0
    assert train[("bf16", False)]["within_tolerance"]
    assert parts["ddp"]["equal"] and parts["ddp"]["backend"] == "gloo" and parts["ddp"]["killed_after_epoch"] >= 1
    assert parts["eval"]["equal"] and {(r["flip"], r["batch"]) for r in parts["eval"]["rows"]} == \
        {(False, 32), (False, 64), (True, 32), (True, 64)}
    assert {r["backend"] for r in parts["detectors"]["rows"]} == {"mobilenet0.25", "resnet50", "resnet50 (levels)"}
    assert all(r["pairs_per_s"] > 0 for r in parts["loader"]["rows"])
    assert result["environment"]["torch"] == torch.__version__
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## Training step" in md and "## Is the GPU starved?" in md and "## DDP" in md
