"""End-to-end evaluation of a tiny checkpoint on small shards, and the evaluator's building blocks."""
import csv
import json

import numpy as np
import pytest
import torch

import model.eval.main as evaluate
from model.checkpoint import save_checkpoint
from model.data.tensors import tensor_to_uint8
from model.eval import protocol, robustness
from pipeline.shard_index import write_index
from pipeline.shard_writer import write_shard
from tests.face_fixtures import load_faces
from tests.tiny import tiny_checkpoint

# Two originals and, under two manipulation methods, fakes that share the same name (as FF++ does).
VIDEOS = [
    {"id": "000", "method": "original", "label": 0, "path": "original/c23/000.mp4"},
    {"id": "001", "method": "original", "label": 0, "path": "original/c23/001.mp4"},
    {"id": "000_001", "method": "Deepfakes", "label": 1, "path": "Deepfakes/c23/000_001.mp4"},
    {"id": "001_000", "method": "Deepfakes", "label": 1, "path": "Deepfakes/c23/001_000.mp4"},
    {"id": "000_001", "method": "Face2Face", "label": 1, "path": "Face2Face/c23/000_001.mp4"},
    {"id": "001_000", "method": "Face2Face", "label": 1, "path": "Face2Face/c23/001_000.mp4"},
]
FACES_PER_VIDEO = 3
SIZE = 64


def _make_split(root, dataset, videos, seed):
    rng = np.random.default_rng(seed)
    n = len(videos) * FACES_PER_VIDEO
    faces = rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    d = root / dataset / "test"
    rows = [dict(v, split="test", dataset=dataset) for v in videos]
    write_shard(d / "shard-00000.h5", faces, videos=rows, video=np.repeat(np.arange(len(videos)), FACES_PER_VIDEO),
                frame_index=np.tile(np.arange(FACES_PER_VIDEO) * 10, len(videos)), no_face=[[0, 5]])
    write_index(d, dataset=dataset, split="test")
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    _make_split(root, "toy", VIDEOS, seed=0)
    _make_split(root, "other", VIDEOS[:4], seed=1)
    return root, tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _args(*argv):
    return evaluate.get_args_parser().parse_args(list(argv))


