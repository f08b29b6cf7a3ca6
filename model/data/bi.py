"""Blended images (BI, Face X-ray style): the face of another video with similar landmarks blended into a
target face through the target's deformed hull mask. Pure functions of numpy arrays and a Generator."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from model.config import BIConfig
from model.data.blend import SyntheticPair, bbox, blend_roi, odd_size, resample_mask, roi_at, warp_roi
from model.data.masks import MASK_KINDS, hull_mask

# The defaults of functions taking a `cfg` (read only: never mutated).
DEFAULT_BI = BIConfig()


@lru_cache(maxsize=8)
def _hat_functions(g: int, cells: int) -> np.ndarray:
    """Piecewise-linear "hat" function of every interior control point of a (cells+1)^2 grid over a g x g
    raster, with each cell split into two triangles along its anti-diagonal: float32 ((cells-1)^2, g*g).
    A displacement of the control points moves each pixel by the hat-weighted sum of their displacements,
    which is exactly the piecewise-affine map of the triangulated grid."""
    step = (g - 1) / cells
    n = cells + 1
    ys, xs = np.mgrid[0:g, 0:g].reshape(2, -1).astype(np.float64)
    cx = np.minimum((xs / step).astype(np.int64), cells - 1)
    cy = np.minimum((ys / step).astype(np.int64), cells - 1)
    fx, fy = xs / step - cx, ys / step - cy
    upper = fx + fy <= 1.0
    # Triangle (p00, p10, p01) above the anti-diagonal, (p11, p01, p10) below, with barycentric weights.
    corners = [(cy, cx, np.where(upper, 1 - fx - fy, 0.0)),
               (cy, cx + 1, np.where(upper, fx, 1 - fy)),
               (cy + 1, cx, np.where(upper, fy, 1 - fx)),
               (cy + 1, cx + 1, np.where(upper, 0.0, fx + fy - 1))]
    hats = np.zeros((n, n, g * g), np.float64)
    pix = np.arange(g * g)
    for r, c, w in corners:
        np.add.at(hats, (r, c, pix), w)
    return hats[1:-1, 1:-1].reshape(-1, g * g).astype(np.float32)


def piecewise_affine_warp(mask: np.ndarray, rng: np.random.Generator, cells: int = 4,
                          jitter: float = 0.03) -> np.ndarray:
    """Piecewise-affine deformation of a float32 (g, g) mask.

    A (cells+1)^2 regular control grid is split into two triangles per cell; interior control points are
    moved by uniform noise of +-jitter * g. Each output pixel takes the mask value at the barycentric image
    of its triangle in the moved grid (an affine map per triangle, continuous across edges).
    """
    g = mask.shape[0]
    d = rng.uniform(-jitter * g, jitter * g, ((cells - 1) ** 2, 2)).astype(np.float32)
    hats = _hat_functions(g, cells)
    gx = np.tile(np.arange(g, dtype=np.float32), g)
    gy = np.repeat(np.arange(g, dtype=np.float32), g)
    # A plain multiply-add per control point: a (2, 9) x (9, g*g) BLAS product would start threads that,
    # on a busy machine, cost more than the arithmetic.
    for k in range(len(d)):
        gx += d[k, 0] * hats[k]
        gy += d[k, 1] * hats[k]
    gx, gy = gx.reshape(g, g), gy.reshape(g, g)
    return cv2.remap(mask, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def bi(target: np.ndarray, target_lm: np.ndarray, donor: np.ndarray, donor_lm: np.ndarray,
       rng: np.random.Generator, cfg: BIConfig = DEFAULT_BI, kind: str | None = None) -> SyntheticPair:
    """Blended image: the donor's face (another video, similar landmarks) inside the target's face.

    The mask comes from the target's landmarks (a random hull type), deformed piecewise-affinely, eroded or
    dilated (random odd kernel), then feathered with a Gaussian and max-normalised. The donor is aligned to
    the target's landmarks, its masked mean colour matched to the target's (per RGB channel), and blended:
    fake = M * donor + (1 - M) * target. The real is the target; ratio is 1; crop is the whole face.
    """
    size, g = target.shape[0], cfg.grid
    t_lm = np.asarray(target_lm, np.float32)
    if kind is None:
        kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]
    mask = hull_mask((t_lm + 0.5) * (g / size) - 0.5, (g, g), kind, cfg.forehead).astype(np.float32)
    mask = piecewise_affine_warp(mask, rng, cfg.grid_cells, cfg.jitter)
    k = odd_size(rng, *cfg.morph_kernels)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = (cv2.erode if rng.random() < 0.5 else cv2.dilate)(mask, kernel)
    kf = odd_size(rng, *cfg.feather_kernels)
    mask = cv2.GaussianBlur(mask, (kf, kf), 0)
    peak = float(mask.max())
    if peak <= 0:
        raise ValueError("bi: the mask vanished (hull too small for the erosion)")
    mask *= 1.0 / peak
    # Only the mask's box of the donor is aligned, colour-matched and blended; the fake is the target elsewhere.
    roi = roi_at(bbox(mask), g, size)
    x0, y0, x1, y1 = roi
    mat, _ = cv2.estimateAffinePartial2D(np.asarray(donor_lm, np.float32), t_lm)
    if mat is None:
        raise ValueError("bi: could not fit a similarity between the donor's and the target's landmarks")
    aligned = warp_roi(donor, mat, roi)
    weight = resample_mask(mask, size)[y0:y1, x0:x1]
    inside = (weight > 0.5).astype(np.uint8)
    if cv2.countNonZero(inside) < 16:
        raise ValueError("bi: fewer than 16 mask pixels above 0.5")
    shift = np.subtract(cv2.mean(target[y0:y1, x0:x1], inside)[:3], cv2.mean(aligned, inside)[:3])
    fg = cv2.add(aligned, tuple(float(v) for v in shift) + (0.0,), dtype=cv2.CV_8U)
    fake = target.copy()
    fake[y0:y1, x0:x1] = blend_roi(fg, target[y0:y1, x0:x1], weight)
    return SyntheticPair(real=target, fake=fake, mask=mask, ratio=1.0, crop=(0.0, 0.0, 1.0, 1.0),
                         kind=kind, flipped=False, box=roi)
