"""Face scale: how many face-box sides an image shows, in training and in evaluation.

A stored crop shows `crop_scale` (1.25) face-box sides; evaluation shows its central part at
`REFERENCE_TEST_SCALE` (the reference's test geometry) by default (`eval_view`), and the training geometry
(SBI margin + augmentation) draws its own scales (`training_face_scales`). `face_scale_report` prints the two
side by side (``python -m model.data face-scale``).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from model.config import AugmentConfig, ConfigError, DataConfig, SBIConfig
from model.data.augment import sample_geometry
from model.data.sbi import random_margin
from pipeline.crop import CROP_SCALE

# The reference's test geometry: the 1.25x crop minus a 5-of-256 px margin per side, i.e. faces shown at
# 1.20x the face box (the q95 edge of its training scales, `../shared/reference/sbi_distribution.json`).
REFERENCE_TEST_SCALE = 1.25 * (1.0 - 2 * 5 / 256)


def fit_face(face: np.ndarray, landmarks: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an (S, S, 3) crop to (size, size, 3) (area filter when shrinking) and its landmarks with it."""
    s = face.shape[0]
    if s == size:
        return face, landmarks
    interp = cv2.INTER_AREA if size < s else cv2.INTER_LINEAR
    face = cv2.resize(face, (size, size), interpolation=interp)
    if landmarks is not None:
        landmarks = (landmarks + 0.5) * (size / s) - 0.5
    return face, landmarks


def view_fraction(crop_scale: float, face_scale: float | None) -> float:
    """Side fraction of a stored crop (`crop_scale` x the face box) that shows `face_scale` face-box sides
    (None: the whole crop); ValueError when the crop is smaller than that."""
    if face_scale is None:
        return 1.0
    frac = face_scale / crop_scale
    if not 0.1 < frac <= 1.0 + 1e-9:
        raise ConfigError(f"face scale {face_scale:.3f} needs a crop of at least that many face-box sides; "
                         f"the shard's crops are {crop_scale:.3f}x")
    return frac


def eval_view(face: np.ndarray, size: int, crop_scale: float, face_scale: float | None) -> np.ndarray:
    """The evaluation view of a stored (S, S, 3) crop of `crop_scale` x the face box: its central square
    of `face_scale` face-box sides (None: the whole crop), resized to (size, size, 3)."""
    s = face.shape[0]
    cut = int(round(s * (1.0 - view_fraction(crop_scale, face_scale)) / 2))
    if cut > 0:
        face = face[cut:s - cut, cut:s - cut]
    return fit_face(face, None, size)[0]


def training_face_scales(sbi_cfg: SBIConfig, augment_cfg: AugmentConfig | None, crop_scale: float = CROP_SCALE,
                         size: int = DataConfig.image_size, n: int = 20000, seed: int = 0) -> np.ndarray:
    """The face scales (training image side / face-box side) the training geometry produces: n draws of the
    SBI margin and the augmentation geometry exactly as TrainPairDataset makes them, (n,) float64."""
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for i in range(n):
        geom = sample_geometry(rng, augment_cfg, random_margin(rng, sbi_cfg), size)
        out[i] = crop_scale * geom.kept
    return out


def resolve_face_scale(spec: float | str | None, sbi_cfg: SBIConfig | None = None,
                       augment_cfg: AugmentConfig | None = None, crop_scale: float = CROP_SCALE) -> float | None:
    """"reference" -> REFERENCE_TEST_SCALE; "train-median" -> the median of `training_face_scales`;
    "crop" or None -> None (the whole stored crop); a number -> itself."""
    if spec is None or spec == "crop":
        return None
    if spec == "reference":
        return REFERENCE_TEST_SCALE
    if spec == "train-median":
        return float(np.median(training_face_scales(sbi_cfg or SBIConfig(), augment_cfg, crop_scale)))
    if isinstance(spec, str):
        try:
            spec = float(spec)
        except ValueError:
            raise ConfigError(f"face scale must be 'reference', 'train-median', 'crop' or a number, got {spec!r}") from None
    return float(spec)


def _reference_scale_line() -> str:
    """The reference implementation's measured training face scales (sbi_distribution.json)."""
    from model.data.pair_stats import load_reference

    try:
        st = load_reference()["margin_and_scale"]["final_side_over_face_box"]["stats"]
    except FileNotFoundError:
        return "  reference implementation: sbi_distribution.json not found"
    return (f"  reference implementation (measured): training median {st['q50']:.3f} q5 {st['q05']:.3f} "
            f"q95 {st['q95']:.3f}; it tests at {REFERENCE_TEST_SCALE:.3f}")


def face_scale_report(cfg, crop_scale: float, png: str | None = None) -> str:
    """Training face scales (median, q5, q95 of `training_face_scales`) beside the scales evaluation shows
    faces at ("reference" and "train-median"), as printable lines; optionally a histogram PNG."""
    scales = training_face_scales(cfg.sbi, cfg.augment, crop_scale, cfg.data.image_size)
    q5, q50, q95 = np.percentile(scales, [5, 50, 95])
    ref = REFERENCE_TEST_SCALE
    lines = [f"face scale = image side / face-box side (stored crops {crop_scale:.3f}x, {len(scales)} draws "
             f"of the training geometry)",
             f"  training   median {q50:.3f}  q5 {q5:.3f}  q95 {q95:.3f}  mean {scales.mean():.3f}",
             f"  evaluation reference {ref:.3f} (1.25x crop minus 5/256 per side; the default), "
             f"train-median {q50:.3f} (--face-scale train-median), crop {crop_scale:.3f} (--face-scale crop)",
             _reference_scale_line()]
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
        ax.hist(scales, bins=60, color="#4477aa", alpha=0.8, label="training pairs")
        for x, name, c in ((ref, "eval: reference", "#cc3311"), (q50, "eval: train-median", "#228833"),
                           (crop_scale, "stored crop", "#777777")):
            ax.axvline(x, color=c, lw=2, label=f"{name} {x:.3f}")
        ax.set_xlabel("image side / face-box side")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=7)
        fig.tight_layout()
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png)
        plt.close(fig)
        lines.append(f"  {png}: histogram")
    return "\n".join(lines)
