"""Real face crops for tests: dlib's example faces (tests/data/dlib_examples) with their 68 landmarks."""
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

FIXTURES = Path(__file__).parent / "data" / "dlib_examples"


def load_faces(size: int, margin: float = 1.6) -> list[tuple[np.ndarray, np.ndarray]]:
    """Square crops centred on each example face's landmarks, resized to size x size.

    Args:
        size: crop side in pixels.
        margin: crop side as a multiple of the landmarks' larger extent (1.6 ~ a 1.25x crop of a face box).
    Returns:
        [(crop (size, size, 3) uint8 RGB, landmarks (68, 2) float32 in crop pixels), ...]
    """
    out = []
    root = ET.parse(FIXTURES / "faces_with_landmarks.xml").getroot()
    for image in root.iter("image"):
        img = cv2.cvtColor(cv2.imread(str(FIXTURES / image.get("file"))), cv2.COLOR_BGR2RGB)
        for box in image.iter("box"):
            lm = np.array([[float(p.get("x")), float(p.get("y"))] for p in box.iter("part")], np.float32)
            side = margin * max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]))
            x0, y0 = lm[:, 0].mean() - side / 2, lm[:, 1].mean() - side / 2
            f = size / side
            mat = np.float32([[f, 0, -x0 * f], [0, f, -y0 * f]])
            out.append((cv2.warpAffine(img, mat, (size, size), borderMode=cv2.BORDER_REFLECT_101),
                        ((lm - (x0, y0)) * f).astype(np.float32)))
    return out