def test_end_to_end_writes_every_output(setup, tmp_path):
    root, ckpt = setup
    out = tmp_path / "eval"
    summary = evaluate.main(_args("--checkpoint", str(ckpt), "--dataset", "toy", "--shards-root", str(root),
                                  "--frames", "2", "--perturb", "jpeg", "--overlays", "2",
                                  "--loader-workers", "0", "--batch-size", "4", "--out", str(out)))
    for name in ("metrics.json", "scores.csv", "frame_scores.csv", "report.md", "roc.png", "pr.png",
                 "robustness.png", "overlays/toy_test_confident_fakes.png", "overlays/toy_test_confident_reals.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    metrics = json.loads((out / "metrics.json").read_text())
    res = metrics["test_sets"]["toy/test"]
    p = res["protocol"]
    assert p["frames_per_video"] == {"median": 2, "min": 2, "max": 2} and p["frames_per_video_requested"] == 2
    assert p["frames_per_video_stored"] == {"median": 3, "min": 3, "max": 3}
    assert p["flip_test"] is True and p["aggregation"] == "logit-mean" and p["videos"] == "2 real / 4 fake"
    assert p["compression"] == "c23 (guessed from file names)"
    assert p["checkpoint_sha256"] == summary["test_sets"]["toy/test"]["protocol"]["checkpoint_sha256"]
    assert len(p["checkpoint_sha256"]) == 64
    assert p["sampled_frames_without_face"] == 1 and p["videos_without_faces (not scored)"] == 0
    v = res["video"]
    assert v["n_videos"] == 6 and v["n_real"] == 2 and v["n_fake"] == 4 and v["n_faces"] == 12
    for k in ("auc", "ap", "eer", "acc", "ar", "mf1", "f1", "frame_auc", "frame_ap"):
        assert v[k] is None or 0.0 <= v[k] <= 1.0, k
    assert set(res["per_method"]) == {"Deepfakes", "Face2Face"}
    assert res["per_method"]["Deepfakes"]["n_videos"] == 4
    rob = res["robustness"]["perturbations"]
    assert set(rob) == {"jpeg"} and all(len(a) == 5 for a in rob.values())

    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    # Same-named fakes under two methods stay two videos.
    assert len({(r["method"], r["video_id"]) for r in rows}) == 6
    assert all(int(r["n_frames"]) == 2 for r in rows)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    # Full precision: the AUC recomputed from the file is the report's, bit for bit.
    from sklearn.metrics import roc_auc_score
    toy = [r for r in rows if r["test_set"] == "toy/test"]
    assert roc_auc_score([int(r["label"]) for r in toy], [float(r["score"]) for r in toy]) == v["auc"]

    report = (out / "report.md").read_text()
    assert "toy/test / Deepfakes" in report and "Robustness" in report and "c23" in report


def test_several_datasets_one_table_and_consistent_scores(setup, tmp_path):
    root, ckpt = setup
    out = tmp_path / "eval2"
    evaluate.main(_args("--checkpoint", str(ckpt), "--dataset", "toy", "other", "--shards-root", str(root),
                        "--frames", "0", "--no-flip", "--aggregate", "prob-mean", "--overlays", "0",
                        "--loader-workers", "0", "--out", str(out)))
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["test_sets"]) == ["toy/test", "other/test"]
    assert metrics["test_sets"]["other/test"]["protocol"]["flip_test"] is False
    report = (out / "report.md").read_text()
    table = report.split("## Results")[1].split("##")[0]
    assert "| toy/test |" in table and "| other/test |" in table
    # The video score is the mean of the per-face probabilities written in frame_scores.csv.
    with open(out / "frame_scores.csv") as f:
        frames = [r for r in csv.DictReader(f) if r["test_set"] == "toy/test"]
    with open(out / "scores.csv") as f:
        videos = [r for r in csv.DictReader(f) if r["test_set"] == "toy/test"]
    assert len(frames) == len(VIDEOS) * FACES_PER_VIDEO
    for v in videos:
        logits = np.array([float(r["logit"]) for r in frames
                           if r["video_id"] == v["video_id"] and r["method"] == v["method"]])
        assert len(logits) == FACES_PER_VIDEO
        assert float(v["score"]) == pytest.approx(float(np.mean(1 / (1 + np.exp(-logits)))), abs=1e-5)


def test_perturb_collate_is_independent_of_batching():
    from model.eval import perturb

    def item(i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 32, 32, generator=g) * 2 - 1, "video_id": f"v{i}", "frame_index": i}

    stack = lambda items: torch.stack([it["image"] for it in items])  # noqa: E731
    collate = robustness.PerturbCollate("noise", 3, stack)
    together = collate([item(0), item(1), item(2)])
    apart = torch.cat([collate([item(0)]), collate([item(1), item(2)])])
    torch.testing.assert_close(together, apart)
    img = tensor_to_uint8(item(1)["image"])
    expected = perturb.apply(img, "noise", 3, seed=perturb.perturbation_seed("v1:1", "noise", 3))
    np.testing.assert_array_equal(tensor_to_uint8(together[1]), expected)


def test_tensor_to_uint8_inverts_normalisation():
    u8 = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    from model.data.tensors import to_tensor

    np.testing.assert_array_equal(tensor_to_uint8(to_tensor(u8)), u8)


def test_infer_compression():
    assert protocol.infer_compression(["a/c23/x.mp4", "b/c23/y.mp4"]) == "c23"
    assert protocol.infer_compression(["a/c23/x.mp4", "b/c40/y.mp4"]).startswith("mixed")
    assert protocol.infer_compression(["celeb/id0_0001.mp4"]).startswith("unknown")


