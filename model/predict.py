"""Is this video fake? Score raw videos, frame folders or images with a trained LAA-Net checkpoint.

    python -m model.predict clip.mp4 --checkpoint runs/x/best.pt
    python -m model.predict my_videos/ face.jpg --checkpoint runs/x/best.pt --out out/predict

The same path as the pipeline and the evaluator: ``--frames`` evenly spaced frames (32), the pipeline's
crops (``pipeline.extract``: RetinaFace MobileNet-0.25, the best face per frame, 1.25x square crops at 384),
shown at evaluation's face scale (the reference's test geometry: 1.20x the box) and network size, the cls
logit of each face averaged with its mirror's (flip test), video probability = sigmoid of the mean face
logit. Frames where no face is found are counted, never guessed. Writes a CSV (one row per clip) and, per
clip, a PNG with the predicted artefact heatmap over the most fake-looking faces. The model and the face
detector are loaded once per run.

Faces are scored by ``model.eval.inference.score_faces``, the scorer of evaluate.py and of validation.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.data.face_scale import REFERENCE_TEST_SCALE
from model.eval.inference import score_faces
from pipeline.crop import CROP_SCALE, CROP_SIZE
from pipeline.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UserError, exit_status


class InputError(UserError):
    """Inputs that hold nothing to score."""


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
# network exactly as evaluation shows stored crops (model.data.face_scale.eval_view).
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
            overlay_faces: int = 4, device=None, hm_range: tuple[float, float] | None = None, amp=None
            ) -> Prediction:
    """Sample frames of ``path``, cut the pipeline's crops of the best face per frame, show them at
    ``face_scale`` as evaluation does, score them with the one scorer and aggregate.

    Args:
        path: a video (anything ffmpeg decodes), a folder of frame images, or an image. model: LAA-Net in eval mode.
        detector: a ``pipeline.faces.FaceDetector`` (built with the pipeline defaults when None).
        overlay: PNG to write with the heatmap over the ``overlay_faces`` most fake-looking faces (None: none),
            coloured over each heatmap's own range or ``hm_range`` (see model.eval.report.save_overlay_sheet).
        amp: the autocast dtype (model.device.select_amp), None for float32.
    """
    import torch

    from model.data.face_scale import eval_view
    from model.data.tensors import to_tensor
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
        cls, hm = score_faces(model, x, flip=flip, want_heatmap=overlay is not None and "hm" in model.heads, amp=amp)
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
                                         found, pred.probability, overlay_faces, Path(path).name, hm_range))
    return pred


def write_overlay(path: Path, crops: np.ndarray, heatmaps: np.ndarray | None, logits: np.ndarray,
                  frame_index: list[int], probability: float, k: int, name: str = "",
                  hm_range: tuple[float, float] | None = None) -> Path:
    """PNG with the ``k`` most fake-looking faces and their predicted heatmaps (or the plain faces), each
    heatmap coloured over its own range or ``hm_range``, with a colour bar."""
    from model.eval import metrics
    from model.eval.report import OverlayItem, save_overlay_sheet

    order = np.argsort(-logits)[:k]
    size = crops.shape[1]
    items = [OverlayItem(crops[i], heatmaps[i] if heatmaps is not None else np.zeros((size // 4, size // 4)),
                         f"face p={float(metrics.sigmoid(logits[i])):.3f}", f"{name} frame {frame_index[i]}")
             for i in order]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_overlay_sheet(items, path, f"fake probability {probability:.3f} (most fake-looking faces, heatmap right)",
                       columns=min(4, len(items)), hm_range=hm_range)
    return path


def _is_frame_folder(folder: Path) -> bool:
    """A folder of frame images (one clip): it holds images and no video (a folder with both is a collection)."""
    from pipeline.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    suffixes = {p.suffix.lower() for p in folder.iterdir() if p.is_file()}
    return bool(suffixes & set(IMAGE_SUFFIXES)) and not suffixes & set(VIDEO_SUFFIXES)


def expand_inputs(paths: list[str | Path], recursive: bool = False) -> tuple[list[Path], list[Path], int]:
    """The clips to score from the command line's files and folders: (clips, missing paths, files skipped).

    A file is a clip (video or image). A folder that holds images and no video is one clip (the frames of one
    video). Any other folder is a collection, scanned one level deep: its video files, its frame folders, and
    the videos and frame folders of its sub-folders (e.g. ``real/`` and ``fake/``); with ``recursive``, every
    level below. Other files in a collection (images beside videos included) are skipped and counted. Order: as
    given, folders sorted by name; a clip named twice is scored once.
    """
    from pipeline.video import VIDEO_SUFFIXES

    clips, missing, skipped = [], [], 0

    def scan(folder: Path, levels: int) -> None:
        nonlocal skipped
        for p in sorted(folder.iterdir()):
            if p.is_dir():
                if _is_frame_folder(p):
                    clips.append(p)
                elif levels > 0 or recursive:
                    scan(p, levels - 1)
            elif p.suffix.lower() in VIDEO_SUFFIXES:
                clips.append(p)
            else:
                skipped += 1

    for raw in paths:
        p = Path(raw)
        if not p.exists():
            missing.append(p)
        elif p.is_dir() and not _is_frame_folder(p):
            scan(p, 1)
        else:
            clips.append(p)
    return list(dict.fromkeys(clips)), missing, skipped


def overlay_names(clips: list[Path]) -> list[str]:
    """A distinct file stem per clip: its name, with as many parent folders as needed to tell clips apart."""
    parts = [p.resolve().with_suffix("").parts if p.is_file() else p.resolve().parts for p in clips]
    names = []
    for i, pp in enumerate(parts):
        for k in range(1, len(pp) + 1):
            name = "_".join(pp[-k:])
            if sum("_".join(q[-k:]) == name for q in parts) == 1:
                break
        names.append(name if sum(n == name for n in names) == 0 else f"{name}_{i}")
    return names


CSV_COLUMNS = ("path", "score", "verdict", "faces_used", "frames_sampled", "frames_without_face", "overlay", "error")


def write_csv(path: Path, rows: list[dict]) -> None:
    """predictions.csv (CSV_COLUMNS), written to a temporary name and renamed: a reader never sees half a file."""
    import csv

    from pipeline.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)


EXAMPLES = """examples:
  python -m model.predict clip.mp4 --checkpoint runs/x/best.pt
  python -m model.predict my_videos/ other.mp4 --checkpoint best.pt --out out/predict
  python -m model.predict dataset/ --recursive --checkpoint best.pt --hm-range 0,1 --out out/predict

