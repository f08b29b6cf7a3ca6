"""Nearest-landmark donor table for BI (blended images): for every face, the faces of OTHER videos whose
68 landmarks are closest after normalising position and scale.

Distance between two faces = sum over the 68 points of the Euclidean distance between corresponding points
of their normalised shapes (centroid at 0, RMS distance to the centroid 1). To scale to FF++ (92k training
frames) the search is vectorised in two stages per block of queries: a squared-Euclidean shortlist over
the flattened 136-d shapes (one matrix product against the candidate set, same-video candidates excluded),
then an exact re-ranking of the shortlist by the sum of point distances. Candidates are all faces, or a
seeded random subset of `max_candidates` when there are more (the reference implementation sampled 10k).
"""
from __future__ import annotations

import numpy as np


def normalise_shapes(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 2) crop-pixel landmarks -> (N, 68, 2) float32 shapes with centroid 0 and RMS radius 1."""
    lm = np.asarray(landmarks, np.float64)
    centred = lm - lm.mean(axis=1, keepdims=True)
    rms = np.sqrt((centred ** 2).sum(axis=2).mean(axis=1))
    return (centred / np.maximum(rms, 1e-9)[:, None, None]).astype(np.float32)


def shape_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum of point distances between normalised shapes, broadcasting (..., 68, 2) x (..., 68, 2) -> (...)."""
    return np.sqrt(((a - b) ** 2).sum(-1)).sum(-1)


def build_donor_table(landmarks: np.ndarray, video: np.ndarray, k: int = 30, max_candidates: int = 16384,
                      shortlist: int | None = None, rng: np.random.Generator | None = None,
                      block: int = 512) -> np.ndarray:
    """Donors for every face.

    landmarks: (N, 68, 2) finite landmarks; video: (N,) any integer video key (faces of the same video are
    never donors to each other). k: donors kept per face. shortlist: size of the Euclidean shortlist that is
    re-ranked exactly (default 4 k; a shortlist >= the number of candidates makes the result exact).
    Returns int64 (N, k) face indices sorted by increasing distance, -1 where fewer than k donors exist.
    """
    lm = np.asarray(landmarks, np.float32)
    video = np.asarray(video)
    n = len(lm)
    if lm.shape != (n, 68, 2) or video.shape != (n,):
        raise ValueError(f"build_donor_table: expected (N, 68, 2) landmarks and (N,) video, got {lm.shape}, "
                         f"{video.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("build_donor_table: landmarks must be finite (drop faces without landmarks first)")
    shapes = normalise_shapes(lm)
    flat = shapes.reshape(n, -1)
    rng = np.random.default_rng(0) if rng is None else rng
    cand = np.arange(n) if n <= max_candidates else np.sort(rng.choice(n, max_candidates, replace=False))
    # Points as complex numbers: |a - b| over 68 points is one subtraction and one abs per pair of faces.
    points = (shapes[..., 0] + 1j * shapes[..., 1]).astype(np.complex64)                # (N, 68)
    c_flat, c_video, c_points = flat[cand], video[cand], points[cand]
    c_sq = (c_flat ** 2).sum(1)
    s = min(len(cand), max(k, 4 * k if shortlist is None else shortlist))
    table = np.full((n, k), -1, np.int64)
    block = max(1, min(block, int(8e6 // (s * 68))))    # bounds the (block, s, 68) re-ranking array
    for q0 in range(0, n, block):
        q = slice(q0, min(n, q0 + block))
        d2 = (flat[q] ** 2).sum(1)[:, None] + c_sq[None, :] - 2.0 * flat[q] @ c_flat.T
        d2[video[q][:, None] == c_video[None, :]] = np.inf
        short = np.argpartition(d2, s - 1, axis=1)[:, :s] if s < len(cand) else np.broadcast_to(
            np.arange(len(cand)), (d2.shape[0], len(cand)))
        exact = np.abs(points[q][:, None] - c_points[short]).sum(-1)                  # (b, s)
        exact[np.take_along_axis(~np.isfinite(d2), short, axis=1)] = np.inf        # same-video entries
        order = np.argsort(exact, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(short, order, axis=1)
        ok = np.isfinite(np.take_along_axis(exact, order, axis=1))
        table[q, : best.shape[1]] = np.where(ok, cand[best], -1)
    return table