def test_clear_errors_before_any_work(setup, tmp_path):
    root, ckpt = setup
    with pytest.raises(ValueError, match="rain"):
        evaluate.main(_args("--checkpoint", str(ckpt), "--dataset", "toy", "--shards-root", str(root),
                            "--perturb", "rain", "--out", str(tmp_path / "x")))
    with pytest.raises(ValueError, match="index.json"):
        evaluate.main(_args("--checkpoint", str(ckpt), "--dataset", "missing", "--shards-root", str(root),
                            "--out", str(tmp_path / "y")))
    with pytest.raises(ValueError, match="checkpoint not found"):
        evaluate.main(_args("--checkpoint", str(tmp_path / "nope.pt"), "--dataset", "toy", "--shards-root",
                            str(root), "--out", str(tmp_path / "z")))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.pt"):
        evaluate.main(_args("--checkpoint", str(corrupt), "--dataset", "toy", "--shards-root", str(root),
                            "--out", str(tmp_path / "w")))


def test_heatmap_overlay_leaves_cold_pixels_and_marks_hot_ones():
    from model.eval.report import heatmap_overlay

    face = np.full((64, 64, 3), 120, np.uint8)
    hm = np.zeros((16, 16), np.float32)
    np.testing.assert_array_equal(heatmap_overlay(face, hm), face)
    hm[4:8, 4:8] = 1.0
    out = heatmap_overlay(face, hm)
    assert out.shape == face.shape and out.dtype == np.uint8
    hot, cold = out[24, 24].astype(int), out[56, 56].astype(int)
    assert hot[0] > hot[1] + 40 and hot[0] > hot[2] + 40  # JET at 1.0 is (dark) red
    np.testing.assert_array_equal(cold, [120, 120, 120])


def test_synthetic_sbi_fakes_on_real_only_shards(tmp_path):
    """The demo's path: a real-only split evaluated against SBI fakes made from its own faces."""
    crops, lms = (list(x) for x in zip(*load_faces(128)))
    n = min(4, len(crops))
    d = tmp_path / "shards" / "realonly" / "test"
    write_shard(d / "shard-00000.h5", np.stack(crops[:n]), landmarks=np.stack(lms[:n]).astype(np.float32),
                videos=[{"id": "a", "label": 0, "dataset": "realonly"}, {"id": "b", "label": 0, "dataset": "realonly"}],
                video=np.arange(n) % 2)
    write_index(d, dataset="realonly", split="test")
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    evaluate.main(_args("--checkpoint", str(ckpt), "--shards", str(d), "--synthetic-fakes", "sbi",
                        "--overlays", "1", "--loader-workers", "0", "--out", str(out)))
    res = json.loads((out / "metrics.json").read_text())["test_sets"]["realonly/test"]
    assert res["protocol"]["fakes"] == "synthetic (sbi)"
    assert res["protocol"]["real faces without landmarks (no synthetic fake)"] == 0
    assert res["video"]["n_real"] == 2 and res["video"]["n_fake"] == 2
    assert (out / "overlays" / "realonly_test_confident_fakes.png").is_file()


