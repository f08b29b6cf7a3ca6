"""Training targets from a blend mask: the boundary map, the vulnerable-point heatmap and the consistency map.

B = 4 M (1 - M) is 1 where the blend mask M crosses 0.5 (the blending boundary, where artefacts live) and 0
where M is 0 or 1 (paper eq. 2). Its maxima are the "vulnerable points" P (eq. 3); the heatmap H puts an
unnormalised Gaussian on each (eq. 4) and the consistency map C = 1 - |b_anchor - B| (eq. 7) says how much
each pixel resembles the anchor's blending state. Real images have B = 0 and all-zero targets.
All maps are (H, W) float32 at heatmap resolution (96 x 96 for a 384 input).
"""
from __future__ import annotations

import math

import numpy as np

from model.config import SIGMA_RULES

MIN_OVERLAP = 0.7
# Reference mode reads B on a uint8 scale; this tolerance makes an input already quantised to k/255 (a float32
# that can land a hair below k/255) map back to level k exactly.
_QUANT_EPS = 1e-3


def boundary(mask: np.ndarray) -> np.ndarray:
    """B = 4 M (1 - M) for a soft mask M in [0, 1]; any shape, float32 out, values in [0, 1]."""
    m = np.asarray(mask, np.float32)
    return np.clip(4.0 * m * (1.0 - m), 0.0, 1.0)


def boundary_u8(mask: np.ndarray) -> np.ndarray:
    """The boundary stored as the reference implementation stores it: floor(255 * B) as uint8."""
    return np.floor(255.0 * boundary(mask)).astype(np.uint8)


