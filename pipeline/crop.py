"""The stored face crop: a square of ``CROP_SCALE`` x the detector box's larger side around the box's centre,
resized to ``CROP_SIZE`` pixels (black outside the frame), and the mapping between crop and frame pixels.

The one home of this geometry: the pipeline cuts every stored crop with :func:`crop_face` (``pipeline.extract``),
the manifest's ``crop`` defaults and the shard attributes ``crop_scale`` / ``crop_size`` name these values, and
the model reads a shard's own ``crop_scale`` to know how many face-box sides its crops show.
"""
from __future__ import annotations

import cv2
import numpy as np

# The stored crop: a square of CROP_SCALE x the detector box's larger side, resized to CROP_SIZE pixels.
CROP_SCALE, CROP_SIZE = 1.25, 384


def square_crop_box(box: np.ndarray, scale: float = CROP_SCALE) -> np.ndarray:
    """The square crop around a detector box: side = ``scale`` x the larger box side, same centre.

    Args:
        box: (4,) x1, y1, x2, y2 in frame pixels.
    Returns:
        (4,) float32 x1, y1, x2, y2 on whole pixels (the exact region ``crop_face`` takes).
    """
    x1, y1, x2, y2 = [float(v) for v in box]
    side = max(1, int(round(scale * max(x2 - x1, y2 - y1))))
    left = int(round((x1 + x2) / 2 - side / 2))
    top = int(round((y1 + y2) / 2 - side / 2))
    return np.array([left, top, left + side, top + side], np.float32)


def crop_face(frame: np.ndarray, box: np.ndarray, scale: float = CROP_SCALE, size: int = CROP_SIZE
              ) -> tuple[np.ndarray, np.ndarray]:
    """Square crop of ``scale`` x the larger side of ``box``, resized to ``size``; black outside the frame.

    Args:
        frame: (H, W, 3) uint8 RGB. box: (4,) x1, y1, x2, y2 frame pixels.
    Returns:
        crop (size, size, 3) uint8 RGB; crop_box (4,) float32 the square region in frame pixels
        (a crop pixel (u, v) maps to frame pixel crop_box[:2] + (u, v) * side / size).
    """
    cb = square_crop_box(box, scale)
    left, top, right, bottom = (int(v) for v in cb)
    side = right - left
    h, w = frame.shape[:2]
    canvas = np.zeros((side, side, 3), np.uint8)
    sx1, sy1, sx2, sy2 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    if sx2 > sx1 and sy2 > sy1:
        canvas[sy1 - top:sy2 - top, sx1 - left:sx2 - left] = frame[sy1:sy2, sx1:sx2]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(canvas, (size, size), interpolation=interp) if side != size else canvas
    return crop, cb


def crop_to_frame(points: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Map (..., 2) crop-pixel points of a ``size`` crop back to frame pixels using its ``crop_box``."""
    side = float(crop_box[2] - crop_box[0])
    return points * (side / size) + crop_box[:2]


def frame_to_crop(points: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """Map (..., 2) frame-pixel points into the pixels of a ``size`` crop taken at ``crop_box``."""
    side = float(crop_box[2] - crop_box[0])
    return (points - crop_box[:2]) * (size / side)