@pytest.mark.slow
def test_end_to_end_on_shards_from_the_sample_videos(repo_root, tmp_path):
    """Pipeline on the shipped clips (test segment) -> tiny checkpoint -> evaluate with SBI fakes."""
    from pipeline.faces import DetectorConfig
    from pipeline.listing import list_videos
    from pipeline.manifest import load_manifest
    from pipeline.runner import run_extract, run_landmarks
    from pipeline.tasks import ExtractConfig, LandmarkConfig

    m = load_manifest(repo_root / "data_manifest.yaml")
    items = [type(it)(**{**it.__dict__, "n_frames": 6}) for it in list_videos(m, "sample", "test")]
    split_dir = tmp_path / "shards" / "sample" / "test"
    cfg = ExtractConfig(crop_size=128, detector=DetectorConfig(batch_size=4))
    assert not run_extract(items, split_dir, "sample", "test", cfg, workers=0).failed_shards
    run_landmarks(split_dir, LandmarkConfig(), workers=0)

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "eval"
    evaluate.main(_args("--checkpoint", str(ckpt), "--shards", str(split_dir), "--synthetic-fakes", "sbi",
                        "--frames", "4", "--overlays", "2", "--loader-workers", "0", "--batch-size", "4",
                        "--out", str(out)))
    for name in ("metrics.json", "scores.csv", "frame_scores.csv", "report.md", "roc.png", "pr.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list((out / "overlays").glob("*.png"))
    (res,) = json.loads((out / "metrics.json").read_text())["test_sets"].values()
    assert res["protocol"]["fakes"].startswith("synthetic")
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    # Two real clips and their SBI twins, each scored from its own faces.
    assert sorted(int(r["label"]) for r in rows) == [0, 0, 1, 1]
    assert all(0.0 <= float(r["score"]) <= 1.0 and int(r["n_frames"]) >= 1 for r in rows)
    assert 0.0 <= res["video"]["auc"] <= 1.0


def test_corrupt_shard_and_wrong_architecture_are_one_line(setup, tmp_path):
    import shutil

    from tests.shard_faults import flip_chunk_bytes

    root, ckpt = setup
    bad = tmp_path / "root"
    shutil.copytree(root / "other", bad / "other")
    for row in range(4 * FACES_PER_VIDEO):
        flip_chunk_bytes(bad / "other" / "test" / "shard-00000.h5", "faces", row)
    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--checkpoint", str(ckpt), "--dataset", "other", "--shards-root", str(bad),
                      "--out", str(tmp_path / "o"), "--loader-workers", "0"])
    msg = str(e.value.code)
    assert msg.startswith("evaluate.py: ") and "shard-00000.h5: dataset 'faces' row" in msg and "\n" not in msg
    # weights of head_conv=8 under a config that says 16: another architecture
    state = torch.load(ckpt, weights_only=True)
    state["config"]["model"]["head_conv"] = 16
    other = tmp_path / "other_arch.pt"
    save_checkpoint(other, state)
    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--checkpoint", str(other), "--dataset", "toy", "--shards-root", str(root),
                      "--out", str(tmp_path / "p")])
    msg = str(e.value.code)
    assert "other_arch.pt: weights do not match" in msg and "differ in shape" in msg and "\n" not in msg
    from model.predict import main as predict_main

    img = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(img), np.zeros((64, 64, 3), np.uint8))
    assert predict_main([str(img), "--checkpoint", str(other)]) == 1


def _write_folder(d, dataset, videos, faces_per_video, seed):
    """One pipeline-style split folder holding ``videos`` with ``faces_per_video[i]`` faces each."""
    rng = np.random.default_rng(seed)
    n = int(sum(faces_per_video))
    write_shard(d / "shard-00000.h5", rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8),
                videos=[dict(v, split="test", dataset=dataset) for v in videos],
                video=np.repeat(np.arange(len(videos)), faces_per_video),
                frame_index=np.concatenate([np.arange(k) * 5 for k in faces_per_video]))
    write_index(d, dataset=dataset, split="test")
    return d


@pytest.fixture(scope="module")
def own_folders(tmp_path_factory):
    """The issue's case: the pipeline's ad-hoc mode run once on real clips and once on fake clips."""
    root = tmp_path_factory.mktemp("mine")
    real = [{"id": f"r{i}", "method": "original", "label": 0, "path": f"real/r{i}.mp4"} for i in range(3)]
    fake = [{"id": f"f{i}", "method": "unknown", "label": 1, "path": f"fake/f{i}.mp4"} for i in range(3)]
    return (_write_folder(root / "real", "adhoc", real, [3, 2, 4], seed=3),
            _write_folder(root / "fake", "adhoc", fake, [3, 3, 1], seed=4))


def test_two_folders_as_one_set_match_sklearn_auc(setup, own_folders, tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    _, ckpt = setup
    real, fake = own_folders
    for how, argv in (("set", ["--set", f"mine={real},{fake}"]),
                      ("merge", ["--shards", str(real), str(fake), "--merge"])):
        out = tmp_path / how
        summary = evaluate.main(_args("--checkpoint", str(ckpt), *argv, "--frames", "0", "--overlays", "2",
                                      "--loader-workers", "0", "--out", str(out)))
        (name,) = summary["test_sets"]
        res = summary["test_sets"][name]
        with open(out / "scores.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 6 and {r["test_set"] for r in rows} == {name}
        auc = roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])
        assert np.isfinite(res["video"]["auc"]) and res["video"]["auc"] == pytest.approx(auc, abs=1e-6)
        # frames_per_video is what is stored and scored: 3, 2, 4, 3, 3, 1 faces.
        assert res["protocol"]["frames_per_video"] == {"median": 3, "min": 1, "max": 4}
        assert res["protocol"]["frames_per_video_stored"] == {"median": 3, "min": 1, "max": 4}
        assert res["protocol"]["videos"] == "3 real / 3 fake"
        report_md = (out / "report.md").read_text()
        assert "3 real / 3 fake" in report_md and "frame AUC" not in report_md
        assert (out / "overlays" / f"{name.replace('/', '_')}_confident_fakes.png").is_file()
    assert "3 real / 3 fake videos" in capsys.readouterr().out