Inputs: video files, images, a folder of frame images (one clip), or folders of those (their videos and
frame folders; --recursive: all levels below). Writes OUT/predictions.csv (path, score, verdict, faces used,
frames sampled, frames without a face, overlay, error) and one overlay PNG per clip. A clip that fails
(unreadable, no face) gets a row with the reason and the run goes on. Exit status: 0 when at least one clip was
scored (--strict: when every clip was); 1 when none was (or the checkpoint is unusable); 2 on a usage error.
"""




def get_args_parser() -> argparse.ArgumentParser:
    from model import cli as flags

    p = flags.parser("python -m model.predict", "Fake probability of videos and images, with heatmap overlays.",
                     EXAMPLES)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video or image files, folders of frame images, or folders holding those")
    p.add_argument("--checkpoint", default=None,
                   help="trained checkpoint (train.py or converted reference; a run folder names the ones inside)")
    p.add_argument("--out", default="out/predict", help="folder this command writes predictions.csv and the overlay PNGs into")
    p.add_argument("--recursive", action="store_true", help="scan input folders at every level, not one")
    p.add_argument("--frames", type=int, default=32, help="frames per video, evenly spaced")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="flip test: average the cls logits of each face and its mirror")
    p.add_argument("--aggregate", choices=("logit-mean", "prob-mean"), default="logit-mean",
                   help="video score: sigmoid of the mean face logit, or the mean face probability")
    p.add_argument("--face-scale", type=flags.face_scale_arg, default="reference", help=flags.FACE_SCALE_HELP)
    p.add_argument("--overlay-faces", type=int, default=4,
                   help="most fake-looking faces drawn per overlay PNG (0: no overlays)")
    p.add_argument("--hm-range", type=flags.hm_range_arg, default="image", metavar="image|LO,HI",
                   help="colour range of the overlays: 'image' stretches each heatmap from its own min to max "
                        "(stated on its colour bar), LO,HI a fixed range of probabilities, e.g. 0,1")
    flags.add_device_options(p, "off", "autocast precision of the network (off: float32)")
    p.add_argument("--json", action="store_true", help="print the full results as JSON (a list, one per clip)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any clip could not be scored (by default: 0 when at least one was)")
    return p


def _usage(msg: str) -> int:
    print(f"model.predict: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _score_clip(path: Path, overlay: Path | None, model, detector, device, amp, face_scale: float, sha: str,
                args: argparse.Namespace) -> tuple[dict, Prediction | None]:
    """The predictions.csv row of one clip and its Prediction (None when the clip could not be read); says the
    verdict on stdout (unless --json) and why there is none on stderr."""
    from tqdm import tqdm

    from pipeline.errors import one_line

    row = dict.fromkeys(CSV_COLUMNS, "") | {"path": str(path)}
    try:
        pred = predict(path, model, args.frames, args.flip, args.aggregate, face_scale, detector=detector,
                       overlay=overlay, overlay_faces=args.overlay_faces, device=device, hm_range=args.hm_range,
                       amp=amp)
    except (UserError, OSError) as e:  # this clip's input: a row with the reason, and the run goes on
        row["error"] = one_line(e)
        tqdm.write(f"model.predict: {row['error']}", file=sys.stderr)
        return row, None
    pred.checkpoint_sha256 = sha
    row.update(frames_sampled=pred.n_sampled, faces_used=len(pred.face_logits),
               frames_without_face=len(pred.no_face_frames), overlay=pred.overlay or "")
    if pred.probability is None:
        row["error"] = f"no face found in any of the {pred.n_sampled} sampled frames; no score"
        tqdm.write(f"{path}: {row['error']}", file=sys.stderr)
    else:
        verdict = "FAKE" if pred.probability >= 0.5 else "REAL"
        row.update(score=f"{pred.probability:.6f}", verdict=verdict)
        if not args.json:  # results on stdout, messages and the bar on stderr
            tqdm.write(f"{path}: fake probability {pred.probability:.4f} ({verdict} at 0.5) from "
                       f"{len(pred.face_logits)} faces in {pred.n_sampled} frames"
                       + (f" ({len(pred.no_face_frames)} without a face)" if pred.no_face_frames else ""),
                       file=sys.stdout)
    return row, pred


def main(argv: list[str] | None = None) -> int:
    """``python -m model.predict``: exit status 0 when a clip was scored, 1 when none was (or the checkpoint is
    unusable: one line), 2 on a usage error."""
    args = get_args_parser().parse_args(argv)
    if args.checkpoint is None:
        return _usage("no --checkpoint given; refusing to score with untrained weights (train one with "
                      "train.py or convert the reference checkpoint, then pass --checkpoint PATH)")
    if args.frames < 1:
        return _usage(f"--frames must be >= 1, got {args.frames}")
    return exit_status("model.predict", _run, args)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from model import load_checkpoint
    from model.checkpoint import resolve_checkpoint
    from model.data.face_scale import resolve_face_scale
    from model.device import keep_freed_memory, select_amp, select_device
    from pipeline.faces import FaceDetector
    from pipeline.files import file_sha256

    ckpt = resolve_checkpoint(args.checkpoint)
    clips, missing, skipped = expand_inputs(args.inputs, args.recursive)
    if not clips and not missing:
        raise InputError(f"no video, image or frame folder in {' '.join(args.inputs)}"
                         f"{'' if args.recursive else ' (sub-folders are scanned one level deep; --recursive: all)'}")
    device = select_device(args.device)
    amp, _ = select_amp(args.amp, device)
    keep_freed_memory()
    model = load_checkpoint(ckpt, map_location="cpu").to(device).eval()
    sha = file_sha256(ckpt)
    face_scale = resolve_face_scale(args.face_scale, crop_scale=STORED_CROP_SCALE)
    detector = FaceDetector()  # once for the whole run, like the model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "predictions.csv"
    rows = [dict.fromkeys(CSV_COLUMNS, "") | {"path": str(p), "error": "no such file or folder"} for p in missing]
    for p in missing:
        print(f"model.predict: {p}: no such file or folder", file=sys.stderr)
    preds = []
    names = overlay_names(clips)
    for path, name in zip(tqdm(clips, desc="predict", unit="clip", file=sys.stderr, dynamic_ncols=True), names):
        overlay = out / f"{name}_laanet.png" if args.overlay_faces > 0 else None
        row, pred = _score_clip(path, overlay, model, detector, device, amp, face_scale, sha, args)
        preds += [pred] if pred is not None else []
        rows.append(row)
        write_csv(csv_path, rows)  # after every clip: an interrupted run leaves the clips done so far
    scored = sum(1 for r in rows if r["score"] != "")
    if args.json:
        print(json.dumps([p.__dict__ for p in preds], indent=1))
    print(f"{scored} of {len(rows)} clips scored ({len(rows) - scored} failed"
          f"{f', {skipped} other files skipped' if skipped else ''}); flip test {'on' if args.flip else 'off'}, "
          f"{args.aggregate}, checkpoint sha256 {sha[:12]}; {csv_path}"
          + (f", overlays in {out}" if args.overlay_faces > 0 and scored else ""), file=sys.stderr)
    if args.strict and scored < len(rows):
        print(f"model.predict: {len(rows) - scored} of {len(rows)} clips not scored (--strict); see {csv_path}",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK if scored else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
