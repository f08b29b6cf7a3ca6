"""Image perturbations for the robustness study (LAA-Net paper Table 2).

Seven perturbation types at five severity levels each, following the DeeperForensics-1.0 definitions and
levels (level 1 = mildest, level 5 = strongest):

=============  ==========================================================  ==============================
name           what it does                                                parameter per level 1..5
=============  ==========================================================  ==============================
saturation     scale the chroma (Cb, Cr) around neutral grey by a factor   0.4, 0.3, 0.2, 0.1, 0.0
contrast       multiply every intensity by a factor                        0.85, 0.725, 0.6, 0.475, 0.35
block          paste 8x8 mid-grey blocks at random places (count per       16, 32, 48, 64, 80
               256 px of the shorter side)
noise          additive Gaussian noise in YCbCr, variance on a [0, 1]      0.001, 0.002, 0.005, 0.01, 0.05
               intensity scale
blur           Gaussian blur, odd kernel k, sigma k / 6                    7, 9, 13, 17, 21
pixelation     downscale by a factor (area) and upscale back (bilinear)    2, 3, 4, 5, 6
jpeg           JPEG re-encoding at a quality                               60, 45, 30, 20, 10
=============  ==========================================================  ==============================

DeeperForensics' seventh type is H.264 video compression (CRF 30..40), which needs whole videos; on face
crops we use JPEG at the qualities above instead, so the "jpeg" column is comparable in spirit, not in
value, to the paper's "Compress" column. The training augmentation draws JPEG quality in 40..100, so levels
3-5 are outside what the model saw.

All functions take and return (H, W, 3) uint8 RGB. Randomness (block positions, noise) comes only from the
``seed`` argument through an explicit ``np.random.Generator``: the same image, type, level and seed always
give the same output, whatever the batch order.
"""
from __future__ import annotations

import zlib
from typing import Callable

import cv2
import numpy as np

LEVELS = (1, 2, 3, 4, 5)

PARAMS: dict[str, tuple] = {
    "saturation": (0.4, 0.3, 0.2, 0.1, 0.0),
    "contrast": (0.85, 0.725, 0.6, 0.475, 0.35),
    "block": (16, 32, 48, 64, 80),
    "noise": (0.001, 0.002, 0.005, 0.01, 0.05),
    "blur": (7, 9, 13, 17, 21),
    "pixelation": (2, 3, 4, 5, 6),
    "jpeg": (60, 45, 30, 20, 10),
}
PERTURBATIONS = tuple(PARAMS)
LABELS = {
    "saturation": "Saturation",
    "contrast": "Contrast",
    "block": "Block-wise",
    "noise": "Gaussian noise",
    "blur": "Gaussian blur",
    "pixelation": "Pixelation",
    "jpeg": "JPEG",
}
BLOCK_SIDE = 8
BLOCK_VALUE = 128


def _check(img: np.ndarray) -> None:
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")


def _to_ycc(img: np.ndarray) -> np.ndarray:
    """RGB uint8 -> float32 YCrCb in [0, 1]."""
    return cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb).astype(np.float32) / 255.0


def _from_ycc(ycc: np.ndarray) -> np.ndarray:
    """float32 YCrCb in [0, 1] -> RGB uint8 (clipped, rounded)."""
    u8 = np.clip(np.rint(ycc * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_YCrCb2RGB)


def saturation(img: np.ndarray, factor: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Chroma scaled towards neutral: factor 1 = unchanged, 0 = greyscale."""
    ycc = _to_ycc(img)
    ycc[..., 1:] = 0.5 + (ycc[..., 1:] - 0.5) * factor
    return _from_ycc(ycc)


def contrast(img: np.ndarray, factor: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """All intensities multiplied by ``factor`` (DeeperForensics' contrast change; it also darkens)."""
    return np.clip(np.rint(img.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def block(img: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` (per 256 px of the shorter side) 8x8 grey blocks at positions drawn from ``rng``."""
    h, w = img.shape[:2]
    n = int(count) * max(1, min(h, w) // 256)
    out = img.copy()
    ys = rng.integers(0, max(1, h - BLOCK_SIDE), size=n)
    xs = rng.integers(0, max(1, w - BLOCK_SIDE), size=n)
    for y, x in zip(ys, xs):
        out[y : y + BLOCK_SIDE, x : x + BLOCK_SIDE] = BLOCK_VALUE
    return out


def noise(img: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of the given variance added to Y, Cb and Cr on a [0, 1] scale."""
    ycc = _to_ycc(img)
    ycc += rng.normal(0.0, np.sqrt(variance), size=ycc.shape).astype(np.float32)
    return _from_ycc(ycc)


def blur(img: np.ndarray, kernel: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Gaussian blur with an odd ``kernel`` and sigma = kernel / 6."""
    return cv2.GaussianBlur(img, (int(kernel), int(kernel)), kernel / 6.0)


def pixelation(img: np.ndarray, factor: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Downscale by ``factor`` with area averaging, then back to the original size (bilinear)."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // int(factor)), max(1, h // int(factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(img: np.ndarray, quality: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """JPEG encode at ``quality`` and decode (OpenCV's libjpeg, 4:2:0 chroma subsampling)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode an image")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "saturation": saturation,
    "contrast": contrast,
    "block": block,
    "noise": noise,
    "blur": blur,
    "pixelation": pixelation,
    "jpeg": jpeg,
}


def perturbation_seed(key: str, name: str, level: int, base_seed: int = 0) -> int:
    """A stable per-image seed from a sample key (e.g. ``"ffpp/original/000:12"``), type and level.

    CRC32 rather than ``hash()`` because Python salts string hashes per process.
    """
    return zlib.crc32(f"{base_seed}|{name}|{level}|{key}".encode()) & 0xFFFFFFFF


def apply(img: np.ndarray, name: str, level: int, seed: int = 0) -> np.ndarray:
    """Apply perturbation ``name`` at ``level`` (1..5) to an (H, W, 3) uint8 RGB image.

    Returns a new (H, W, 3) uint8 image; the input is not modified.
    """
    _check(img)
    if name not in PARAMS:
        raise ValueError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    if level not in LEVELS:
        raise ValueError(f"perturbation level must be one of {LEVELS}, got {level}")
    rng = np.random.default_rng(seed)
    return FUNCTIONS[name](np.ascontiguousarray(img), PARAMS[name][level - 1], rng)


def parse_names(names: list[str] | None) -> list[str]:
    """``["all"]`` -> every type; otherwise validate the given names (order kept, duplicates dropped)."""
    if not names:
        return []
    if "all" in names:
        return list(PERTURBATIONS)
    unknown = [n for n in names if n not in PARAMS]
    if unknown:
        raise ValueError(f"unknown perturbation(s) {', '.join(unknown)}; choose from all, {', '.join(PERTURBATIONS)}")
    return list(dict.fromkeys(names))
