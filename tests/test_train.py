"""Trainer: LR/freeze schedule, SAM, one step and 30 steps on a fixed batch, resume equivalence,
non-finite loss stop, and an end-to-end CLI run with validation and checkpoints.

Everything runs on CPU with timm's tiny ``test_efficientnet`` (0.5 M parameters) at 64 x 64 on synthetic shards written with the
pipeline's shard writer (smooth textures with a face-like 68-point layout, enough for SBI blending).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.config_io import load_config
from model.data.tensors import normalise_images
from model.train.sam import SAM, bn_running_stats_frozen
from model.train.schedule import WarmupLinearSchedule, backbone_frozen, warmup_linear_lr
from pipeline.shard_index import write_index
from pipeline.shard_writer import write_shard
from tests.tiny import CROP, SIZE, face_image, face_landmarks, tiny_overrides, write_split

DEMO_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU two spinning OpenMP
    threads per op make a step ~50x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- schedule


def test_lr_warms_up_over_the_first_quarter_then_decays_to_zero():
    lr = [warmup_linear_lr(s, 100, 5e-5, 2e-4, 0.25) for s in range(101)]
    assert lr[0] == pytest.approx(5e-5)
    assert lr[25] == pytest.approx(2e-4) and max(lr) == pytest.approx(2e-4)
    assert lr[12] == pytest.approx(5e-5 + 1.5e-4 * 12 / 25)
    assert lr[100] == 0.0 and lr[99] == pytest.approx(2e-4 / 75)
    assert all(a <= b for a, b in zip(lr[:25], lr[1:26])) and all(a >= b for a, b in zip(lr[25:], lr[26:]))


def test_schedule_sets_lr_and_resumes_from_its_state():
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupLinearSchedule(opt, 40, 5e-5, 2e-4, 0.25)
    for _ in range(13):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(warmup_linear_lr(13, 40, 5e-5, 2e-4, 0.25))
    opt2 = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = WarmupLinearSchedule(opt2, 40, 5e-5, 2e-4, 0.25)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    # another total (train.epochs changed on resume): the same step on the rebuilt curve
    sched3 = WarmupLinearSchedule(opt2, 80, 5e-5, 2e-4, 0.25)
    assert sched3.load_state_dict(sched.state_dict()) == 40
    assert sched3.last_step == 13 and opt2.param_groups[0]["lr"] == pytest.approx(warmup_linear_lr(13, 80, 5e-5, 2e-4, 0.25))
    with pytest.raises(ValueError, match="13 optimiser steps"):
        WarmupLinearSchedule(opt2, 12, 5e-5, 2e-4, 0.25).load_state_dict(sched.state_dict())


def test_backbone_frozen_for_the_first_epochs_only():
    assert [backbone_frozen(e, 6) for e in range(8)] == [True] * 6 + [False] * 2
    assert not backbone_frozen(0, 0)


# --------------------------------------------------------------------------- SAM


def test_sam_update_matches_the_two_pass_formula():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randn(16, 1)
    lin = nn.Linear(5, 1)
    w0 = [p.detach().clone() for p in lin.parameters()]
    sam = SAM(torch.optim.SGD(lin.parameters(), lr=0.1), rho=0.05)

    nn.functional.mse_loss(lin(x), y).backward()
    g1 = [p.grad.clone() for p in lin.parameters()]
    assert sam.perturb()
    moved = torch.cat([(p.detach() - w).flatten() for p, w in zip(lin.parameters(), w0)])
    assert moved.norm().item() == pytest.approx(0.05, rel=1e-5)
    norm = torch.cat([g.flatten() for g in g1]).norm()
    for p, w, g in zip(lin.parameters(), w0, g1):
        torch.testing.assert_close(p.detach(), w + 0.05 * g / norm)
    sam.zero_grad()
    nn.functional.mse_loss(lin(x), y).backward()
    g2 = [p.grad.clone() for p in lin.parameters()]
    sam.restore()
    for p, w in zip(lin.parameters(), w0):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-7)
    sam.base.step()
    for p, w, g in zip(lin.parameters(), w0, g2):  # the step uses the gradient at w + e, applied at w
        torch.testing.assert_close(p.detach(), w - 0.1 * g, rtol=0, atol=1e-6)
    assert not torch.allclose(g1[0], g2[0])


def test_sam_skips_perturbation_on_non_finite_gradients():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    sam = SAM(torch.optim.SGD([p], lr=0.1))
    assert not sam.perturb()
    assert torch.equal(p.detach(), torch.ones(3))


def test_second_pass_does_not_touch_bn_running_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    bn = net[1]
    x = torch.randn(4, 3, 8, 8)
    net(x)  # first pass updates the statistics once
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    with bn_running_stats_frozen(net):
        out_frozen = net(x * 3 + 1)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, tracked) and bn.momentum == 0.1
    # the forward itself still normalises with batch statistics (train mode), as without the context
    torch.testing.assert_close(out_frozen, net(x * 3 + 1))
    assert not torch.equal(bn.running_mean, mean)


# --------------------------------------------------------------------------- training steps (real model and data)


def test_split_pairs_keeps_whole_pairs():
    from model.train.engine import split_pairs

    batch = {"label": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1.0]), "image": torch.arange(8.0),
             "video_id": list("abcdABCD")}
    parts = split_pairs(batch, 2)
    assert [p["video_id"] for p in parts] == [["a", "b", "A", "B"], ["c", "d", "C", "D"]]
    assert torch.equal(parts[1]["image"], torch.tensor([2.0, 3, 6, 7]))


def fixed_batch_trainer(shards, tmp_path, *extra):
    from model.train.engine import build_trainer

    cfg = load_config(None, tiny_overrides(shards, tmp_path, "train.freeze_backbone_epochs=0",
                                           "train.epochs=100", "optim.lr_start=1e-3", "optim.lr_peak=1e-3",
                                           "optim.warmup_fraction=0.0", *extra))
    t, dataset, sampler, loader = build_trainer(cfg, tmp_path)
    dataset.set_epoch(0)
    batch = next(iter(loader))
    return t, batch


def batch_loss(t, batch) -> float:
    from model.train.engine import forward_loss, to_device

    t.net = t.net or t.model
    with torch.no_grad():
        total, _ = forward_loss(t, to_device(batch, t.device, False))
    return float(total)


def test_one_step_on_a_fixed_batch_lowers_the_loss(shards, tmp_path):
    from model.train.engine import apply_freeze, train_step

    t, batch = fixed_batch_trainer(shards, tmp_path)
    apply_freeze(t, 0)
    before = batch_loss(t, batch)
    terms = train_step(t, batch)
    assert terms["loss"] == pytest.approx(before, rel=1e-4)  # first pass sees the same weights
    assert set(terms) >= {"loss", "loss_cls", "loss_hm", "loss_cstency", "lr"}
    assert batch_loss(t, batch) < before
    assert t.step == 1


@pytest.mark.parametrize("extra", [["optim.accum_steps=2"], ["train.amp=bf16"], ["optim.sam=false"],
                                   ["train.channels_last=true", "optim.grad_clip=1.0"]],
                         ids=["accumulate", "bf16", "no-sam", "channels-last-clip"])
def test_step_variants_update_the_weights(shards, tmp_path, extra):
    from model.train.engine import apply_freeze, train_step

    t, batch = fixed_batch_trainer(shards, tmp_path, *extra)
    apply_freeze(t, 0)
    before = [p.detach().clone() for p in t.model.parameters()]
    terms = train_step(t, batch)
    assert math.isfinite(terms["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, t.model.parameters()))


def test_forty_steps_overfit_a_tiny_batch(shards, tmp_path):
    from model.train.engine import apply_freeze, train_step

    # The optimiser's check: plain focal loss, unaugmented pairs (black erased boxes and crop padding and the
    # 0.72 positive factor slow the fit of this tiny batch: 30 steps reach 0.50x of the first loss, 40 below).
    t, batch = fixed_batch_trainer(shards, tmp_path, "augment.enabled=false", "loss.hm_pos_weight=1.0")
    apply_freeze(t, 0)
    first = batch_loss(t, batch)
    losses = [train_step(t, batch)["loss"] for _ in range(40)]
    last = batch_loss(t, batch)
    assert all(math.isfinite(v) for v in losses)
    assert last < 0.5 * first, (first, last, losses[::5])


def test_non_finite_loss_stops_with_batch_ids_and_terms(shards, tmp_path):
    from model.train.engine import NonFiniteLossError, apply_freeze, train_step

    t, batch = fixed_batch_trainer(shards, tmp_path)
    apply_freeze(t, 0)
    batch["image"] = normalise_images(batch["image"])           # float images, so that one can be NaN
    batch["image"][0] = float("nan")
    with pytest.raises(NonFiniteLossError) as err:
        train_step(t, batch)
    msg = str(err.value)
    assert "non-finite loss" in msg and "cls=" in msg and "hm=" in msg
    assert batch["video_id"][0] in msg


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_backbone_frozen_then_trained_at_the_configured_epoch(shards, tmp_path, freeze_bn):
    """Backbone weights are frozen for the first epochs. Its BN running statistics stay fixed too only with
    train.freeze_bn; by default (the reference) the frozen backbone keeps normalising with batch statistics
    and updating its running statistics."""
    from model.train.engine import build_trainer, train_one_epoch

    cfg = load_config(None, tiny_overrides(shards, tmp_path, "train.epochs=3", "train.freeze_backbone_epochs=2",
                                           "train.max_steps_per_epoch=1", f"train.freeze_bn={str(freeze_bn).lower()}"))
    t, dataset, sampler, loader = build_trainer(cfg, tmp_path)
    backbone = lambda: torch.cat([p.detach().flatten().clone() for p in t.model.backbone.parameters()])  # noqa: E731
    bn_stats = lambda: torch.cat([b.detach().flatten().clone() for n, b in t.model.backbone.named_buffers()  # noqa: E731
                                  if "running" in n])
    head = lambda: torch.cat([p.detach().flatten().clone() for p in t.model.heads.parameters()])  # noqa: E731
    lrs = []
    for epoch in range(3):
        t.epoch = epoch
        w, s, h = backbone(), bn_stats(), head()
        lrs.append(t.schedule.get_last_lr())
        train_one_epoch(t, loader, dataset, sampler)
        frozen = epoch < 2
        assert torch.equal(backbone(), w) == frozen, epoch
        assert torch.equal(bn_stats(), s) == (frozen and freeze_bn), epoch
        assert not torch.equal(head(), h)
        assert all(p.requires_grad != frozen for p in t.model.backbone.parameters())
    assert lrs == pytest.approx([warmup_linear_lr(s, 3, 5e-5, 2e-4, 0.25) for s in range(3)])


# --------------------------------------------------------------------------- whole runs


def run_cli(argv: list[str]) -> Path:
    from model.train.main import get_args_parser, main

    return main(get_args_parser().parse_args(argv))


def test_cli_run_validates_checkpoints_and_resumes_exactly(shards, tmp_path):
    """Uninterrupted 3-epoch run vs. 1 epoch + --resume for 2 more: same losses, same weights."""
    common = tiny_overrides(shards, tmp_path, "train.epochs=3", "train.freeze_backbone_epochs=1",
                            "train.max_steps_per_epoch=2", "model.dropout=0.3", "train.deterministic=true",
                            f"val.shards=[{shards['val']}]", "val.every=1", "val.num_workers=0",
                            "val.fakes=real")
    full = run_cli(["--config", DEMO_CONFIG, *common, "train.run_name=full"])
    part = run_cli(["--config", DEMO_CONFIG, "--stop-after-epochs", "1", *common, "train.run_name=part"])
    assert json.loads((part / "history.json").read_text())[-1]["epoch"] == 1
    run_cli(["--resume", str(part)])

    h_full = json.loads((full / "history.json").read_text())
    h_part = json.loads((part / "history.json").read_text())
    assert [h["epoch"] for h in h_part] == [1, 2, 3]
    for a, b in zip(h_full, h_part):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-9), (a, b)
        assert a["val_auc_video"] == pytest.approx(b["val_auc_video"])
    s_full = torch.load(full / "last.pt", weights_only=True)
    s_part = torch.load(part / "last.pt", weights_only=True)
    for k, v in s_full["model"].items():
        torch.testing.assert_close(v, s_part["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert s_full["step"] == s_part["step"] == 6 and s_full["epoch"] == 3

    # the run folder holds what the docs promise
    for name in ("config.yaml", "train.log", "metrics.csv", "curves.png", "last.pt", "best.pt", "history.json"):
        assert (full / name).is_file(), name
    assert "real fakes" in (full / "train.log").read_text()
    assert s_full["config"]["train"]["epochs"] == 3 and "rng" in s_full and "optimizer" in s_full
    from model.checkpoint import load_checkpoint

    net = load_checkpoint(full / "best.pt")
    assert not net.training
    assert set(net(torch.zeros(1, 3, SIZE, SIZE))) == {"cls", "hm", "cstency"}


def test_validation_schedule_does_not_change_the_trained_weights(shards, tmp_path):
    """Validating every epoch, every second epoch or never trains the same network: validation runs on a
    forked RNG, so val.every and val.frames_per_video are free to trade selection detail for time."""
    common = tiny_overrides(shards, tmp_path, "train.epochs=2", "train.freeze_backbone_epochs=0",
                            "train.max_steps_per_epoch=2", "model.dropout=0.3", "train.deterministic=true",
                            f"val.shards=[{shards['val']}]", "val.num_workers=0", "val.fakes=sbi")
    runs = {every: run_cli(["--config", DEMO_CONFIG, *common, f"val.every={every}", f"train.run_name=v{every}"])
            for every in (1, 0)}
    history = json.loads((runs[1] / "history.json").read_text())
    assert ["val_auc_frame" in h for h in history] == [True, True]
    states = {every: torch.load(run / "last.pt", weights_only=True)["model"] for every, run in runs.items()}
    for k, v in states[0].items():
        torch.testing.assert_close(states[1][k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("metric", ["auc_frame", "auc_video"])
def test_best_checkpoint_follows_the_selection_metric(shards, tmp_path, metric):
    """best.pt holds the first epoch with the highest val.select AUC (frame- or video-level)."""
    common = tiny_overrides(shards, tmp_path, "train.epochs=3", "train.freeze_backbone_epochs=0",
                            "train.max_steps_per_epoch=2", f"val.shards=[{shards['val']}]", "val.every=1",
                            "val.num_workers=0", "val.fakes=sbi", f"val.select={metric}")
    run = run_cli(["--config", DEMO_CONFIG, *common, f"train.run_name={metric}"])
    history = json.loads((run / "history.json").read_text())
    values = [h[f"val_{metric}"] for h in history]
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == values.index(max(values)) + 1
    assert best["best_auc"] == pytest.approx(max(values))
    assert f"best.pt: {metric}" in (run / "train.log").read_text()


def test_val_perturb_selects_and_the_bench_revalidates_the_same(shards, tmp_path, capsys):
    """A run trained with val.perturb logs the degraded validation per epoch; bench.val_perturb, which
    validates finished runs again under a perturbation, gives best.pt the same AUC from the run's config."""
    from bench.val_perturb import main as revalidate
    from bench.val_perturb import validate_run

    common = tiny_overrides(shards, tmp_path, "train.epochs=2", "train.freeze_backbone_epochs=0",
                            "train.max_steps_per_epoch=2", f"val.shards=[{shards['val']}]", "val.every=1",
                            "val.num_workers=0", "val.fakes=sbi", "val.perturb=jpeg:4", "train.run_name=deg")
    run = run_cli(["--config", DEMO_CONFIG, *common])
    history = json.loads((run / "history.json").read_text())
    best = torch.load(run / "best.pt", weights_only=True)
    (row,) = validate_run(run, ["jpeg:4"], "best")
    assert row["epoch"] == best["epoch"]
    assert row["auc_frame"] == pytest.approx(history[best["epoch"] - 1]["val_auc_frame"], abs=1e-9)
    (clean,) = validate_run(run, ["none"], "last")
    assert clean["n_frames"] == row["n_frames"] and clean["epoch"] == 2
    for r in (row, clean):  # the mean fake probability of the real and of the fake faces
        assert 0.0 < r["p_fake_real"] < 1.0 and 0.0 < r["p_fake_fake"] < 1.0
        assert r["p_fake_real"] != r["p_fake_fake"]
    out = tmp_path / "val.jsonl"
    revalidate([str(run), "--perturb", "jpeg:4", "none", "--checkpoint", "last", "--json", str(out),
                "--png", str(tmp_path / "val.png")])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["perturb"] for r in rows] == ["jpeg:4", "none"] and all(r["epoch"] == 2 for r in rows)
    assert rows[1]["auc_frame"] == pytest.approx(clean["auc_frame"], abs=1e-9)
    assert (tmp_path / "val.png").read_bytes()[:4] == b"\x89PNG"
    # a run that cannot be validated gets one line; the others still are, and the exit status says so
    with pytest.raises(SystemExit, match="1 of 2 runs not validated: .*missing"):
        revalidate([str(tmp_path / "missing"), str(run), "--perturb", "none", "--checkpoint", "last",
                    "--json", str(out)])
    assert "config file not found" in capsys.readouterr().err
    assert json.loads(out.read_text().splitlines()[-1])["auc_frame"] == pytest.approx(rows[1]["auc_frame"], abs=1e-9)
    assert rows[0]["auc_frame"] == pytest.approx(history[-1]["val_auc_frame"], abs=1e-9)


