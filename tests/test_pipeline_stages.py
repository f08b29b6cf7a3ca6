"""Stage functions on their own: frame sampling/decoding, RetinaFace decoding and crops, dlib landmarks."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.crop import crop_face, crop_to_frame, frame_to_crop, square_crop_box
from pipeline.faces import FaceDetector, decode, nms, prior_boxes
from pipeline.landmarks import LandmarkPredictor
from pipeline.video import VideoError, iter_frames, probe, read_frames, sample_frames, sample_indices, select_expr
from tests.face_fixtures import FULL_SETS, example_faces


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(max_faces=1)


@pytest.fixture(scope="module")
def predictor():
    return LandmarkPredictor()


def test_sample_indices():
    idx = sample_indices(275, 32)
    assert len(idx) == 32 and idx[0] >= 0 and idx[-1] < 275 and np.all(np.diff(idx) > 0)
    assert np.ptp(np.diff(idx)) <= 1  # evenly spaced up to rounding
    assert list(sample_indices(5, 32)) == [0, 1, 2, 3, 4]
    train, test = sample_indices(120, 64, (0.0, 0.7)), sample_indices(120, 64, (0.7, 1.0))
    assert train.max() < 84 <= test.min() and not set(train) & set(test)
    with pytest.raises(ValueError):
        sample_indices(10, 3, (0.5, 0.5))


def test_select_expr_balanced():
    e = select_expr(range(300))
    depth = deepest = 0
    for c in e:
        depth += (c == "(") - (c == ")")
        deepest = max(deepest, depth)
    # ffmpeg's parser fails on deep nesting; depth grows with log2 of the number of frames
    assert e.count("eq(") == 300 and deepest <= 8


def test_probe_and_decode_match_opencv(sample_videos_dir):
    """carphone_pristine.mp4 stores 176x144 pixels of aspect 128:117 (QCIF): frames come at the display size
    192x144, so faces are not stretched (OpenCV's storage-size frames are resized to compare)."""
    p = sample_videos_dir / "carphone_pristine.mp4"
    info = probe(p)
    assert (info.width, info.height, info.n_frames, info.sar) == (192, 144, 120, "128:117")
    assert abs(info.fps - 29.97) < 0.01
    idx, frames = sample_frames(p, 5)
    assert frames.shape == (5, 144, 192, 3) and frames.dtype == np.uint8
    cap = cv2.VideoCapture(str(p))
    ref = []
    for _ in range(idx[-1] + 1):
        ok, f = cap.read()
        assert f.shape[:2] == (144, 176)
        ref.append(cv2.resize(f, (192, 144), interpolation=cv2.INTER_CUBIC)[:, :, ::-1])
    for i, f in zip(idx, frames):  # the same frame, decoded by another decoder
        assert np.abs(ref[i].astype(int) - f).mean() < 2.0
    assert [i for i, _ in iter_frames(p, [7, 3, 3])] == [3, 7]
    # decoder threads change the speed, never the frames (sample_frames let ffmpeg choose; 1 is the default)
    for threads in (1, 3):
        again = np.stack([f for _, f in iter_frames(p, idx, info, threads)])
        np.testing.assert_array_equal(again, frames)


def test_probe_errors(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty.mp4: empty file"):
        probe(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("not a video\n")
    with pytest.raises(VideoError, match="text.mp4: not a readable video"):
        read_frames(tmp_path / "text.mp4", [0])


def test_priors_and_decode_roundtrip():
    pri = prior_boxes(64, 96)
    assert pri.shape == ((8 * 12 + 4 * 6 + 2 * 3) * 2, 4)
    # zero offsets decode to the anchors themselves
    boxes, kps = decode(np.zeros((len(pri), 4), np.float32), np.zeros((len(pri), 10), np.float32), pri)
    np.testing.assert_allclose((boxes[:, :2] + boxes[:, 2:]) / 2, pri[:, :2], atol=1e-6)
    np.testing.assert_allclose(boxes[:, 2:] - boxes[:, :2], pri[:, 2:], atol=1e-6)
    np.testing.assert_allclose(kps[:, 0], pri[:, :2], atol=1e-6)


def test_nms():
    b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    s = np.array([0.9, 0.95, 0.5], np.float32)
    assert list(nms(b, s, 0.4)) == [1, 2]
    assert list(nms(b, s, 0.9)) == [1, 0, 2]


def test_crop_geometry_and_padding():
    frame = np.full((100, 200, 3), 200, np.uint8)
    box = np.array([-10, 10, 30, 50], np.float32)  # 40x40 box hanging off the left edge
    cb = square_crop_box(box, 1.25)
    assert cb[2] - cb[0] == cb[3] - cb[1] == 50 and (cb[0] + cb[2]) / 2 == 10 and (cb[1] + cb[3]) / 2 == 30
    crop, cb2 = crop_face(frame, box, 1.25, 100)
    np.testing.assert_array_equal(cb, cb2)
    assert crop.shape == (100, 100, 3)
    assert crop[:, :25].max() == 0 and crop[5:95, 35:].min() == 200  # black outside the frame, pixels inside
    pts = np.array([[0.0, 0.0], [50.0, 100.0]])
    np.testing.assert_allclose(frame_to_crop(crop_to_frame(pts, cb, 100), cb, 100), pts)


def test_detector_on_sample_clips(detector, sample_videos_dir):
    # The small-face clip: a face in every sampled frame, inside the frame, with 5 keypoints inside the box.
    _, frames = sample_frames(sample_videos_dir / "carphone_pristine.mp4", 12)
    dets = detector.detect(list(frames))
    assert all(len(d) == 1 for d in dets)
    for d in dets:
        x1, y1, x2, y2 = d.boxes[0]
        assert 30 < x2 - x1 < 90 and 0 <= x1 < x2 <= 176 and d.scores[0] > 0.9
        assert np.all((d.kps5[0] >= d.boxes[0, :2] - 2) & (d.kps5[0] <= d.boxes[0, 2:] + 2))
    # The speaker clip's audience cut-aways hold several faces per frame.
    many = FaceDetector(max_faces=10)
    _, frames = sample_frames(sample_videos_dir / "short_hamilton_clip.mp4", 8, (0.75, 1.0))
    assert max(len(d) for d in many.detect(list(frames))) >= 3
    # Batching does not change results; a frame of noise has no face.
    assert detector.cfg.batch_size == 1  # CPU default: one frame per call is fastest per core
    one = [detector.detect([f])[0] for f in frames[:3]]
    batched = FaceDetector(batch_size=3).detect(list(frames[:3]))
    for a, b in zip(one, batched):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert len(detector.detect([noise])[0]) == 0


def test_detector_downscales_large_frames(detector, sample_videos_dir):
    _, frames = sample_frames(sample_videos_dir / "carphone_pristine.mp4", 1)
    h, w = frames[0].shape[:2]
    big = cv2.resize(frames[0], (w * 4, h * 4), interpolation=cv2.INTER_CUBIC)
    small = FaceDetector(max_side=w).detect([big])[0]
    ref = detector.detect([frames[0]])[0]
    np.testing.assert_allclose(small.boxes[0] / 4, ref.boxes[0], atol=3)


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


class _Inputs:
    """Wraps a detector's network to record the input size of every call (which level ran)."""

    def __init__(self, det):
        self.net, self.sizes = det.net, []
        det.net = self

    def __call__(self, batch):
        self.sizes.append(batch.shape[1:3])
        return self.net(batch)


def test_detection_levels_follow_faces(sample_videos_dir):
    """A talking head is detected at a coarse level, near the full-resolution box; the levels halve from
    max_side down to min_side; face_px=None is the single pass at max_side."""
    _, frames = sample_frames(sample_videos_dir / "carphone_pristine.mp4", 4)
    big = [cv2.resize(f, (176 * 4, 144 * 4), interpolation=cv2.INTER_CUBIC) for f in frames]  # ~240-px face
    det = FaceDetector()
    assert (det.cfg.face_px, det.cfg.min_side, det.cfg.max_side) == (64, 160, 1280)
    assert det.levels(576, 704) == [0.25, 0.5, 1.0]
    assert det.levels(1080, 1920) == pytest.approx([1 / 12, 1 / 6, 1 / 3, 2 / 3])
    assert det.levels(144, 176) == [1.0] and FaceDetector(face_px=None).levels(1080, 1920) == [pytest.approx(2 / 3)]
    seen = _Inputs(det)
    coarse = det.detect(big)
    full = FaceDetector(max_side=None, face_px=None).detect(big)
    # 60 px at 176x144 is under face_px 64, 120 px at 352x288 is enough: no frame needs the 704 pass
    assert (144, 176) in seen.sizes and (288, 352) in seen.sizes and (576, 704) not in seen.sizes
    for c, f in zip(coarse, full):
        assert len(c) == len(f) == 1
        side = max(f.boxes[0, 2] - f.boxes[0, 0], f.boxes[0, 3] - f.boxes[0, 1])
        assert _iou(c.boxes[0], f.boxes[0]) > 0.8
        assert np.abs(c.boxes[0] - f.boxes[0]).max() < 0.1 * side
        assert np.abs(c.kps5[0] - f.kps5[0]).max() < 0.1 * side


def test_detection_keeps_small_face_in_large_frame(sample_videos_dir):
    """The carphone clip's ~60-px face centred in a black 1920x1080 frame (a small face in a DFDC-sized
    frame): the coarse levels cannot hold it at face_px, so the frame climbs to the finest level and the face
    is kept, where one pass at 640 loses it; the box matches the full-resolution pass."""
    _, frames = sample_frames(sample_videos_dir / "carphone_pristine.mp4", 4)
    canvas = []
    for f in frames:
        c = np.zeros((1080, 1920, 3), np.uint8)
        c[468:612, 864:1056] = f  # the clip's 192x144 display-size frames
        canvas.append(c)
    det = FaceDetector()
    seen = _Inputs(det)
    got = det.detect(canvas)
    full = FaceDetector(max_side=None, face_px=None).detect(canvas)
    assert (720, 1280) in seen.sizes  # climbed to max_side
    for g, f in zip(got, full):
        assert len(g) == len(f) == 1
        side = max(f.boxes[0, 2] - f.boxes[0, 0], f.boxes[0, 3] - f.boxes[0, 1])
        assert 864 < f.boxes[0, 0] < f.boxes[0, 2] < 1056 and 40 < side < 90
        assert _iou(g.boxes[0], f.boxes[0]) > 0.75 and np.abs(g.boxes[0] - f.boxes[0]).max() < 0.15 * side
    assert sum(len(d) for d in FaceDetector(max_side=640, face_px=None).detect(canvas)) < len(canvas)


def test_resnet50_offline_error(tmp_path):
    from pipeline.faces import DetectorWeightsError

    with pytest.raises(DetectorWeightsError, match="weights file not found"):
        FaceDetector(backend="resnet50", weights=str(tmp_path / "missing.pth"))


def test_resnet50_with_a_wrong_weights_file_names_the_file(tmp_path):
    """Fault matrix: --detector resnet50 --detector-weights junk.onnx gave `KeyError: 174812789` (or hundreds of
    missing keys) without naming the file."""
    import torch

    from pipeline.faces import DetectorWeightsError

    onnx = Path(__file__).resolve().parents[1] / "pipeline" / "weights"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(next(onnx.glob("*.onnx")).read_bytes()[:4096])
    with pytest.raises(DetectorWeightsError, match=r"junk.onnx: not a RetinaFace ResNet-50 weights file"):
        FaceDetector(backend="resnet50", weights=str(junk))
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(DetectorWeightsError, match=r"other.pth: not RetinaFace ResNet-50 weights: \d+ of its \d+ "
                                                   r"tensors missing"):
        FaceDetector(backend="resnet50", weights=str(other))


def test_landmarks_regression_dlib_examples(predictor):
    faces = list(example_faces())
    assert len(faces) == 8
    for img, box, ref in faces:
        assert ref.shape == (68, 2)
        # Same model, same box as dlib's own example output: agreement to rounding.
        assert np.abs(predictor.predict_in_box(img, box) - ref).mean() < 0.3


def test_landmarks_crop_path_matches_dlib_on_all_example_faces(predictor):
    """The pipeline path (1.25x crop, dlib's detector on the shrunk luma, predictor on the crop, points mapped
    back) on all 43 faces of dlib's example sets, at two crop sizes: every face found, near dlib's own points."""
    faces = list(example_faces(FULL_SETS))
    assert len(faces) == 43
    errs = []
    for img, box, ref in faces:
        for size in (256, 384):
            crop, cb = crop_face(img, box, 1.25, size)
            res = predictor.predict(crop)
            assert res.ok, f"no face found in a {size} px crop"
            errs.append(np.abs(crop_to_frame(res.points, cb, size) - ref).mean())
    assert max(errs) < 1.5 and np.mean(errs) < 0.65


def test_landmarks_none_is_nan(predictor):
    res = predictor.predict(np.zeros((128, 128, 3), np.uint8))
    assert not res.ok and np.isnan(res.points).all() and res.points.shape == (68, 2)
    pts, ok = predictor.predict_batch(np.zeros((2, 64, 64, 3), np.uint8))
    assert pts.shape == (2, 68, 2) and not ok.any()


def test_resnet50_loads_state_dict_by_path(tmp_path):
    """The paper backend's loading path, with a state dict of the same network (its weights are not shippable)."""
    import warnings

    import torch
    from retinaface.network import RetinaFace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = RetinaFace(name="Resnet50", pretrained=False, in_channels=256, out_channels=256,
                         return_layers={"layer2": 1, "layer3": 2, "layer4": 3})
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "r50.pth")
    det = FaceDetector(backend="resnet50", weights=str(tmp_path / "r50.pth"), score_threshold=0.999)
    out = det.detect([np.zeros((64, 80, 3), np.uint8)] * 2)
    assert det.name == "retinaface_resnet50" and len(out) == 2 and len(det.weights_sha256) == 64


def test_image_sequence_folder(tmp_path, sample_videos_dir):
    """Datasets shipped as face images (WildDeepfake): a folder of frames is read like a video."""
    _, frames = sample_frames(sample_videos_dir / "carphone_pristine.mp4", 3)
    for k, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{k * 5}.png"), f[:, :, ::-1])  # 0, 5, 10: natural order, not 0, 10, 5
    info = probe(tmp_path)
    assert (info.n_frames, info.width, info.height, info.codec) == (3, 192, 144, "images")  # display-size frames
    got = read_frames(tmp_path, [0, 1, 2], info)
    np.testing.assert_array_equal(got, frames)
    (tmp_path / "x.txt").write_text("ignored")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="holds no"):
        probe(empty)


def test_rotated_video_decodes_in_display_orientation(tmp_path, sample_videos_dir):
    import subprocess

    from pipeline.video import ffmpeg_exe

    rot = tmp_path / "rot.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", "90", "-i",
                    str(sample_videos_dir / "carphone_pristine.mp4"), "-c", "copy", str(rot)], check=True)
    info = probe(rot)
    assert (info.rotation, info.width, info.height, info.n_frames) == (90, 144, 192, 120)  # display size, turned
    _, frames = sample_frames(rot, 2)
    assert frames.shape == (2, 192, 144, 3)