def test_frames_cap_is_reported_as_scored(setup, own_folders, tmp_path):
    _, ckpt = setup
    real, fake = own_folders
    summary = evaluate.main(_args("--checkpoint", str(ckpt), "--set", f"mine={real},{fake}", "--frames", "2",
                                  "--overlays", "0", "--loader-workers", "0", "--all-metrics", "--out", str(tmp_path)))
    p = summary["test_sets"]["mine"]["protocol"]
    assert p["frames_per_video"] == {"median": 2, "min": 1, "max": 2} and p["frames_per_video_requested"] == 2
    assert "frame AUC" in (tmp_path / "report.md").read_text()


def test_single_class_sets_are_refused(setup, own_folders, tmp_path, capsys):
    _, ckpt = setup
    real, fake = own_folders
    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--checkpoint", str(ckpt), "--shards", str(real), str(fake), "--loader-workers", "0",
                      "--out", str(tmp_path / "a")])
    msg = str(e.value.code)
    assert msg.startswith("evaluate.py: nothing could be evaluated") and "\n" not in msg
    assert "only real videos (3): AUC needs both; add fakes or use --synthetic-fakes sbi" in msg
    assert "only fake videos (3)" in msg and "--merge" in msg
    assert not (tmp_path / "a" / "report.md").exists()
    # One refused set among good ones: the others are evaluated and the report says what was left out.
    summary = evaluate.main(_args("--checkpoint", str(ckpt), "--set", f"mine={real},{fake}", "--set",
                                  f"reals={real}", "--overlays", "0", "--loader-workers", "0", "--out", str(tmp_path / "b")))
    assert list(summary["test_sets"]) == ["mine"] and "reals" in summary["not_evaluated"]
    assert "only real videos" in (tmp_path / "b" / "report.md").read_text().split("## Not evaluated")[1]
    assert "reals: only real videos (3)" in capsys.readouterr().err


def test_the_same_video_in_two_merged_folders_is_refused(setup, own_folders, tmp_path):
    _, ckpt = setup
    real, fake = own_folders
    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--checkpoint", str(ckpt), "--set", f"twice={real},{real},{fake}", "--overlays", "0",
                      "--loader-workers", "0", "--out", str(tmp_path)])
    assert "twice: video adhoc/original/r0 is stored twice" in str(e.value.code)


def test_compression_from_the_manifest_else_marked_guessed(repo_root):
    manifest = repo_root / "data_manifest.yaml"
    assert protocol.resolve_compression(None, manifest, {"dfd": {""}}, ["x/c40/a.mp4"]).startswith(
        "c23 (from data_manifest.yaml datasets.dfd.compression")
    assert protocol.resolve_compression(None, manifest, {"mine": {""}}, ["x/c40/a.mp4"]) == \
        "c40 (guessed from file names)"
    assert protocol.resolve_compression(None, manifest, {"dfd": {"0123"}}, []).endswith(
        "the entry changed since these shards were made)")
    assert protocol.resolve_compression("c0", manifest, {"dfd": {""}}, []) == "c0 (given by --compression)"
    assert protocol.resolve_compression(None, None, {"mine": {""}}, ["a.mp4"]).startswith("unknown")