def test_sam_second_pass_updates_bn_statistics_only_when_asked(shards, tmp_path):
    """optim.sam_bn_update (default, the reference) updates BN running statistics in both SAM passes; off,
    only the first pass does. The weight update itself does not depend on it (same gradients)."""
    from model.train.engine import apply_freeze, train_step

    counts, weights = {}, {}
    for flag in (True, False):
        t, batch = fixed_batch_trainer(shards, tmp_path / str(flag), f"optim.sam_bn_update={str(flag).lower()}")
        apply_freeze(t, 0)
        bn = next(m for m in t.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = int(bn.num_batches_tracked)
        train_step(t, batch)
        counts[flag] = int(bn.num_batches_tracked) - before
        weights[flag] = torch.cat([p.detach().flatten() for p in t.model.heads.parameters()])
    assert counts == {True: 2, False: 1}
    torch.testing.assert_close(weights[True], weights[False])


def test_validation_falls_back_to_sbi_fakes_of_real_videos(shards, tmp_path):
    run = run_cli(["--config", DEMO_CONFIG, *tiny_overrides(shards, tmp_path, "train.epochs=1",
                                                            "train.max_steps_per_epoch=1", "train.run_name=sbi_val",
                                                            f"val.shards=[{shards['train']}]", "val.every=1",
                                                            "val.num_workers=0", "val.max_videos=3")])
    log_text = (run / "train.log").read_text()
    assert "SBI pseudo-fakes of the real videos" in log_text
    last = json.loads((run / "history.json").read_text())[-1]
    assert last["val_n_videos"] == 6.0  # 3 real videos + their 3 SBI fake videos
    assert 0.0 <= last["val_auc_video"] <= 1.0


def _cli_error(argv) -> str:
    """The SystemExit message of ``train.py`` (what the user sees on stderr)."""
    from model.train.main import cli

    with pytest.raises(SystemExit) as e:
        cli(argv)
    return str(e.value.code)


def test_data_problems_are_one_line_and_leave_no_run_folder(shards, tmp_path):
    from tests.shard_faults import flip_chunk_bytes

    base = ["--config", DEMO_CONFIG, *tiny_overrides(shards, tmp_path / "runs"), "train.epochs=1",
            "train.max_steps_per_epoch=2"]
    msg = _cli_error([*base, f"data.shards=[{tmp_path / 'nowhere'}]"])
    assert msg.startswith("train.py: ") and "nowhere: no index.json" in msg and "\n" not in msg
    no_lm = tmp_path / "nolm" / "train"
    write_shard(no_lm / "shard-00000.h5", np.zeros((4, CROP, CROP, 3), np.uint8))
    write_index(no_lm, "toy", "train")
    msg = _cli_error([*base, f"data.shards=[{no_lm}]"])
    assert "no real video with landmarks" in msg and "\n" not in msg
    bad = tmp_path / "bad" / "train"
    bad.mkdir(parents=True)
    import shutil

    shutil.copy(shards["train"] / "shard-00000.h5", bad / "shard-00000.h5")
    write_index(bad, "toy", "train")
    for row in range(24):
        flip_chunk_bytes(bad / "shard-00000.h5", "faces", row)
    msg = _cli_error([*base, f"data.shards=[{bad}]", "train.num_workers=1"])
    assert "shard-00000.h5: dataset 'faces' row" in msg and "corrupt" in msg and "\n" not in msg, msg
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_resume_drops_the_interrupted_epochs_metrics_rows(shards, tmp_path):
    import csv

    common = tiny_overrides(shards, tmp_path, "train.epochs=2", "train.max_steps_per_epoch=2")
    part = run_cli(["--config", DEMO_CONFIG, "--stop-after-epochs", "1", *common, "train.run_name=part"])
    with open(part / "metrics.csv", "a", newline="") as f:  # what a run killed during epoch 2 leaves behind
        csv.writer(f).writerows([[3, 1, "train/loss", "12345.0"], [4, 1, "train/loss", "12345.0"]])
    run_cli(["--resume", str(part)])
    with open(part / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [(r["step"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys)) and "12345.0" not in {r["value"] for r in rows}
    assert {int(r["step"]) for r in rows} == {1, 2, 3, 4}


def test_videos_left_out_for_missing_landmarks_are_in_train_log(shards, tmp_path):
    d = tmp_path / "half" / "train"
    write_split(d, n_videos=4, frames=6, seed=3)
    from pipeline.shard_writer import add_landmarks
    from pipeline.shards import ShardReader

    r = ShardReader(d / "shard-00000.h5")
    lms = np.stack([r.landmarks(i) for i in range(len(r))])
    ok = r.landmark_ok.copy()
    lms[r.video == 0], ok[r.video == 0] = np.nan, False  # one video without any landmarks
    r.close()
    add_landmarks(d / "shard-00000.h5", lms, ok)
    run = run_cli(["--config", DEMO_CONFIG, *tiny_overrides({"train": d}, tmp_path, "train.epochs=1",
                                                           "train.max_steps_per_epoch=1"), "train.run_name=half"])
    assert "left out" in (run / "train.log").read_text()


def test_verify_shards_stops_on_a_corrupt_crop_before_the_run_starts(shards, tmp_path):
    import shutil

    from tests.shard_faults import flip_chunk_bytes

    bad = tmp_path / "bad" / "train"
    bad.mkdir(parents=True)
    shutil.copy(shards["train"] / "shard-00000.h5", bad / "shard-00000.h5")
    write_index(bad, "toy", "train")
    flip_chunk_bytes(bad / "shard-00000.h5", "faces", 7)
    msg = _cli_error(["--config", DEMO_CONFIG, "--verify-shards", *tiny_overrides(shards, tmp_path / "runs"),
                      f"data.shards=[{bad}]"])
    assert msg.startswith("train.py: ") and "shard-00000.h5: dataset 'faces' rows 7-7 unreadable" in msg
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- CUDA only


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_step_with_sam(shards, tmp_path, amp):
    """One SAM step on CUDA under bf16 autocast, or fp16 with the GradScaler: finite, weights move, and
    the weights are not left perturbed."""
    from model.train.engine import apply_freeze, train_step

    t, batch = fixed_batch_trainer(shards, tmp_path, "train.device=cuda", f"train.amp={amp}")
    apply_freeze(t, 0)
    before = [p.detach().clone() for p in t.model.parameters()]
    terms = train_step(t, batch)
    assert math.isfinite(terms["loss"]) and next(t.model.parameters()).is_cuda
    assert any(not torch.equal(a, p) for a, p in zip(before, t.model.parameters()))


# --------------------------------------------------------------------------- scaling: batch, resume, readers


def test_global_batch_splits_over_ranks_and_scales_the_lr_linearly():
    from model.config import ConfigError
    from model.train.schedule import batch_plan

    paper = load_config(None)
    for world in (1, 2, 4, 8):  # the paper's 8 pairs (16 images) per step and its LRs on any GPU count
        plan = batch_plan(paper, world)
        assert (plan.global_pairs, plan.per_process * world, plan.lr_scale) == (8, 8, 1.0)
    big = load_config(None, ["train.batch_pairs=32"])
    plan = batch_plan(big, 4)
    assert (plan.per_process, plan.global_pairs, plan.lr_scale) == (8, 32, 4.0)
    assert "lr_peak 0.0008" in plan.describe(big, 4) and "x 32/8 = 4" in plan.describe(big, 4)
    assert batch_plan(load_config(None, ["train.batch_pairs=32", "optim.lr_scaling=none"]), 4).lr_scale == 1.0
    old = batch_plan(load_config(None, ["train.batch_scope=per_process", "optim.lr_scaling=none"]), 4)
    assert (old.per_process, old.global_pairs, old.lr_scale) == (8, 32, 1.0)
    with pytest.raises(ConfigError, match=r"train.batch_pairs=8 \(global\) does not split over 3 processes"):
        batch_plan(paper, 3)
    with pytest.raises(ConfigError, match="accum_steps=4 does not divide the 2 pairs"):
        batch_plan(load_config(None, ["optim.accum_steps=4"]), 4)


def test_scaled_lr_reaches_the_schedule(shards, tmp_path):
    from model.train.engine import build_trainer

    cfg = load_config(None, tiny_overrides(shards, tmp_path, "train.batch_pairs=4", "optim.lr_base_batch_pairs=2",
                                           "train.epochs=4"))
    t = build_trainer(cfg, tmp_path)[0]
    assert t.plan.lr_scale == 2.0 and t.plan.per_process == 4
    assert (t.schedule.lr_start, t.schedule.lr_peak) == (pytest.approx(1e-4), pytest.approx(4e-4))
    assert t.base_opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_checkpoints_of_the_per_process_batch_resume_as_they_were():
    from model.config_io import config_from_dict, config_to_dict

    stored = config_to_dict(load_config(None))
    del stored["train"]["batch_scope"], stored["optim"]["lr_scaling"]  # what a checkpoint of before holds
    cfg = config_from_dict(stored)
    assert (cfg.train.batch_scope, cfg.optim.lr_scaling) == ("per_process", "none")
    assert config_from_dict(config_to_dict(load_config(None))).train.batch_scope == "global"


def test_resume_auto_starts_then_continues(shards, tmp_path):
    common = ["--config", DEMO_CONFIG, "--resume", "auto",
              *tiny_overrides(shards, tmp_path, "train.epochs=2", "train.max_steps_per_epoch=2",
                              "train.run_name=auto")]
    run = run_cli([*common, "--stop-after-epochs", "1"])  # no folder yet: starts
    assert run == tmp_path / "auto" and torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    run_cli(common)  # what a torchrun restart or a requeued job runs again: continues
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 4)
    log_text = (run / "train.log").read_text()
    assert f"resumed {run} at epoch 1, step 2" in log_text
    assert "batch: 2 pairs (4 images) per step = 1 process(es) x 2" in log_text
    msg = _cli_error(["--config", DEMO_CONFIG, "--resume", "auto", *tiny_overrides(shards, tmp_path),
                      "train.run_name="])
    assert "--resume auto needs a fixed run folder: give train.run_name" in msg and "\n" not in msg
    msg = _cli_error(["--resume", "auto"])
    assert "--resume auto needs --config" in msg


def test_resume_from_last_pt_with_more_epochs_rebuilds_the_schedule(shards, tmp_path):
    common = tiny_overrides(shards, tmp_path, "train.epochs=2", "train.max_steps_per_epoch=2")
    run = run_cli(["--config", DEMO_CONFIG, *common, "train.run_name=grow"])
    run_cli(["--resume", str(run / "last.pt"), "train.epochs=3"])  # a checkpoint file, not only a folder
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["schedule"]["total_steps"]) == (3, 6, 6)
    assert state["config"]["train"]["epochs"] == 3
    assert "LR schedule rebuilt: the run was planned for 4 steps, now 6" in (run / "train.log").read_text()
    lrs = dict(read_metrics_series(run, "train/lr"))
    assert lrs[5] == pytest.approx(warmup_linear_lr(4, 6, 2e-4, 1e-3, 0.25))  # step 5 logs the LR of step 4 (demo LRs)
    msg = _cli_error(["--resume", str(run), "train.epochs=2"])
    assert msg == "train.py: train.epochs=2, but the run has already done 3 epochs; give train.epochs >= 3"
    msg = _cli_error(["--resume", str(run), "train.epochs=4", "model.head_conv=32"])  # other overrides: one line
    assert msg.startswith("train.py: the checkpoint's weights do not fit the model of the resumed config") and \
        "size mismatch for heads." in msg and "\n" not in msg
    msg = _cli_error(["--resume", str(run), "train.max_steps_per_epoch=1"])
    assert "the run has done 6 optimiser steps, more than the 3 = train.epochs 3 x 1 steps per epoch" in msg


def read_metrics_series(run: Path, name: str) -> list[tuple[int, float]]:
    from model.train.log import read_metrics

    return read_metrics(run / "metrics.csv")[name]


def test_resume_and_checkpoint_folders_get_one_line_hints(shards, tmp_path):
    from model.checkpoint import resolve_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    msg = _cli_error(["--resume", str(run)])
    assert msg == f"train.py: {run}: no last.pt to resume from (it holds best.pt: give --resume {run / 'best.pt'} " \
                  "to continue from that)"
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=rf"^{run}: a folder, not a checkpoint; did you mean {run / 'best.pt'}\? "
                                         r"\(inside: best.pt, last.pt\)$"):
        resolve_checkpoint(run)
    assert resolve_checkpoint(run / "last.pt") == run / "last.pt"
    msg = _cli_error(["--resume", str(run / "last.pt")])  # an empty file: unreadable, one line
    assert msg.startswith(f"train.py: {run / 'last.pt'}: not a readable LAA-Net checkpoint") and "\n" not in msg
    msg = _cli_error(["--config", DEMO_CONFIG, "--resume", str(run)])
    assert "--resume RUN uses the run's stored config" in msg


