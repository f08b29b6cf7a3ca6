"""What SBI and BI share: the pair they return, normalised-coordinate geometry and the blend inside a box.

A pseudo-fake is I_M = M * I_F + (1 - M) * I_B (blend of a foreground face I_F into a background face I_B
through a soft mask M in [0, 1]). Masks live on a `grid` x `grid` raster (the recipe's 256 px crops);
faces are uint8 RGB (S, S, 3); only the mask's bounding box of a face is warped and blended.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class SyntheticPair:
    """One (real, fake) pair before training augmentation.

    real, fake: uint8 (S, S, 3); the fake differs from the real only where `mask` (resampled to S) > 0.
    mask: float32 (grid, grid) soft blend mask M in [0, 1], max 1 (the targets use M, not ratio * M).
    ratio: blend ratio r; the fake is r*M*src + (1 - r*M)*real.
    crop: (x0, y0, x1, y1) margin crop as fractions of the side, to apply to real, fake and mask alike.
    kind: mask type; flipped: whether the frame was mirrored first.
    aug_side, applied: which image got the source transform, and which of its steps fired.
    box: (x0, y0, x1, y1) pixel box of the face (exclusive ends) outside which fake == real.
    """

    real: np.ndarray
    fake: np.ndarray
    mask: np.ndarray
    ratio: float
    crop: tuple[float, float, float, float]
    kind: str
    flipped: bool
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    aug_side: str = ""                      # "source" or "target": which image got the source transform
    applied: tuple[str, ...] = ()           # source transforms that fired, e.g. ("HueSaturationValue", ...)


def to_pixels(norm: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    """Turn a (3, 3) map between normalised square coordinates into the (2, 3) pixel matrix for cv2.warpAffine
    from an n_in x n_in image to an n_out x n_out one (pixel centres at integers: u = (x + 0.5) / n)."""
    a = np.array([[1.0 / n_in, 0, 0.5 / n_in], [0, 1.0 / n_in, 0.5 / n_in], [0, 0, 1]])
    b = np.array([[n_out, 0, -0.5], [0, n_out, -0.5], [0, 0, 1]])
    return (b @ norm @ a)[:2]


def resample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float (g, g) mask to (size, size) with the same normalised geometry."""
    if mask.shape[0] == size:
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)


def odd_size(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(lo + 2 * rng.integers((hi - lo) // 2 + 1))


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) exclusive bounds of mask > 0, or None if empty."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def roi_at(box_grid: tuple[int, int, int, int], grid: int, size: int, pad: int = 2,
            align: int = 1) -> tuple[int, int, int, int]:
    """Map a grid-pixel box to a padded, clipped box at `size` whose origin is a multiple of `align`."""
    f = size / grid
    x0 = max(0, int(np.floor(box_grid[0] * f)) - pad)
    y0 = max(0, int(np.floor(box_grid[1] * f)) - pad)
    x0 -= x0 % align
    y0 -= y0 % align
    x1 = min(size, int(np.ceil(box_grid[2] * f)) + pad)
    y1 = min(size, int(np.ceil(box_grid[3] * f)) + pad)
    return x0, y0, x1, y1


def warp_roi(img: np.ndarray, mat: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """The part `roi` of cv2.warpAffine(img, mat) (same result, only those output pixels computed)."""
    x0, y0, x1, y1 = roi
    m = mat.copy()
    m[:, 2] -= (x0, y0)
    return cv2.warpAffine(img, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def blend_roi(fg: np.ndarray, bg: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """uint8 weight*fg + (1-weight)*bg (rounded) for uint8 (h, w, 3) images and float32 (h, w) weights."""
    return cv2.blendLinear(fg, bg, weight, 1.0 - weight)
