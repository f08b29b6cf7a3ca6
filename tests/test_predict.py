"""One-command prediction on a raw video or image, and the flip-test scoring it shares with evaluate.py."""
import numpy as np
import pytest
import torch

from model import build_model, predict
from model.checkpoint import save_checkpoint
from model.eval.inference import score_faces


def _tiny_model():
    torch.manual_seed(0)
    return build_model({"backbone": "test_efficientnet", "input_size": 64, "head_conv": 8}).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model = _tiny_model()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": {"model": model.config.to_dict()},
                           "epoch": 0, "step": 0})
    return path


def test_flip_test_averages_logits_of_image_and_mirror():
    model = _tiny_model()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        plain = model(x)
        mirrored = model(x.flip(-1))
    cls, hm = score_faces(model, x, flip=True, want_heatmap=True)
    torch.testing.assert_close(cls, (plain["cls"][:, 0] + mirrored["cls"][:, 0]) / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hm, (plain["hm"] + mirrored["hm"].flip(-1)) / 2, rtol=1e-5, atol=1e-5)
    cls_noflip, hm_none = score_faces(model, x, flip=False)
    torch.testing.assert_close(cls_noflip, plain["cls"][:, 0], rtol=1e-5, atol=1e-5)
    assert hm_none is None
    # A mirror-symmetric input gives the same logit with and without the flip test.
    sym = torch.cat([x[:, :, :, :32], x[:, :, :, :32].flip(-1)], dim=-1)
    torch.testing.assert_close(score_faces(model, sym, flip=True)[0],
                               score_faces(model, sym, flip=False)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_predict_on_sample_video(tiny_checkpoint, sample_videos_dir, tmp_path, capsys):
    video = sample_videos_dir / "carphone_pristine.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not present")
    overlay = tmp_path / "carphone_pristine_laanet.png"
    rc = predict.main([str(video), "--checkpoint", str(tiny_checkpoint), "--frames", "3", "--out", str(tmp_path),
                       "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    import json

    (result,) = json.loads(out)
    assert 0.0 <= result["probability"] <= 1.0
    assert result["n_sampled"] == 3
    assert len(result["face_logits"]) + len(result["no_face_frames"]) == 3
    assert overlay.is_file() and overlay.stat().st_size > 1000


def test_no_face_is_reported_not_guessed(tiny_checkpoint, tmp_path, capsys):
    import cv2

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 90, np.uint8))
    rc = predict.main([str(blank), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no face found" in err and "blank.png" in err
    assert not list((tmp_path / "o").glob("*.png"))


def test_refuses_without_checkpoint(tmp_path, capsys):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    assert predict.main([str(img)]) == 2
    assert "refusing to score with untrained weights" in capsys.readouterr().err
    assert predict.main([str(img), "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    assert predict.main([str(img), "--checkpoint", str(corrupt)]) == 1
    err = capsys.readouterr().err.strip()
    assert "corrupt.pt" in err and len(err.splitlines()) == 1


def test_unreadable_input_gives_one_line_error(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    assert predict.main([str(bad), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if "broken.mp4" in ln]
    assert len(err) == 1 and err[0].startswith("model.predict: ") and "Traceback" not in err[0]


def test_predict_shows_the_network_the_faces_evaluation_shows(tmp_path, sample_videos_dir):
    """One crop path: predict's inputs for a video equal the EvalDataset images of the shards the pipeline
    writes for the same video (same frames, same crops, same face scale, same resize)."""
    from pathlib import Path

    from model.data.datasets import EvalDataset
    from model.data.face_scale import eval_view
    from model.data.tensors import to_tensor
    from model.predict import STORED_CROP_SCALE, face_crops
    from pipeline.faces import FaceDetector
    from pipeline.manifest import VideoItem
    from pipeline.runner import run_extract
    from pipeline.tasks import ExtractConfig

    video = Path(sample_videos_dir) / "carphone_pristine.mp4"
    item = VideoItem(id="carphone", path=str(video), rel_path=video.name, label=0, split="test", dataset="x",
                     n_frames=5)
    split = tmp_path / "x" / "test"
    assert not run_extract([item], split, "x", "test", ExtractConfig(), workers=0).failed_shards
    ds = EvalDataset([str(split)], 128)
    evaluation = torch.stack([ds[i]["image"] for i in sorted(range(len(ds)), key=lambda i: ds[i]["frame_index"])])
    crops, frames, missing, _ = face_crops(video, 5, FaceDetector())
    assert len(crops) == len(ds) > 0 and frames == sorted(ds[i]["frame_index"] for i in range(len(ds)))
    ours = torch.stack([to_tensor(eval_view(c, 128, STORED_CROP_SCALE, ds.face_scale)) for c in crops])
    assert torch.equal(ours, evaluation)


def test_batch_over_two_videos_and_a_broken_file(tiny_checkpoint, sample_videos_dir, tmp_path, capsys, monkeypatch):
    """Two videos in a folder plus an unreadable file: a CSV row each, two overlays, the model and the face
    detector built once, exit 0 (something was scored)."""
    import csv
    import shutil

    from pipeline import faces

    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("carphone_pristine.mp4", "short_hamilton_clip.mp4"):
        if not (sample_videos_dir / name).is_file():
            pytest.skip(f"{name} not present")
        shutil.copy(sample_videos_dir / name, folder / name)
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("not a clip")
    built = []
    real_init = faces.FaceDetector.__init__
    monkeypatch.setattr(faces.FaceDetector, "__init__",
                        lambda self, *a, **k: built.append(1) or real_init(self, *a, **k))
    out = tmp_path / "out"
    assert predict.main([str(folder), "--checkpoint", str(tiny_checkpoint), "--frames", "2", "--overlay-faces", "2",
                         "--out", str(out)]) == 0
    with open(out / "predictions.csv") as f:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert set(rows) == {"broken.mp4", "carphone_pristine.mp4", "short_hamilton_clip.mp4"}
    assert rows["broken.mp4"]["score"] == "" and "broken.mp4" in rows["broken.mp4"]["error"]
    for name in ("carphone_pristine.mp4", "short_hamilton_clip.mp4"):
        r = rows[name]
        assert 0.0 <= float(r["score"]) <= 1.0 and r["verdict"] in ("REAL", "FAKE") and r["error"] == ""
        assert int(r["faces_used"]) + int(r["frames_without_face"]) == int(r["frames_sampled"]) == 2
        assert (out / f"{name[:-4]}_laanet.png").is_file()
    assert built == [1]
    assert "2 of 3 clips scored (1 failed, 1 other files skipped)" in capsys.readouterr().err


def test_expand_inputs_one_level_or_recursive(tmp_path):
    from model.predict import expand_inputs, overlay_names

    (tmp_path / "a" / "frames_x").mkdir(parents=True)
    (tmp_path / "a" / "frames_x" / "0001.png").write_bytes(b"")
    (tmp_path / "a" / "deep" / "more").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "more" / "v.mp4").write_bytes(b"")
    (tmp_path / "a" / "v.mp4").write_bytes(b"")
    (tmp_path / "a" / "readme.txt").write_bytes(b"")
    clips, missing, skipped = expand_inputs([tmp_path / "a", tmp_path / "nope.mp4"])
    assert clips == [tmp_path / "a" / "frames_x", tmp_path / "a" / "v.mp4"] and missing == [tmp_path / "nope.mp4"]
    assert skipped == 1
    clips, _, _ = expand_inputs([tmp_path / "a"], recursive=True)
    assert tmp_path / "a" / "deep" / "more" / "v.mp4" in clips and len(clips) == 3
    # a frame folder given directly is one clip; the two v.mp4 get distinct overlay names
    assert expand_inputs([tmp_path / "a" / "frames_x"])[0] == [tmp_path / "a" / "frames_x"]
    names = overlay_names(clips)
    assert len(set(names)) == 3 and "frames_x" in names and "a_v" in names and "more_v" in names


def test_checkpoint_folder_names_the_checkpoints_inside(tiny_checkpoint, tmp_path, capsys):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    assert predict.main([str(img), "--checkpoint", str(tiny_checkpoint.parent)]) == 1
    assert f"did you mean {tiny_checkpoint}?" in capsys.readouterr().err


def test_missing_detector_weights_are_one_line_not_a_traceback(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Fault matrix: model.predict printed a traceback when the shipped RetinaFace weights were missing
    (extract-frames gave one line for the same case)."""
    import cv2

    import pipeline.faces

    monkeypatch.setattr(pipeline.faces, "MOBILENET_ONNX", tmp_path / "gone.onnx")
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.full((64, 64, 3), 90, np.uint8))
    assert predict.main([str(img), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("model.predict: ") and "gone.onnx" in err[0], err


def test_a_folder_with_videos_and_an_image_is_a_collection_and_real_fake_folders_are_found(tmp_path):
    """Fault matrix: a folder holding videos and one image was scored as one image sequence, its videos never
    mentioned; the README's real/ + fake/ layout needed --recursive."""
    from model.predict import expand_inputs

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("a.mp4", "b.mp4", "cover.png"):
        (mixed / name).write_bytes(b"")
    clips, _, skipped = expand_inputs([mixed])
    assert clips == [mixed / "a.mp4", mixed / "b.mp4"] and skipped == 1
    mine = tmp_path / "mine"
    for sub in ("real", "fake"):
        (mine / sub).mkdir(parents=True)
        (mine / sub / f"{sub}1.mp4").write_bytes(b"")
    assert expand_inputs([mine])[0] == [mine / "fake" / "fake1.mp4", mine / "real" / "real1.mp4"]


def test_strict_exits_1_when_any_clip_is_not_scored(tiny_checkpoint, sample_videos_dir, tmp_path, capsys):
    video = sample_videos_dir / "carphone_pristine.mp4"
    args = [str(video), str(tmp_path / "missing.mp4"), "--checkpoint", str(tiny_checkpoint), "--frames", "2",
            "--overlay-faces", "0", "--out", str(tmp_path / "o")]
    assert predict.main(args) == 0
    assert predict.main([*args, "--strict"]) == 1
    assert "1 of 2 clips not scored (--strict)" in capsys.readouterr().err