def test_checkpoint_folder_names_the_checkpoints_inside(setup, tmp_path):
    import shutil

    root, ckpt = setup
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ckpt, run / "best.pt")
    shutil.copy(ckpt, run / "last.pt")
    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--checkpoint", str(run), "--dataset", "toy", "--shards-root", str(root),
                      "--out", str(tmp_path / "o")])
    assert f"did you mean {run / 'best.pt'}?" in str(e.value.code) and "last.pt" in str(e.value.code)


def test_overlay_sheet_scales_each_heatmap_and_cuts_long_names_from_the_left(tmp_path):
    from model.eval.report import OverlayItem, cut_left, heatmap_overlay, heatmap_range, save_overlay_sheet

    face = np.full((64, 64, 3), 120, np.uint8)
    hm = np.full((16, 16), 0.40, np.float32)
    hm[4:8, 4:8] = 0.42  # a weak but real peak: invisible on a 0..1 scale, red when scaled to its own range
    assert heatmap_range(hm, None) == pytest.approx((0.40, 0.42))
    fixed, own = heatmap_overlay(face, hm, 0.0, 1.0), heatmap_overlay(face, hm, *heatmap_range(hm, None))
    assert abs(int(fixed[24, 24, 0]) - int(fixed[56, 56, 0])) < 15
    assert own[24, 24, 0] > own[24, 24, 2] + 40 and (own[56, 56] == face[56, 56]).all()
    assert cut_left("short", 10) == "short" and cut_left("a/very/long/name.mp4", 9) == "\u2026name.mp4"
    path = tmp_path / "sheet.png"
    save_overlay_sheet([OverlayItem(face, hm, "label fake", "x" * 200 + "_end f3")], path, "t")
    assert path.is_file() and path.stat().st_size > 1000


def test_report_names_the_model_and_warns_when_test_videos_were_trained_on(tmp_path, capsys):
    """report.md and metrics.json say which model (backbone, input, epoch, step, config hash, training data), and a
    test set holding videos of the checkpoint's training shards (the same file, or a copy: name and size) warns."""
    rng = np.random.default_rng(3)
    train_dir, test_dir = tmp_path / "mine" / "train", tmp_path / "mine" / "test"
    write_shard(train_dir / "shard-00000.h5", rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8),
                planned=[{"id": "a", "path": "/data/clips/real/a.mp4", "size": 1234, "mtime": 0}],
                attrs={"settings_hash": "t"})
    write_index(train_dir, "mine", "train")
    rows = [{"id": "real/a", "label": 0, "method": "original"}, {"id": "fake/b", "label": 1, "method": "X"}]
    write_shard(test_dir / "shard-00000.h5", rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8), videos=rows,
                video=np.repeat([0, 1], 3), planned=[{"id": "real/a", "path": "/copy/real/a.mp4", "size": 1234},
                                                     {"id": "fake/b", "path": "/copy/fake/b.mp4", "size": 99}],
                attrs={"settings_hash": "t"})
    write_index(test_dir, "mine", "test")
    from model.net.laanet import build_model

    torch.manual_seed(0)
    model = build_model({"backbone": "test_efficientnet", "input_size": SIZE, "head_conv": 8})
    ckpt = save_checkpoint(tmp_path / "trained.pt", {
        "model": model.state_dict(), "epoch": 7, "step": 420,
        "config": {"model": model.config.to_dict(), "data": {"shards": [str(train_dir)]}}})
    out = tmp_path / "eval"
    evaluate.main(_args("--checkpoint", str(ckpt), "--shards", str(test_dir), "--frames", "2", "--overlays", "0",
                        "--loader-workers", "0", "--out", str(out)))
    err = capsys.readouterr().err
    assert "WARNING: mine/test: 1 test videos are also in the checkpoint's training shards" in err
    card = json.loads((out / "metrics.json").read_text())["model"]
    assert (card["backbone"], card["input_size"], card["epoch"], card["step"]) == ("test_efficientnet", SIZE, 7, 420)
    assert card["training_data"] == [{"folder": str(train_dir), "dataset": "mine", "split": "train", "videos": 1}]
    assert len(card["config_hash"]) == 16
    report = (out / "report.md").read_text()
    assert "## Model" in report and "test_efficientnet" in report and "epoch, step | 7, 420" in report
    assert "WARNING test videos in the training shards" in report