def test_print_config_prints_the_resolved_yaml_and_writes_nothing(shards, tmp_path, capsys):
    import yaml

    from model.train.main import cli

    cli(["--config", DEMO_CONFIG, "--print-config", "--device", "cpu", "--loader-workers", "3", "--out", str(tmp_path / "o"),
         "train.epochs=3"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["num_workers"] == 3 and cfg["train"]["device"] == "cpu"
    assert cfg["train"]["out_dir"] == str(tmp_path / "o") and cfg["model"]["backbone"] == "tf_efficientnet_b0"
    assert not (tmp_path / "o").exists()


def test_dry_run_takes_one_step_and_writes_no_run_folder(shards, tmp_path, capsys):
    from model.train.main import cli

    cli(["--config", DEMO_CONFIG, "--dry-run", *tiny_overrides(shards, tmp_path / "runs", "train.run_name=dry")])
    out = capsys.readouterr().out
    assert "dry run on cpu (1 process(es)" in out and "24 pairs/epoch" in out
    assert "one step" in out and "images/s per process" in out and "peak RSS" in out
    assert "batch: 2 pairs (4 images) per step" in out
    assert not (tmp_path / "runs").exists()


def test_fake_videos_in_training_shards_are_reported(tmp_path, capsys):
    """Fake videos in data.shards are left out (the recipe trains on real videos and their pseudo-fakes); the
    dry run and train.log say so instead of leaving them out silently."""
    from model.train.main import cli

    mixed = {"train": write_split(tmp_path / "toy" / "train", n_videos=3, frames=4, seed=0, fake_videos=2)}
    cli(["--config", DEMO_CONFIG, "--dry-run", *tiny_overrides(mixed, tmp_path / "runs", "train.run_name=mixed")])
    assert "training data: 3 real videos with landmarks; 2 fake videos in the shards are left out" in \
        capsys.readouterr().out


def write_sharded_split(split_dir: Path, n_shards: int, videos_per_shard: int, frames: int) -> Path:
    """A split of ``n_shards`` shards of distinct real videos (+ index)."""
    rng = np.random.default_rng(7)
    n = videos_per_shard * frames
    for s in range(n_shards):
        videos = [{"id": f"s{s}v{v}", "label": 0, "method": "original"} for v in range(videos_per_shard)]
        write_shard(split_dir / f"shard-{s:05d}.h5", np.stack([face_image(CROP, rng) for _ in range(n)]),
                    videos=videos, video=np.repeat(np.arange(videos_per_shard), frames),
                    frame_index=np.tile(np.arange(frames), videos_per_shard),
                    landmarks=np.stack([face_landmarks(CROP, rng) for _ in range(n)]), compression="none")
    write_index(split_dir, dataset="toy", split=split_dir.name)
    return split_dir


def open_shard_files() -> int:
    """Open file descriptors of this process on *.h5 files."""
    import os

    fds = Path("/proc/self/fd")
    names = []
    for fd in fds.iterdir():
        try:
            names.append(os.readlink(fd))
        except OSError:
            continue
    return sum(n.endswith(".h5") for n in names)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
@pytest.mark.parametrize("synthesis", ["sbi", "bi"])
def test_open_shards_stay_bounded_per_process(tmp_path, synthesis):
    from model.data.datasets import TrainPairDataset

    split = write_sharded_split(tmp_path / "many" / "train", n_shards=6, videos_per_shard=1, frames=2)
    cfg = load_config(None, tiny_overrides({"train": split}, tmp_path, "data.max_open_shards=2",
                                           f"data.synthesis={synthesis}", "data.bi_neighbours=3",
                                           "augment.enabled=false"))
    before = open_shard_files()
    ds = TrainPairDataset(cfg.data, cfg.sbi, cfg.bi, cfg.augment)
    assert open_shard_files() == before  # nothing open after construction (safe to fork)
    peak = 0
    for i in range(len(ds)):
        ds[(0, i)]
        peak = max(peak, open_shard_files() - before)
    assert peak == 2 and len({si for _, si, _ in ds.items}) == 6  # all 6 shards read, never more than 2 open
    ds.shards.close()
    assert open_shard_files() == before


def test_persistent_workers_still_draw_a_new_epoch(shards, tmp_path):
    from model.train.dist import Dist
    from model.train.engine import build_train_loader

    cfg = load_config(None, tiny_overrides(shards, tmp_path, "train.num_workers=1", "data.frames_per_video=2"))
    dataset, sampler, loader = build_train_loader(cfg, Dist(), torch.device("cpu"), 2)
    assert loader.persistent_workers
    seen, workers = [], []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)  # only the sampler: the workers' dataset copies never see set_epoch
        keys = list(sampler)
        batches = list(loader)
        workers.append(loader._iterator)
        ref = [dataset[k] for k in keys]  # the same keys computed in this process
        got = torch.cat([b["image"][: len(b["image"]) // 2] for b in batches])  # the reals, in sampler order
        fakes = torch.cat([b["image"][len(b["image"]) // 2:] for b in batches])
        assert [k[0] for k in keys] == [epoch] * len(keys)
        assert torch.equal(got, torch.from_numpy(np.stack([r["real"] for r in ref])))
        assert torch.equal(fakes, torch.from_numpy(np.stack([r["fake"] for r in ref])))
        seen.append(([(r["video_id"], r["frame_index"]) for r in ref], fakes))
    assert workers[0] is workers[1]  # the same worker processes served both epochs
    assert sorted(seen[0][0]) != sorted(seen[1][0])  # frames re-drawn
    assert not torch.equal(seen[0][1], seen[1][1])  # pseudo-fakes differ


def test_shard_readers_open_without_locks_and_next_to_a_locking_handle(tmp_path):
    import h5py

    from pipeline.shards import ShardReader

    split = write_sharded_split(tmp_path / "one" / "train", n_shards=1, videos_per_shard=1, frames=2)
    path = split / "shard-00000.h5"
    r = ShardReader(path)
    face = r.face(1)
    assert not r._f.id.get_access_plist().get_file_locking()[0]  # no HDF5 file locks for readers
    r.close()
    with h5py.File(path, "r") as other:  # this process already holds the file with h5py's default flags
        r2 = ShardReader(path)
        np.testing.assert_array_equal(r2.face(1), face)
        np.testing.assert_array_equal(other["faces"][1], face)
        r2.close()
