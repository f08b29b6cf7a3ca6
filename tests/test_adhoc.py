"""Your own videos: a folder of real and fake clips prepared in one command and evaluated as one test set."""
import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import model.eval.main as evaluate
from pipeline.cli import app
from pipeline.shards import ShardReader, shard_paths
from tests.tiny import tiny_checkpoint


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, sample_videos_dir):
    """mine/real/{a,b}.mp4 and mine/fake/{c,d}.mp4 (copies of the shipped clips; labels come from the folders)."""
    mine = tmp_path_factory.mktemp("videos") / "mine"
    for rel, clip in (("real/a.mp4", "carphone_pristine.mp4"), ("real/b.mp4", "short_hamilton_clip.mp4"),
                      ("fake/c.mp4", "short_hamilton_clip.mp4"), ("fake/d.mp4", "carphone_pristine.mp4")):
        (mine / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_videos_dir / clip, mine / rel)
    return mine


def _invoke(args):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return r.output


def test_label_from_folder_one_split_then_one_finite_auc(mixed_folder, tmp_path):
    out = tmp_path / "shards" / "mine"
    printed = _invoke(["extract-frames", "--input", str(mixed_folder), "--label-from-folder", "--shards-root", str(out),
                       "--frames", "2", "--crop-size", "96", "--dask-workers", "0"])
    assert "4 videos, 2 real and 2 fake" in printed
    _invoke(["cache-landmarks", "--shards-root", str(out), "--dask-workers", "0"])
    labels = {}
    for p in shard_paths(out):
        for row in ShardReader(p).videos:
            labels[row["id"]] = row["label"]
    assert labels == {"real/a": 0, "real/b": 0, "fake/c": 1, "fake/d": 1}

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    ev = tmp_path / "eval"
    evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(ckpt), "--shards", str(out), "--frames", "2", "--loader-workers", "0", "--out", str(ev)]))
    with open(ev / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    y = [int(r["label"]) for r in rows]
    s = [float(r["score"]) for r in rows]
    metrics = json.loads((ev / "metrics.json").read_text())
    (res,) = metrics["test_sets"].values()
    auc = res["video"]["auc"]
    assert auc is not None and np.isfinite(auc)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-9)


def test_several_inputs_with_a_label_each(mixed_folder, tmp_path):
    out = tmp_path / "pairs"
    printed = _invoke(["extract-frames", "-i", str(mixed_folder / "real" / "*.mp4"), "--label", "real",
                       "-i", str(mixed_folder / "fake"), "--label", "fake", "--shards-root", str(out),
                       "--frames", "1", "--crop-size", "64", "--dask-workers", "0"])
    assert "4 videos, 2 real and 2 fake" in printed
    got = {row["id"]: row["label"] for p in shard_paths(out) for row in ShardReader(p).videos}
    assert got == {"real/a": 0, "real/b": 0, "fake/c": 1, "fake/d": 1}


@pytest.mark.parametrize("args, message", [
    (["--label", "real", "--label-from-folder"], "not both"),
    ([], "--label-from-folder"),
    (["--label", "real", "--label", "fake", "--label", "real"], "1 --input but 3 --label"),
])
def test_wrong_label_usage_is_one_line_before_any_work(mixed_folder, tmp_path, args, message):
    out = tmp_path / "x"
    r = CliRunner().invoke(app, ["extract-frames", "--input", str(mixed_folder), "--shards-root", str(out), *args])
    assert r.exit_code == 2 and message in r.output and not out.exists()


def test_cache_landmarks_and_verify_take_the_manifest(tmp_path):
    r = CliRunner().invoke(app, ["cache-landmarks", "--dataset", "nosuch", "--manifest", "data_manifest.yaml",
                                 "--shards-root", str(tmp_path)])
    assert r.exit_code == 2 and "datasets.nosuch: no such dataset" in r.output
    r = CliRunner().invoke(app, ["verify", "--dataset", "nosuch", "--manifest", "data_manifest.yaml"])
    assert r.exit_code == 2 and "datasets.nosuch: no such dataset" in r.output
    r = CliRunner().invoke(app, ["verify", "--dataset", "sample", "--split", "val", "--shards-root", str(tmp_path)])
    assert r.exit_code == 1 and str(tmp_path / "sample" / "val") in r.output


