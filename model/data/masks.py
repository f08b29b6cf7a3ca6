"""Face masks from 68 dlib landmarks: the four hull types of the SBI recipe (as the reference builds them), a forehead extension, and the
landmark index map of a horizontal flip.

Landmarks are (68, 2) float arrays of (x, y) in pixel coordinates (pixel centres at integers), in the iBUG
300-W / dlib order: 0-16 jaw (from the image-left side), 17-21 and 22-26 brows, 27-30 nose bridge,
31-35 nostrils, 36-41 and 42-47 eyes, 48-59 outer lips, 60-67 inner lips.
Masks are uint8 (H, W) with values 0/1. Everything here is a pure function of its arguments.
"""
from __future__ import annotations

import cv2
import numpy as np

MASK_KINDS = ("facehull", "dfl_full", "extended", "components")
# Forehead height over nose length (see forehead_points); chosen with `python -m bench.bench_data forehead`.
FOREHEAD_RATIO = 0.9

# Sub-pixel precision for cv2.fillConvexPoly (coordinates in 1/16 pixel).
_SHIFT = 4

JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
NOSE = np.arange(27, 36)
EYE_A = np.arange(36, 42)   # image-left eye of an upright frontal face
EYE_B = np.arange(42, 48)
MOUTH = np.arange(48, 68)


def _flip_index() -> np.ndarray:
    """Index map of a horizontal flip: point i of the flipped face is point FLIP_INDEX[i] of the original."""
    pairs = [(i, 16 - i) for i in range(17)]                                     # jaw
    pairs += [(17 + i, 26 - i) for i in range(10)]                               # brows
    pairs += [(27, 27), (28, 28), (29, 29), (30, 30)]                            # nose bridge
    pairs += [(31, 35), (32, 34), (33, 33), (34, 32), (35, 31)]                  # nostrils
    eye = {36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46}
    eye.update({v: k for k, v in eye.items()})
    pairs += sorted(eye.items())
    outer = {48: 54, 49: 53, 50: 52, 51: 51, 55: 59, 56: 58, 57: 57}
    outer.update({v: k for k, v in outer.items()})
    pairs += sorted(outer.items())
    inner = {60: 64, 61: 63, 62: 62, 65: 67, 66: 66}
    inner.update({v: k for k, v in inner.items()})
    pairs += sorted(inner.items())
    idx = np.full(68, -1, dtype=np.int64)
    for a, b in pairs:
        idx[a] = b
    assert (idx >= 0).all() and (idx[idx] == np.arange(68)).all()
    return idx


FLIP_INDEX = _flip_index()


def flip_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored image of width `width`.

    x -> width - 1 - x (pixel-centre convention, matching cv2.flip), then the indices are remapped so that
    point i keeps its anatomical meaning (e.g. the image-left eye corner 36 of the flipped face comes from the
    original point 45). (68, 2) -> (68, 2), same dtype.
    """
    out = landmarks[FLIP_INDEX].copy()
    out[:, 0] = (width - 1) - out[:, 0]
    return out


def forehead_points(landmarks: np.ndarray, height_ratio: float = FOREHEAD_RATIO, n: int = 9) -> np.ndarray:
    """Points on an upper half-ellipse over the brows, standing in for the forehead points of an 81-point model.

    Frame of the face: v = unit vector from the image-left eye centre to the other eye centre, u = v rotated
    to point up the face. The ellipse is centred on the mean of the 10 brow points, its half-width is half the
    distance between the outer brow ends (points 17 and 26) along v, and its height is `height_ratio` times
    the nose length (nasion 27 to subnasale 33, along u): a forehead is about one nose length high. Measured
    on dlib's example faces, this keeps the added area as skin-coloured as the eye band; an ellipse as wide
    as the jaw (points 0-16) reached into hair at the temples (62 % skin-coloured instead of 75 %).
    Rotation-aware, so tilted faces get a tilted forehead. (68, 2) -> (n, 2) float32, from one temple to
    the other.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    v = lm[EYE_B].mean(0) - lm[EYE_A].mean(0)
    v /= max(np.linalg.norm(v), 1e-6)
    u = np.array([v[1], -v[0]])  # up: for v = (1, 0), u = (0, -1), i.e. towards smaller y
    centre = lm[BROWS].mean(0)
    half_width = 0.5 * abs(float(np.dot(lm[26] - lm[17], v)))
    height = height_ratio * abs(float(np.dot(lm[27] - lm[33], u)))
    t = np.linspace(-1.0, 1.0, n)
    pts = centre + np.outer(t * half_width, v) + np.outer(np.sqrt(np.clip(1.0 - t * t, 0.0, None)) * height, u)
    return pts.astype(np.float32)


