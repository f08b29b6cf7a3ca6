"""One video to its face crops: sample frames, detect faces, cut the 1.25x square crops. The only place
that does this: the runner calls it per video (and writes shards), model.predict per input file, so a video
scored by predict gets exactly the crops its shards would hold.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from pipeline.crop import CROP_SCALE, CROP_SIZE, crop_face
from pipeline.faces import FaceDetector
from pipeline.manifest import VideoItem
from pipeline.video import VideoError, iter_frames, probe, sample_indices


def detect_and_crop(frames: list[np.ndarray], indices: list[int], detector: FaceDetector, crop_scale: float,
                    crop_size: int):
    """Detect faces in a batch of RGB frames and crop each detection (square, `crop_scale` x the box side,
    resized to crop_size). Yields (frame index, detections, [(crop uint8 (S, S, 3), crop box (4,)), ...])."""
    for i, frame, det in zip(indices, frames, detector.detect(frames)):
        yield i, det, [crop_face(frame, det.boxes[k], crop_scale, crop_size) for k in range(len(det))]


# Faces whose detector box is smaller than this (its larger side, in frame pixels) are far below what the
# detector and the landmark model handle well: their crops are upscaled more than ~8x to CROP_SIZE.
MIN_FACE_PX = 48


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def failure(file: str, stage: str, reason: str, frame_index: int | None = None) -> dict:
    """A failures.jsonl row."""
    row = {"file": file, "stage": stage, "reason": reason, "time": _now()}
    if frame_index is not None:
        row["frame_index"] = int(frame_index)
    return row


def _small_face_warning(path: str, boxes: list[np.ndarray]) -> list[dict]:
    """One warning row when faces are smaller than MIN_FACE_PX (their crops are heavily upscaled)."""
    sides = [float(max(b[2] - b[0], b[3] - b[1])) for b in boxes]
    small = [x for x in sides if x < MIN_FACE_PX]
    if not small:
        return []
    return [failure(path, "faces", f"warning: {len(small)} of {len(sides)} faces are smaller than {MIN_FACE_PX} px "
                                   f"(smallest {min(small):.0f} px): their crops are upscaled from very few pixels")]


@dataclass
class VideoFaces:
    """Output of ``extract_video``: the crops of one video and what went wrong. Arrays have n rows."""
    row: dict | None
    faces: np.ndarray
    frame_index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    kps5: np.ndarray
    crop_boxes: np.ndarray
    no_face: list[int]
    n_decoded: int
    failures: list[dict]


def extract_video(item: VideoItem, detector: FaceDetector, crop_scale: float = CROP_SCALE, crop_size: int = CROP_SIZE,
                  decode_threads: int | None = 1) -> VideoFaces:
    """Sample, detect and crop one video; never raises for a bad video (it returns failures instead).

    Frames stream from ffmpeg in detector-sized batches, so memory holds one batch of frames plus the crops.
    ``row`` is None when the video could not be read at all.
    """
    s = crop_size
    faces, fidx, boxes, scores, kps, cboxes, no_face, fails = [], [], [], [], [], [], [], []
    try:
        info = probe(item.path)
    except VideoError as e:
        return VideoFaces(None, np.zeros((0, s, s, 3), np.uint8), np.zeros(0, np.int32), np.zeros((0, 4)),
                          np.zeros(0), np.zeros((0, 5, 2)), np.zeros((0, 4)), [], 0,
                          [failure(item.path, "decode", str(e).split(": ", 1)[-1])])
    row = {"id": item.id, "path": item.rel_path, "label": item.label, "method": item.method,
           "source": item.source, "target": item.target, "fps": info.fps, "n_frames": info.n_frames,
           "width": info.width, "height": info.height, "split": item.split, "dataset": item.dataset,
           "pixel_aspect": info.sar or "1:1"}
    if info.damage:
        # Frames are sampled among those that can be read; the damage is logged, not hidden.
        fails.append(failure(item.path, "decode", f"damaged or truncated stream, {info.n_frames} readable frames "
                                                  f"({info.damage})"))
    wanted = sample_indices(info.n_frames, item.n_frames, item.segment)
    if len(wanted) < item.n_frames:
        fails.append(failure(item.path, "frames", f"warning: {len(wanted)} of the {item.n_frames} requested frames "
                                                  f"(the video has {info.n_frames} in its segment)"))
    batch_idx: list[int] = []
    batch: list[np.ndarray] = []
    n_decoded = 0

    def flush() -> None:
        for i, det, crops in detect_and_crop(batch, batch_idx, detector, crop_scale, s):
            if len(det) == 0:
                no_face.append(i)
                fails.append(failure(item.path, "faces", "no face detected", i))
                continue
            for k, (crop, cb) in enumerate(crops):
                faces.append(crop)
                fidx.append(i)
                boxes.append(det.boxes[k])
                scores.append(det.scores[k])
                kps.append(det.kps5[k])
                cboxes.append(cb)
        batch_idx.clear()
        batch.clear()

    bad_images: list[tuple[int, str, str]] = []  # image folders: an unreadable image skips its frame only
    try:
        for i, frame in iter_frames(item.path, wanted, info, decode_threads, bad_images):
            n_decoded += 1
            batch_idx.append(i)
            batch.append(frame)
            if len(batch) == detector.cfg.batch_size:
                flush()
    except VideoError as e:
        fails.append(failure(item.path, "decode", str(e).split(": ", 1)[-1]))
    fails += [failure(file, "decode", reason, i) for i, file, reason in bad_images]
    if batch:
        flush()
    n = len(faces)
    fails += _small_face_warning(item.path, boxes)
    return VideoFaces(row=row,
                      faces=np.stack(faces) if n else np.zeros((0, s, s, 3), np.uint8),
                      frame_index=np.asarray(fidx, np.int32), boxes=np.asarray(boxes, np.float32).reshape(n, 4),
                      scores=np.asarray(scores, np.float32), kps5=np.asarray(kps, np.float32).reshape(n, 5, 2),
                      crop_boxes=np.asarray(cboxes, np.float32).reshape(n, 4), no_face=no_face,
                      n_decoded=n_decoded, failures=fails)