def test_your_own_training_split_has_a_name_a_split_and_methods(sample_videos_dir, tmp_path):
    """--name and --split name an ad-hoc set (they were ignored: every set was adhoc/test), and fake/<method>/
    folders or --method give the method (it was always "unknown")."""
    mine = tmp_path / "mine"
    for rel in ("real/a.mp4", "fake/Deepfakes/b.mp4", "fake/Face2Face/c.mp4"):
        (mine / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_videos_dir / "carphone_pristine.mp4", mine / rel)
    out = tmp_path / "shards" / "mine" / "train"
    printed = _invoke(["extract-frames", "--input", str(mine), "--label-from-folder", "--name", "mine", "--split",
                       "train", "--shards-root", str(out), "--frames", "1", "--crop-size", "64", "--dask-workers", "0"])
    assert "(Deepfakes 1, Face2Face 1), stored as dataset 'mine', split 'train'" in printed
    rows = {row["id"]: row for p in shard_paths(out) for row in ShardReader(p).videos}
    assert {k: (r["dataset"], r["split"], r["method"]) for k, r in rows.items()} == {
        "real/a": ("mine", "train", "original"), "fake/Deepfakes/b": ("mine", "train", "Deepfakes"),
        "fake/Face2Face/c": ("mine", "train", "Face2Face")}
    index = json.loads((out / "index.json").read_text())
    assert (index["dataset"], index["split"]) == ("mine", "train")
    other = tmp_path / "other"
    _invoke(["extract-frames", "-i", str(mine / "fake" / "Deepfakes"), "--label", "fake", "--method", "MyGAN",
             "--shards-root", str(other), "--frames", "1", "--crop-size", "64", "--dask-workers", "0"])
    assert [r["method"] for p in shard_paths(other) for r in ShardReader(p).videos] == ["MyGAN"]
    assert json.loads((other / "index.json").read_text())["split"] == "test"


@pytest.mark.slow
def test_own_videos_train_and_evaluate_per_method(sample_videos_dir, tmp_path, capsys):
    """The README's path for one's own videos, on the shipped clips: folders of clips -> train, val and test shards
    (named, split, methods from fake/<method>/) -> the shipped CPU recipe (a tiny network here) -> evaluate with
    per-method rows and a report that names the model."""
    from model.train.main import cli as train_cli

    clips = {"train/a.mp4": "carphone_pristine.mp4", "train/b.mp4": "short_hamilton_clip.mp4",
             "val/c.mp4": "carphone_pristine.mp4", "test/real/r.mp4": "short_hamilton_clip.mp4",
             "test/fake/Deepfakes/f.mp4": "carphone_pristine.mp4", "test/fake/Face2Face/g.mp4": "carphone_pristine.mp4"}
    mine = tmp_path / "mine"
    for rel, clip in clips.items():
        (mine / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_videos_dir / clip, mine / rel)
    shards = tmp_path / "shards" / "mine"
    common = ["--frames", "4", "--crop-size", "96", "--dask-workers", "0", "--name", "mine"]
    for split in ("train", "val"):
        _invoke(["extract-frames", "--input", str(mine / split), "--label", "real", "--split", split,
                 "--shards-root", str(shards / split), *common])
    _invoke(["extract-frames", "--input", str(mine / "test"), "--label-from-folder", "--split", "test",
             "--shards-root", str(shards / "test"), *common])
    for split in ("train", "val", "test"):
        _invoke(["cache-landmarks", "--shards-root", str(shards / split), "--dask-workers", "0"])
    tiny = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.input_size=64", "data.image_size=64",
            "model.head_conv=16", "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_pairs=2",
            "optim.lr_base_batch_pairs=2", "train.num_workers=0", "val.num_workers=0", "train.freeze_backbone_epochs=0",
            "data.frames_per_video=2", "val.frames_per_video=2", "train.channels_last=false"]
    train_cli(["--config", "configs/laanet_lite0_cpu.yaml", f"data.shards=[{shards / 'train'}]",
               f"val.shards=[{shards / 'val'}]", f"train.out_dir={tmp_path / 'runs'}", "train.run_name=mine", *tiny])
    assert (tmp_path / "runs" / "mine" / "best.pt").is_file()
    assert "training data: 2 real videos with landmarks" in (tmp_path / "runs" / "mine" / "train.log").read_text()
    out = tmp_path / "eval"
    summary = evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(tmp_path / "runs" / "mine" / "best.pt"), "--shards", str(shards / "test"),
         "--frames", "2", "--overlays", "0", "--loader-workers", "0", "--out", str(out)]))
    (name, res), = summary["test_sets"].items()
    assert name == "mine/test" and set(res["per_method"]) == {"Deepfakes", "Face2Face"}
    assert summary["model"]["training_data"][0]["videos"] == 2 and summary["model"]["epoch"] is not None
    assert "## Model" in (out / "report.md").read_text()