def _fill_hulls(shape: tuple[int, int], parts: list[np.ndarray]) -> np.ndarray:
    """Union of the filled convex hulls of each (k, 2) point set, as a uint8 (H, W) 0/1 mask."""
    mask = np.zeros(shape, dtype=np.uint8)
    for pts in parts:
        hull = cv2.convexHull(np.round(pts * (1 << _SHIFT)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def raise_brows(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks with each brow point moved away from the eye by half its distance to a point below it.

    Brow points 17..21 pair with (q, 36, 37, 38, 39), where q lies a quarter of the way from the eye
    corner 36 to the jaw point 0; brow points 22..26 pair with (42, 43, 44, 45, q') likewise (45 towards
    16). Each brow point p becomes p + (p - below) / 2. (68, 2) -> (68, 2) float32.
    """
    lm = np.asarray(landmarks, dtype=np.float32).copy()
    q_a = lm[36] + 0.25 * (lm[0] - lm[36])
    q_b = lm[45] + 0.25 * (lm[16] - lm[45])
    below_a = np.stack([q_a, lm[36], lm[37], lm[38], lm[39]])
    below_b = np.stack([lm[42], lm[43], lm[44], lm[45], q_b])
    lm[17:22] += 0.5 * (lm[17:22] - below_a)
    lm[22:27] += 0.5 * (lm[22:27] - below_b)
    return lm


def _component_parts(lm: np.ndarray, fh: np.ndarray) -> list[np.ndarray]:
    """The 8 part hulls of "components" (all but the nose anchored on the chin, point 8), with the
    forehead points `fh` (possibly empty) joined to the parts that hold brow points."""
    half = len(fh) // 2
    fh_a, fh_b = fh[: half + 1], fh[half:]  # image-left and image-right halves (share the middle point)
    chin = lm[[8]]
    return [
        np.concatenate([lm[0:9], lm[[17]]]),
        np.concatenate([lm[8:17], lm[[26]]]),
        np.concatenate([lm[17:20], chin, fh_a[:3]]),
        np.concatenate([lm[24:27], chin, fh_b[-3:]]),
        np.concatenate([lm[19:25], chin, fh[max(0, half - 2):half + 3]]),
        np.concatenate([lm[17:22], lm[[27]], lm[31:36], chin, fh_a]),
        np.concatenate([lm[22:27], lm[[27]], lm[31:36], chin, fh_b]),
        lm[27:36],
    ]


def hull_parts(landmarks: np.ndarray, kind: str, forehead: bool = False,
               forehead_ratio: float = FOREHEAD_RATIO) -> list[np.ndarray]:
    """Point sets whose convex hulls make up a mask of type `kind` (their union), the four types of the
    reference recipe:

    - "facehull": one hull of all 68 points.
    - "dfl_full": union of three hulls: jaw + mouth (with points 0, 8, 16), the nose ridge (27..30 and the
      nose tip 33), and the upper face (brows with points 0, 16, the nasion 27 and the nose tip 33).
    - "components": union of 8 part hulls: two jaw halves (each with the outer brow point of its side),
      two outer cheek wedges (outer brow points + chin), a central wedge (inner brow points + chin), two
      eye regions (brow, nasion, nostrils, chin) and the nose (bridge + nostrils).
    - "extended": the "components" parts over `raise_brows` landmarks (brows raised towards the forehead).
    With `forehead`, the points of `forehead_points` join every hull that contains brow points, so every
    type reaches the upper forehead.
    """
    lm = np.asarray(landmarks, dtype=np.float32)
    fh = forehead_points(lm, forehead_ratio) if forehead else np.zeros((0, 2), np.float32)
    if kind == "facehull":
        return [np.concatenate([lm, fh])]
    if kind == "dfl_full":
        return [
            np.concatenate([lm[JAW], lm[MOUTH]]),
            np.concatenate([lm[27:31], lm[[33]]]),
            np.concatenate([lm[BROWS], lm[[0, 27, 16, 33]], fh]),
        ]
    if kind == "components":
        return _component_parts(lm, fh)
    if kind == "extended":
        return _component_parts(raise_brows(lm), fh)
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")


def hull_mask(landmarks: np.ndarray, shape: tuple[int, int], kind: str = "facehull", forehead: bool = False,
              forehead_ratio: float = FOREHEAD_RATIO) -> np.ndarray:
    """uint8 (H, W) 0/1 mask of type `kind` (see `hull_parts`) for landmarks given in the pixels of `shape`."""
    return _fill_hulls(shape, hull_parts(landmarks, kind, forehead, forehead_ratio))


def random_hull_mask(landmarks: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
                     forehead: bool = False) -> tuple[np.ndarray, str]:
    """A hull mask of a uniformly drawn kind (the SBI recipe's step 2). Returns (uint8 (H, W) mask, kind)."""
    kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]
    return hull_mask(landmarks, shape, kind, forehead), kind
