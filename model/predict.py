"""Is this video fake? Score one raw video or image with a trained LAA-Net checkpoint.

    python -m model.predict clip.mp4 --checkpoint runs/x/best.pt
    python -m model.predict face.jpg --checkpoint runs/x/best.pt --overlay face_laanet.png

The same path as the pipeline and the evaluator: ``--frames`` evenly spaced frames (32), the pipeline's
crops (``pipeline.extract``: RetinaFace MobileNet-0.25, the best face per frame, 1.25x square crops at 384),
shown at evaluation's face scale (the reference's test geometry: 1.20x the box) and network size, the cls
logit of each face averaged with its mirror's (flip test), video probability = sigmoid of the mean face
logit. Frames where no face is found are listed, never guessed. Writes a PNG with
the predicted artefact heatmap over the most fake-looking faces.

Faces are scored by ``model.eval.inference.score_faces``, the scorer of evaluate.py and of validation.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.data.datasets import REFERENCE_TEST_SCALE
from model.eval.inference import score_faces
from pipeline.extract import CROP_SCALE, CROP_SIZE


@dataclass
class Prediction:
    """What ``predict`` found for one file."""

    path: str
    probability: float | None  # fake probability of the whole file; None when no face was found
    n_sampled: int  # frames looked at
    frame_index: list[int] = field(default_factory=list)  # frames with a face
    face_logits: list[float] = field(default_factory=list)  # cls logit per face (flip test as configured)
    no_face_frames: list[int] = field(default_factory=list)  # sampled frames where no face was found
    overlay: str | None = None
    checkpoint_sha256: str = ""
    protocol: dict = field(default_factory=dict)


# predict cuts the pipeline's stored crops (pipeline.extract: CROP_SCALE, CROP_SIZE) and then shows them to the
# network exactly as evaluation shows stored crops (model.data.datasets.eval_view).
STORED_CROP_SCALE, STORED_CROP_SIZE = CROP_SCALE, CROP_SIZE


def face_crops(path: Path, n_frames: int, detector) -> tuple[np.ndarray, list[int], list[int], int]:
    """The pipeline's stored crops of one input: (crops uint8 (F, 384, 384, 3), frame index per crop, sampled
    frames without a face, frames sampled). Videos and frame folders go through pipeline.extract.extract_video,
    the function that fills the shards; a single image through the same detect-and-crop step."""
    from pipeline.extract import detect_and_crop, extract_video
    from pipeline.manifest import VideoItem
    from pipeline.video import IMAGE_SUFFIXES, VideoError, read_image

    if path.suffix.lower() in IMAGE_SUFFIXES:
        frame = read_image(path)
        _, det, crops = next(detect_and_crop([frame], [0], detector, STORED_CROP_SCALE, STORED_CROP_SIZE))
        if not crops:
            return np.zeros((0, STORED_CROP_SIZE, STORED_CROP_SIZE, 3), np.uint8), [], [0], 1
        return np.stack([crops[0][0]]), [0], [], 1
    item = VideoItem(id=path.stem, path=str(path), rel_path=path.name, label=0, split="predict", dataset="predict",
                     n_frames=n_frames)
    v = extract_video(item, detector, STORED_CROP_SCALE, STORED_CROP_SIZE)
    if v.row is None or v.n_decoded == 0:
        reasons = "; ".join(f["reason"] for f in v.failures if f["stage"] == "decode") or "no frame could be read"
        raise VideoError(f"{path}: {reasons}")
    return v.faces, [int(i) for i in v.frame_index], [int(i) for i in v.no_face], v.n_decoded


def predict(path: Path, model, n_frames: int = 32, flip: bool = True, aggregate: str = "logit-mean",
            face_scale: float | None = REFERENCE_TEST_SCALE, detector=None, overlay: Path | None = None,
            overlay_faces: int = 4, device=None) -> Prediction:
    """Sample frames of ``path``, cut the pipeline's crops of the best face per frame, show them at
    ``face_scale`` as evaluation does, score them with the one scorer and aggregate.

    Args:
        path: a video (anything ffmpeg decodes), a folder of frame images, or an image. model: LAA-Net in eval mode.
        detector: a ``pipeline.faces.FaceDetector`` (built with the pipeline defaults when None).
        overlay: PNG to write with the heatmap over the ``overlay_faces`` most fake-looking faces (None: none).
    """
    import torch

    from model.data.datasets import eval_view, to_tensor
    from model.eval import metrics
    from pipeline.faces import FaceDetector

    device = device or next(model.parameters()).device
    size = int(model.config.input_size)
    detector = detector or FaceDetector()
    stored, found, missing, n_sampled = face_crops(Path(path), n_frames, detector)
    pred = Prediction(path=str(path), probability=None, n_sampled=n_sampled, frame_index=found,
                      no_face_frames=missing,
                      protocol={"frames": n_frames, "flip_test": flip, "aggregation": aggregate,
                                "face_scale": face_scale, "detector": detector.name, "input_size": size})
    if not len(stored):
        return pred
    crops_arr = np.stack([eval_view(f, size, STORED_CROP_SCALE, face_scale) for f in stored])
    logits, hms = [], []
    for start in range(0, len(crops_arr), 16):
        x = to_tensor(crops_arr[start:start + 16]).to(device)
        cls, hm = score_faces(model, x, flip=flip, want_heatmap=overlay is not None and "hm" in model.heads)
        logits.append(cls.cpu().numpy())
        if hm is not None:
            hms.append(torch.sigmoid(hm)[:, 0].cpu().numpy())
    face_logits = np.concatenate(logits)
    video = metrics.aggregate_videos([str(path)] * len(face_logits), ["-"] * len(face_logits),
                                     np.zeros(len(face_logits), np.int64), face_logits, aggregate)
    pred.probability = float(video.score[0])
    pred.face_logits = [float(v) for v in face_logits]
    if overlay is not None:
        pred.overlay = str(write_overlay(overlay, crops_arr, np.concatenate(hms) if hms else None, face_logits,
                                         found, pred.probability, overlay_faces))
    return pred


def write_overlay(path: Path, crops: np.ndarray, heatmaps: np.ndarray | None, logits: np.ndarray,
                  frame_index: list[int], probability: float, k: int) -> Path:
    """PNG with the ``k`` most fake-looking faces and their predicted heatmaps (or the plain faces)."""
    from model.eval import metrics
    from model.eval.report import OverlayItem, save_overlay_sheet

    order = np.argsort(-logits)[:k]
    size = crops.shape[1]
    items = [OverlayItem(crops[i], heatmaps[i] if heatmaps is not None else np.zeros((size // 4, size // 4)),
                         f"frame {frame_index[i]}: p={float(metrics.sigmoid(logits[i])):.3f}") for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_overlay_sheet(items, path, f"fake probability {probability:.3f} (most fake-looking faces, heatmap right)",
                       columns=min(4, len(items)))
    return path


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.predict",
                                description="Fake probability of one video or image, with a heatmap overlay.")
    p.add_argument("input", help="video or image file, or a folder of frame images")
    p.add_argument("--checkpoint", default=None, help="trained checkpoint (train.py or converted reference)")
    p.add_argument("--frames", type=int, default=32, help="evenly spaced frames to sample from a video")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--aggregate", choices=("logit-mean", "prob-mean"), default="logit-mean")
    p.add_argument("--face-scale", type=float, default=REFERENCE_TEST_SCALE,
                   help="faces are shown at this many face-box sides, as evaluate.py shows them; default: the "
                        "reference's test geometry (the 1.25x crop minus 5/256 per side)")
    p.add_argument("--overlay", default=None, help="overlay PNG path (default: <input stem>_laanet.png here)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    path = Path(args.input)
    if args.checkpoint is None:
        print("model.predict: no --checkpoint given; refusing to score with untrained weights (train one with "
              "train.py or convert the reference checkpoint, then pass --checkpoint PATH)", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        print(f"model.predict: {ckpt}: checkpoint not found", file=sys.stderr)
        return 2
    if not path.exists():
        print(f"model.predict: {path}: no such file or folder", file=sys.stderr)
        return 2
    import torch

    from model import load_checkpoint
    from pipeline.faces import file_sha256
    from pipeline.video import VideoError

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = load_checkpoint(ckpt, map_location="cpu").to(device).eval()
    except ValueError as e:  # not a checkpoint, or weights that do not match its config
        print(f"model.predict: {e}", file=sys.stderr)
        return 2
    overlay = Path(args.overlay) if args.overlay else Path(f"{path.stem}_laanet.png")
    try:
        pred = predict(path, model, args.frames, args.flip, args.aggregate, args.face_scale, overlay=overlay,
                       device=device)
    except (VideoError, ValueError) as e:
        print(f"model.predict: {e}", file=sys.stderr)
        return 2
    pred.checkpoint_sha256 = file_sha256(ckpt)
    if pred.no_face_frames:
        print(f"{path}: no face found in {len(pred.no_face_frames)} of {pred.n_sampled} sampled frames "
              f"(frames {pred.no_face_frames[:10]}{' ...' if len(pred.no_face_frames) > 10 else ''})",
              file=sys.stderr)
    if args.json:
        print(json.dumps(pred.__dict__, indent=1))
    if pred.probability is None:
        print(f"{path}: no face found in any of the {pred.n_sampled} sampled frames; no score", file=sys.stderr)
        return 3
    if not args.json:
        verdict = "FAKE" if pred.probability >= 0.5 else "REAL"
        print(f"{path}: fake probability {pred.probability:.4f} ({verdict} at 0.5) from {len(pred.face_logits)} "
              f"faces in {pred.n_sampled} frames; flip test {'on' if args.flip else 'off'}, {args.aggregate}; "
              f"checkpoint sha256 {pred.checkpoint_sha256[:12]}; overlay {pred.overlay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
