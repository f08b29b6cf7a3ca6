"""dlib 68-point facial landmarks on face crops.

The shape predictor is dlib's ``shape_predictor_68_face_landmarks.dat`` from the ``face-recognition-models``
package (located on disk with importlib, without importing that package, whose import needs pkg_resources).
dlib needs a face rectangle: ``predict`` finds it with dlib's HOG frontal face detector on the crop (so the
points come from dlib's own detector-predictor pairing, as the model was trained), keeping the largest
detection; when dlib finds no face the result is all NaN and ``ok`` is False.

The detector runs on the crop's luma shrunk to ``detect_size`` (144) pixels; the predictor runs on the
full-resolution RGB crop. At 144 px the face (~80 % of a 1.25x crop) is near the detector's 80 px window,
the scale dlib's own boxes are found at in ordinary photos. On dlib's 43 example faces (1.25x crops at 256
and 384 px, ``python -m bench.bench_pipeline landmarks``) this finds 86 of 86 faces at a mean distance of
0.51 px from dlib's own points (worst face 1.07 px) in 2.3 ms per crop; the RGB crop shrunk to 192 px finds
82 (0.58 px, worst 4.6 px, 3.6 ms) and the RGB crop as it is finds 82 (0.51 px, worst 1.2 px, 9.4 ms).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

N_POINTS = 68
MODEL_FILE = "shape_predictor_68_face_landmarks.dat"


class LandmarkModelError(UserError):
    """The 68-point model file cannot be found or loaded."""


def default_model_path() -> Path:
    """Location of the 68-point .dat inside the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkModelError("package face-recognition-models is not installed (pip install "
                                 "face-recognition-models==0.3.0); it provides " + MODEL_FILE)
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILE
    if not path.is_file():
        raise LandmarkModelError(f"{path}: {MODEL_FILE} missing from the face-recognition-models package")
    return path


def resolve_model_path(model_path: str | os.PathLike | None = None) -> Path:
    """The 68-point .dat to load: ``model_path`` if given, else the packaged one; raises if it is missing."""
    path = Path(model_path) if model_path else default_model_path()
    if not path.is_file():
        raise LandmarkModelError(f"{path}: landmark model file not found")
    return path


@dataclass
class LandmarkResult:
    """points: (68, 2) float32 in the pixels of the image given (NaN if none); ok: dlib found a face."""
    points: np.ndarray
    ok: bool


class LandmarkPredictor:
    """dlib HOG face detector + 68-point shape predictor. Build once per process (loading takes ~1 s).

    Args:
        model_path: the .dat file; default from ``face-recognition-models``.
        upsample: times dlib's detector upsamples the crop (0 suits 1.25x crops of >= ~100 px; use 1 for
            smaller crops, at about 4x the cost).
        detect_size: larger crops are shrunk to this side for dlib's face *detector* only (the face fills
            ~80 % of a 1.25x crop, above the detector's 80 px window, and HOG cost grows with the pixel
            count); the shape predictor always runs on the full-resolution crop. None = never shrink.
        gray: run the detector on the crop's luma (one HOG channel instead of dlib's max over three).
    """

    def __init__(self, model_path: str | os.PathLike | None = None, upsample: int = 0,
                 detect_size: int | None = 144, gray: bool = True):
        import dlib

        from pipeline.files import file_sha256

        self.model_path = resolve_model_path(model_path)
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(self.model_path))
        self.upsample = int(upsample)
        self.detect_size = detect_size
        self.gray = gray
        # Provenance string stored in each shard (attribute ``landmark_detector``).
        self.settings = (f"dlib_hog {'luma' if gray else 'rgb'}@{detect_size or 'full'} upsample={self.upsample}")
        self.model_sha256 = file_sha256(self.model_path)
        self._dlib = dlib

    def predict_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 points for a known face rectangle.

        Args:
            image: (H, W, 3) uint8 RGB. box: (4,) x1, y1, x2, y2 in image pixels.
        Returns:
            (68, 2) float32 x, y in image pixels.
        """
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        shape = self.predictor(np.ascontiguousarray(image), self._dlib.rectangle(x1, y1, x2, y2))
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """The largest dlib face rectangle in ``image`` as (4,) x1, y1, x2, y2, or None."""
        import cv2

        scale = 1.0
        if self.gray:  # before the shrink: one channel to resample instead of three (half the time)
            image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if self.detect_size and max(image.shape[:2]) > self.detect_size:
            scale = self.detect_size / max(image.shape[:2])
            image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                               interpolation=cv2.INTER_AREA)
        rects = self.detector(np.ascontiguousarray(image), self.upsample)
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        return np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32) / scale

    def predict(self, crop: np.ndarray) -> LandmarkResult:
        """Landmarks of the face in a crop (H, W, 3) uint8 RGB, in crop pixels; NaN and ok=False if none."""
        box = self.detect(crop)
        if box is None:
            return LandmarkResult(np.full((N_POINTS, 2), np.nan, np.float32), False)
        return LandmarkResult(self.predict_in_box(crop, box), True)

    def predict_batch(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks for (N, S, S, 3) crops -> points (N, 68, 2) float32 (NaN rows where none), ok (N,) bool."""
        pts = np.full((len(crops), N_POINTS, 2), np.nan, np.float32)
        ok = np.zeros(len(crops), bool)
        for i, c in enumerate(crops):
            r = self.predict(c)
            pts[i], ok[i] = r.points, r.ok
        return pts, ok