def gaussian_radius(height, width, min_overlap: float = MIN_OVERLAP):
    """CornerNet's Gaussian radius for a box of (height, width): the smallest of its three corner-shift
    cases (both corners in, both out, one each) that keeps IoU >= min_overlap, in the form the CornerNet and
    CenterNet code computes it (each root taken as (b + sqrt(b^2 - 4ac)) / 2). Scalars or arrays
    (broadcast); returns float64 values >= 0 of the broadcast shape."""
    h, w, m = np.asarray(height, np.float64), np.asarray(width, np.float64), float(min_overlap)
    b1 = h + w
    c1 = w * h * (1 - m) / (1 + m)
    r1 = (b1 + np.sqrt(np.maximum(b1 * b1 - 4 * c1, 0.0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - m) * w * h
    r2 = (b2 + np.sqrt(np.maximum(b2 * b2 - 16 * c2, 0.0))) / 2
    a3 = 4 * m
    b3 = -2 * m * (h + w)
    c3 = (m - 1) * w * h
    r3 = (b3 + np.sqrt(np.maximum(b3 * b3 - 4 * a3 * c3, 0.0))) / 2
    return np.maximum(0.0, np.minimum(np.minimum(r1, r2), r3))


def run_lengths(above: np.ndarray, wrap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of the horizontal and vertical runs of True through every pixel of a bool (H, W) map.

    Runs stop at the map's edges; with `wrap` (the reference's bug, a switch) a horizontal run continues
    from the end of one row into the start of the next (and a vertical run from the bottom of one column
    to the top of the next), as a walk over the flattened map does. Pixels that are False get 0.
    Returns (row_runs, col_runs), int32 (H, W) each.
    """
    def along_rows(a: np.ndarray) -> np.ndarray:
        return _rows(a.reshape(1, -1)).reshape(a.shape) if wrap else _rows(a)

    def _rows(a: np.ndarray) -> np.ndarray:
        w = a.shape[1]
        idx = np.arange(w)
        last_false_left = np.maximum.accumulate(np.where(a, -1, idx), axis=1)
        left = idx - last_false_left                                       # run length ending here
        rev = a[:, ::-1]
        last_false_right = np.maximum.accumulate(np.where(rev, -1, idx), axis=1)
        right = (idx - last_false_right)[:, ::-1]                          # run length starting here
        return np.where(a, left + right - 1, 0).astype(np.int32)

    return along_rows(above), along_rows(np.ascontiguousarray(above.T)).T


def draw_gaussian(heatmap: np.ndarray, x: int, y: int, sigma: float) -> None:
    """heatmap = max(heatmap, exp(-((u-x)^2 + (v-y)^2) / (2 sigma^2))) in place, centred exactly on pixel
    (x, y) (value 1 there), truncated at 3 sigma and at the map's edges. sigma <= 0 sets only (x, y)."""
    h, w = heatmap.shape
    if sigma <= 1e-6:
        heatmap[y, x] = 1.0
        return
    r = int(math.ceil(3.0 * sigma))
    y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
    dy = (np.arange(y0, y1) - y)[:, None].astype(np.float32)
    dx = (np.arange(x0, x1) - x)[None, :].astype(np.float32)
    g = np.exp(-(dx * dx + dy * dy) / np.float32(2.0 * sigma * sigma))
    np.maximum(heatmap[y0:y1, x0:x1], g, out=heatmap[y0:y1, x0:x1])


def point_sigmas(b: np.ndarray, ys: np.ndarray, xs: np.ndarray, rule: str = "reference",
                 wrap: bool = False) -> np.ndarray:
    """sigma = r / 3 per point, r = gaussian_radius of the box (column run, row run) through it.

    rule "reference" (default, the reference's measured rule): runs of floor(255 B) > 128, each counted
    with the point itself twice (run + 1; a point at or below 128 gets 0, i.e. a single-pixel peak).
    rule "exact": the exact runs of B > 0.5. `wrap`: see `run_lengths`.
    """
    if rule == "exact":
        row_runs, col_runs = run_lengths(b > 0.5, wrap)
        return gaussian_radius(col_runs[ys, xs], row_runs[ys, xs]) / 3.0
    if rule == "reference":
        above = np.floor(255.0 * b.astype(np.float64) + _QUANT_EPS) > 128
        row_runs, col_runs = run_lengths(above, wrap)
        extra = above[ys, xs].astype(np.int32)
        return gaussian_radius(col_runs[ys, xs] + extra, row_runs[ys, xs] + extra) / 3.0
    raise ValueError(f"unknown sigma rule {rule!r}; expected one of {SIGMA_RULES}")


def reference_offset(sigmas: np.ndarray) -> np.ndarray:
    """The reference's peak displacement per point (same on both axes): its Gaussian patch starts at the
    point minus trunc(3 sigma) and has its centre sample round(3 sigma) samples in, so the peak lands
    trunc(3 sigma) - floor(3 sigma + 0.5) px from the point: -1 (up-left) when 3 sigma has a fractional
    part >= 0.5, else 0."""
    t = 3.0 * np.asarray(sigmas, np.float64)
    return (np.trunc(t) - np.floor(t + 0.5)).astype(np.int64)


def draw_gaussians(heatmap: np.ndarray, ys: np.ndarray, xs: np.ndarray, sigmas: np.ndarray) -> None:
    """`draw_gaussian` for many points at once (same result): every point's window is evaluated in one array
    and merged with an unbuffered element-wise max."""
    if len(ys) == 0:
        return
    h, w = heatmap.shape
    sig = np.asarray(sigmas, np.float64)
    r = int(math.ceil(3.0 * float(sig.max())))
    off = np.arange(-r, r + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    d2 = (dx * dx + dy * dy)[None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.exp(-d2 / (2.0 * sig[:, None, None] ** 2))
    delta = sig <= 1e-6
    g[delta] = (d2[0] == 0)[None]
    # Each point keeps only its own 3-sigma window (as draw_gaussian does).
    lim = np.ceil(3.0 * sig)[:, None, None]
    g[(np.abs(dy)[None] > lim) | (np.abs(dx)[None] > lim)] = 0.0
    yy = np.asarray(ys)[:, None, None] + dy[None]
    xx = np.asarray(xs)[:, None, None] + dx[None]
    keep = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w) & (g > 0)
    np.maximum.at(heatmap, (yy[keep], xx[keep]), g[keep].astype(np.float32))


def reference_points(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vulnerable points of the reference mode.

    b: float (H, W) boundary in [0, 1]; it is read on the uint8 scale q = floor(255 b) (the reference stores
    B that way, so its maxima saturate and tie). The map is split into four quadrants (rows [0, H//2) and
    [H//2, H), columns likewise); in each quadrant whose max q is > 0, every pixel equal to that max is a
    point (ties kept). Returns (ys, xs, has_peak) with has_peak a bool (2, 2) per quadrant.
    """
    q = np.floor(255.0 * b.astype(np.float64) + _QUANT_EPS).astype(np.int32)
    h, w = q.shape
    hh, hw = h // 2, w // 2
    ys, xs = [], []
    has_peak = np.zeros((2, 2), bool)
    for qi, (r0, r1) in enumerate(((0, hh), (hh, h))):
        for qj, (c0, c1) in enumerate(((0, hw), (hw, w))):
            block = q[r0:r1, c0:c1]
            top = block.max() if block.size else 0
            if top <= 0:
                continue
            has_peak[qi, qj] = True
            yy, xx = np.nonzero(block == top)
            ys.append(yy + r0)
            xs.append(xx + c0)
    if not ys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), has_peak
    return np.concatenate(ys), np.concatenate(xs), has_peak


def make_targets(boundary: np.ndarray, mode: str = "reference", rng: np.random.Generator | None = None,
                 sigma_rule: str = "reference", centre: str = "exact",
                 wrap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Heatmap and consistency targets from a boundary map.

    boundary: float (H, W) B = 4M(1-M) at heatmap resolution, values in [0, 1] (all zero for a real image).
    mode "reference" (default; what produced the paper's numbers):
      - points P: per-quadrant maxima of floor(255 B) with ties (see `reference_points`);
      - each p gets exp(-d^2 / (2 sigma^2)), sigma from `point_sigmas` (`sigma_rule`, `wrap`); centred
        exactly on p (`centre` "exact", so H(p) = 1) or displaced as the reference does (`centre`
        "reference", see `reference_offset`); H is the element-wise max over P;
      - C = 1 - |b_max - B| inside the quadrants that have a point and 0 in the others, b_max = max of B
        (on the same uint8 scale, divided by 255).
    mode "paper":
      - P = every pixel equal to the global max of B (float comparison); H as above over P;
      - one anchor p^s drawn from P with `rng` (np.random.default_rng(0) if None); C = 1 - |B(p^s) - B| over
        the whole map. B(p^s) is the global max whichever anchor is drawn, so C does not depend on the draw.
    Returns (heatmap, consistency), float32 (H, W) each; zeros for an all-zero boundary.
    """
    b = np.asarray(boundary, np.float32)
    if b.ndim != 2:
        raise ValueError(f"make_targets: boundary must be (H, W), got shape {b.shape}")
    if not np.isfinite(b).all() or b.min() < 0.0 or b.max() > 1.0 + 1e-6:
        raise ValueError("make_targets: boundary must be finite and in [0, 1]")
    if centre not in ("exact", "reference"):
        raise ValueError(f"make_targets: unknown centre {centre!r}; expected 'exact' or 'reference'")
    heatmap = np.zeros(b.shape, np.float32)
    consistency = np.zeros(b.shape, np.float32)

    def gaussians(bmap: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
        sig = point_sigmas(bmap, ys, xs, sigma_rule, wrap)
        if centre == "reference":
            off = reference_offset(sig)
            h, w = bmap.shape
            ys, xs = np.clip(ys + off, 0, h - 1), np.clip(xs + off, 0, w - 1)
        draw_gaussians(heatmap, ys, xs, sig)

    if mode == "reference":
        ys, xs, has_peak = reference_points(b)
        if ys.size == 0:
            return heatmap, consistency
        bq = np.floor(255.0 * b.astype(np.float64) + _QUANT_EPS).astype(np.float32) / 255.0
        gaussians(bq, ys, xs)
        c = 1.0 - np.abs(bq.max() - bq)
        h, w = b.shape
        hh, hw = h // 2, w // 2
        for qi, (r0, r1) in enumerate(((0, hh), (hh, h))):
            for qj, (c0, c1) in enumerate(((0, hw), (hw, w))):
                if has_peak[qi, qj]:
                    consistency[r0:r1, c0:c1] = c[r0:r1, c0:c1]
        return heatmap, consistency
    if mode == "paper":
        top = float(b.max())
        if top <= 0.0:
            return heatmap, consistency
        ys, xs = np.nonzero(b == top)
        gaussians(b, ys, xs)
        rng = np.random.default_rng(0) if rng is None else rng
        k = int(rng.integers(len(ys)))
        consistency[:] = 1.0 - np.abs(b[ys[k], xs[k]] - b)
        return heatmap, consistency
    raise ValueError(f"make_targets: unknown mode {mode!r}; expected 'reference' or 'paper'")