def test_audio_only_file_is_reported_as_no_video_stream(tmp_path):
    import subprocess

    from pipeline.video import ffmpeg_exe

    audio = tmp_path / "talk.m4a"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
                    str(audio)], check=True)
    with pytest.raises(VideoError, match=r"talk.m4a: not a readable video \(no video stream\)"):
        probe(audio)


def test_detection_resolution_is_part_of_the_settings_hash():
    """Resume compares the settings hash: changing how the detection resolution is chosen must show."""
    from dataclasses import replace

    from pipeline.faces import DetectorConfig
    from pipeline.manifest import VideoItem
    from pipeline.resume import settings_hash
    from pipeline.tasks import ExtractConfig, extract_settings

    items = [VideoItem(id="a", path="/x/a.mp4", rel_path="a.mp4", label=0, split="test", dataset="d", n_frames=8)]

    def h(**kw):
        return settings_hash(extract_settings(ExtractConfig(detector=replace(DetectorConfig(), **kw)), items))

    base = h()
    assert extract_settings(ExtractConfig(), items)["face_px"] == 64
    assert len({base, h(face_px=48), h(face_px=None), h(min_side=320), h(max_side=640)}) == 5
    assert h(face_px=None, min_side=320) == h(face_px=None)  # min_side means nothing without face_px
    assert h(batch_size=4) == base  # speed settings do not shape the crops
