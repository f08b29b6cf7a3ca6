"""How our training pairs compare with the reference implementation's, figure by figure.

The reference's distribution was measured by running its own data code on dlib's 43 example faces
(`reference/sbi_distribution.json`). `pair_figures` measures the same figures on one TrainPairDataset item,
`compare` aggregates many items and lines each figure up with the reference's value and the tolerance the
fidelity test applies: relative for continuous figures (mean within 10 %), absolute points for
frequencies (hull types and blend ratios within 3 points, augmentation firing rates within 5).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.data.masks import MASK_KINDS

_SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "sbi_distribution.json"
_COPY = Path(__file__).resolve().parents[2] / "tests" / "data" / "reference" / "sbi_distribution.json"


def load_reference(path: str | Path | None = None) -> dict:
    """The reference distribution: `path`, else ../shared/reference/, else the copy under tests/data."""
    for p in ([Path(path)] if path else [_SHARED, _COPY]):
        if p.is_file():
            return json.loads(p.read_text())
    raise FileNotFoundError(f"reference distribution not found (looked at {_SHARED} and {_COPY})")


def pair_figures(item: dict) -> dict:
    """Per-pair figures of a TrainPairDataset item (its fake's maps at heatmap resolution, images at S)."""
    m, b, hm, cons = item["mask"], item["boundary"], item["heatmap"], item["consistency"]
    size = item["fake"].shape[0]
    m_img = cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)
    inside = m_img > 0.5
    diff = np.abs(item["fake"].astype(np.int16) - item["real"].astype(np.int16))
    return {
        "M96_gt05": float((m > 0.5).mean()),
        "M96_eq1": float((m >= 1 - 1e-6).mean()),
        "B96_gt05": float((b > 0.5).mean()),
        "peaks": float((hm == 1.0).sum()),
        "consistency_gt05": float((cons > 0.5).mean()),
        "absdiff_inside_M05": float(diff[inside].mean()) if inside.any() else float("nan"),
        "face_scale": float(item["face_scale"]),
        "kind": item["kind"],
        "ratio": float(item["ratio"]),
        "flipped": bool(item["flipped"]),
        "aug_side": item["aug_side"],
        "applied": tuple(item["applied"]),
    }


@dataclass
class Row:
    """One compared figure: ours, the reference's, the gap and whether it is within tolerance."""

    name: str
    ours: float
    reference: float
    tolerance: float
    relative: bool

    @property
    def gap(self) -> float:
        return (self.ours - self.reference) / self.reference if self.relative else self.ours - self.reference

    @property
    def ok(self) -> bool:
        return bool(abs(self.gap) <= self.tolerance + 1e-12)

    def line(self) -> str:
        gap = f"{100 * self.gap:+.1f} %" if self.relative else f"{100 * self.gap:+.1f} pt"
        tol = f"{100 * self.tolerance:.0f} %" if self.relative else f"{100 * self.tolerance:.0f} pt"
        return (f"{self.name:44s} ours {self.ours:9.4f}  reference {self.reference:9.4f}  gap {gap:>9s}  "
                f"(tolerance {tol}) {'ok' if self.ok else 'OFF'}")


# (our figure, path of the reference's mean in the JSON, relative tolerance)
CONTINUOUS = (
    ("M96_gt05", ("mask", "M96_gt05", "stats", "mean"), 0.10),
    ("M96_eq1", ("mask", "M96_eq1", "stats", "mean"), 0.10),
    ("B96_gt05", ("mask", "B96_gt05_reference_target", "stats", "mean"), 0.10),
    ("peaks", ("targets_96", "heatmap_eq1_pixels", "stats", "mean"), 0.10),
    ("consistency_gt05", ("targets_96", "consistency_gt05", "stats", "mean"), 0.10),
    ("absdiff_inside_M05", ("images", "final_absdiff_inside_M05", "stats", "mean"), 0.10),
    ("face_scale", ("margin_and_scale", "final_side_over_face_box", "stats", "mean"), 0.10),
)
# our "applied" prefix -> the reference's context in augmentation.all_applied_share
CONTEXTS = {"source": "source_aug", "geo": "geo", "colour": "train_color"}


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        d = d[k]
    return d


def compare(figures: list[dict], reference: dict) -> list[Row]:
    """Every figure of the reference JSON that our pairs let us compute, as Rows (see module docstring)."""
    rows = []
    for name, path, tol in CONTINUOUS:
        vals = np.array([f[name] for f in figures], np.float64)
        rows.append(Row(f"mean {name}", float(np.nanmean(vals)), float(_get(reference, path)), tol, True))
    vals = np.array([f["face_scale"] for f in figures])
    ref_scale = reference["margin_and_scale"]["final_side_over_face_box"]["stats"]
    for q in ("q05", "q50", "q95"):
        ours = float(np.percentile(vals, int(q[1:])))
        rows.append(Row(f"face_scale {q}", ours, float(ref_scale[q]), 0.10, True))
    n = len(figures)
    hull = reference["synthesis"]["hull_type"]["freq"]
    for kind in MASK_KINDS:
        rows.append(Row(f"hull type {kind}", sum(f["kind"] == kind for f in figures) / n,
                        float(hull[kind]["share"]), 0.03, False))
    ratios = reference["synthesis"]["blend_ratio"]["freq"]
    for r, v in ratios.items():
        rows.append(Row(f"blend ratio {r}", sum(abs(f["ratio"] - float(r)) < 1e-9 for f in figures) / n,
                        float(v["share"]), 0.03, False))
    rows.append(Row("rate pre-synthesis hflip", sum(f["flipped"] for f in figures) / n,
                    float(reference["synthesis"]["pre_synthesis_hflip"]["share"]), 0.05, False))
    rows.append(Row("rate source transform on the source", sum(f["aug_side"] == "source" for f in figures) / n,
                    float(reference["synthesis"]["aug_side"]["freq"]["source"]["share"]), 0.05, False))
    shares = reference["augmentation"]["all_applied_share"]["shares"]
    for ours_ctx, ref_ctx in CONTEXTS.items():
        for key, ref in shares.items():
            ctx, _, op = key.partition("/")
            if ctx != ref_ctx:
                continue
            fired = sum(f"{ours_ctx}/{op}" in f["applied"] for f in figures) / n
            rows.append(Row(f"rate {key}", fired, float(ref), 0.05, False))
    for op, ref in (("GaussNoise", "noise_share"), ("GaussianBlur", "blur_share")):
        fired = sum(f"colour/{op}" in f["applied"] for f in figures) / n
        rows.append(Row(f"rate train_color/{op}", fired,
                        float(reference["augmentation"]["not_in_pipeline"][ref]), 0.05, False))
    return rows
