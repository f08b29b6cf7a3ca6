"""Real face crops for tests: dlib's example faces (tests/data/dlib_examples) with their 68 landmarks."""
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

FIXTURES = Path(__file__).parent / "data" / "dlib_examples"
SMALL_SET = ("faces_with_landmarks.xml",)                                          # 8 faces, 2 images
FULL_SETS = ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml")  # 43 faces, 9 images


def example_faces(names: tuple[str, ...] = SMALL_SET) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """dlib's example faces as (image (H, W, 3) uint8 RGB, box (4,) float32 x1, y1, x2, y2 from dlib's
    detector, landmarks (68, 2) float32 from dlib's 68-point model), in image pixels."""
    for name in names:
        for image in ET.parse(FIXTURES / name).getroot().iter("image"):
            img = cv2.cvtColor(cv2.imread(str(FIXTURES / image.get("file"))), cv2.COLOR_BGR2RGB)
            for b in image.iter("box"):
                t, l, w, h = (int(b.get(k)) for k in ("top", "left", "width", "height"))
                lm = np.array([[float(p.get("x")), float(p.get("y"))] for p in b.iter("part")], np.float32)
                yield img, np.array([l, t, l + w - 1, t + h - 1], np.float32), lm


def load_faces(size: int, margin: float = 1.6) -> list[tuple[np.ndarray, np.ndarray]]:
    """Square crops centred on each example face's landmarks, resized to size x size.

    Args:
        size: crop side in pixels.
        margin: crop side as a multiple of the landmarks' larger extent (1.6 ~ a 1.25x crop of a face box).
    Returns:
        [(crop (size, size, 3) uint8 RGB, landmarks (68, 2) float32 in crop pixels), ...]
    """
    out = []
    for img, _, lm in example_faces():
        side = margin * max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]))
        x0, y0 = lm[:, 0].mean() - side / 2, lm[:, 1].mean() - side / 2
        f = size / side
        mat = np.float32([[f, 0, -x0 * f], [0, f, -y0 * f]])
        out.append((cv2.warpAffine(img, mat, (size, size), borderMode=cv2.BORDER_REFLECT_101),
                    ((lm - (x0, y0)) * f).astype(np.float32)))
    return out
