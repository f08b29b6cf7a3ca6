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
                top, left, w, h = (int(b.get(k)) for k in ("top", "left", "width", "height"))
                lm = np.array([[float(p.get("x")), float(p.get("y"))] for p in b.iter("part")], np.float32)
                yield img, np.array([left, top, left + w - 1, top + h - 1], np.float32), lm


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


def example_crops(size: int, names: tuple[str, ...] = SMALL_SET) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pipeline's geometry on the example faces: square crops of side 1.25 x the larger side of dlib's
    face box, centred on the box, resized (bicubic) to size x size, black outside the image.

    Returns [(crop (size, size, 3) uint8 RGB, landmarks (68, 2) float32 in crop pixels), ...]."""
    out = []
    for img, (x1, y1, x2, y2), lm in example_faces(names):
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        side = 1.25 * max(bw, bh)
        x0, y0 = x1 + bw / 2 - side / 2, y1 + bh / 2 - side / 2
        f = size / side
        mat = np.float32([[f, 0, -x0 * f], [0, f, -y0 * f]])
        crop = cv2.warpAffine(img, mat, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
        out.append((crop, ((lm + 0.5 - (x0, y0)) * f - 0.5).astype(np.float32)))
    return out


def write_example_split(root: Path, size: int, names: tuple[str, ...] = SMALL_SET, frames: int = 1) -> Path:
    """A split folder (index.json + one shard) with one real video per example face and `frames` frames
    each (frame k shifted by k % 5 - 2 px, so frames differ); returns the split folder."""
    from pipeline.shard_index import write_index
    from pipeline.shard_writer import write_shard

    faces = example_crops(size, names)
    imgs, lms, video = [], [], []
    for v, (face, lm) in enumerate(faces):
        for k in range(frames):
            dx = k % 5 - 2 if frames > 1 else 0
            imgs.append(np.roll(face, dx, axis=1))
            lms.append(lm + (dx, 0))
            video.append(v)
    split = Path(root) / "examples" / "train"
    write_shard(split / "shard-00000.h5", np.stack(imgs), videos=[{"id": f"{v:03d}"} for v in range(len(faces))],
                video=np.array(video), landmarks=np.stack(lms))
    write_index(split, dataset="examples", split="train")
    return split
