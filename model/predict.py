"""Is this video fake? Score one raw video or image with a trained LAA-Net checkpoint.

    python -m model.predict clip.mp4 --checkpoint runs/x/best.pt
    python -m model.predict face.jpg --checkpoint runs/x/best.pt --overlay face_laanet.png

Like the pipeline and the evaluator: ``--frames`` evenly spaced frames (32), RetinaFace (the pipeline's
default MobileNet-0.25 backend), the best face per frame cropped square at evaluation's face scale (the
reference's test geometry: 1.20x its box) and resized to the network input, the cls logit of each face averaged with its mirror's (flip test), video probability =
sigmoid of the mean face logit. Frames where no face is found are listed, never guessed. Writes a PNG with
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


def load_frames(path: Path, n_frames: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frame indices (k,) and RGB uint8 frames of an image (k = 1), or ``n_frames`` evenly spaced frames of a
    video or of a folder of frame images (as the pipeline reads them)."""
    import cv2

    from pipeline.video import IMAGE_SUFFIXES, sample_frames

    if path.suffix.lower() in IMAGE_SUFFIXES:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}: not a readable image")
        return np.zeros(1, np.int64), [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)]
    indices, frames = sample_frames(path, n_frames)
    return indices, list(frames)


def predict(path: Path, model, n_frames: int = 32, flip: bool = True, aggregate: str = "logit-mean",
            crop_scale: float = REFERENCE_TEST_SCALE, detector=None, overlay: Path | None = None, overlay_faces: int = 4,
            device=None) -> Prediction:
    """Sample frames of ``path``, detect and crop the best face per frame, score the faces and aggregate.

    Args:
        path: a video (anything ffmpeg decodes) or an image. model: LAA-Net in eval mode.
        detector: a ``pipeline.faces.FaceDetector`` (built with the pipeline defaults when None).
        overlay: PNG to write with the heatmap over the ``overlay_faces`` most fake-looking faces (None: none).
    """
    import torch

    from model.eval import metrics
    from model.data.datasets import to_tensor
    from pipeline.faces import FaceDetector, crop_face

    device = device or next(model.parameters()).device
    size = int(model.config.input_size)
    indices, frames = load_frames(path, n_frames)
    detector = detector or FaceDetector()
    detections = detector.detect(frames)
    crops, found, missing = [], [], []
    for i, frame, det in zip(indices, frames, detections):
        if len(det) == 0:
            missing.append(int(i))
            continue
        crop, _ = crop_face(frame, det.boxes[0], scale=crop_scale, size=size)
        crops.append(crop)
        found.append(int(i))
    pred = Prediction(path=str(path), probability=None, n_sampled=len(indices), frame_index=found,
                      no_face_frames=missing,
                      protocol={"frames": n_frames, "flip_test": flip, "aggregation": aggregate,
                                "crop_scale": crop_scale, "detector": detector.name, "input_size": size})
    if not crops:
        return pred
    crops_arr = np.stack(crops)
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
    p.add_argument("--crop-scale", type=float, default=REFERENCE_TEST_SCALE,
                   help="face crop side in face-box sides; default: evaluation's reference test geometry "
                        "(the 1.25x crop minus 5/256 per side)")
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
        pred = predict(path, model, args.frames, args.flip, args.aggregate, args.crop_scale, overlay=overlay,
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
