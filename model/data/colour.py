"""uint8 colour transforms of the SBI recipe, shared by the source transform and the training augmentation.

They follow the semantics of the albumentations transforms the recipe was built with, as measured on it
(`../shared/reference/sbi_distribution.json`, "augmentation"): shifts are added through lookup tables and
truncated to integers, so a hue/saturation/value shift of +-0.3 levels (on 180/255-level channels) is an
RGB -> HSV -> RGB round trip plus a -1 level shift for negative draws; brightness/contrast is
out = in * (1 + c) + 255 * b. Each function draws its parameters from the given generator and returns
new uint8 (h, w, 3) arrays, or applies a drawn setting to several images (`apply_*`), so that a real and
its fake can share one draw.
"""
from __future__ import annotations

import cv2
import numpy as np

_LEVELS = np.arange(256, dtype=np.float64)


def _lut3(tables: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.clip(t, 0, 255) for t in tables], -1).astype(np.uint8).reshape(256, 1, 3)


def draw_rgb_shift(rng: np.random.Generator, limit: float = 20.0) -> tuple[float, float, float]:
    """Per-channel shifts, uniform in [-limit, limit], floored (trunc(x + s) = x + floor(s) for x >= 0)."""
    s = np.floor(rng.uniform(-limit, limit, 3))
    return float(s[0]), float(s[1]), float(s[2])


def apply_rgb_shift(img: np.ndarray, shift: tuple[float, float, float]) -> np.ndarray:
    return cv2.add(img, (*shift, 0.0))


def draw_hsv(rng: np.random.Generator, limit: float = 0.3) -> np.ndarray:
    """(256, 1, 3) uint8 HSV lookup table for uniform hue/sat/value shifts in [-limit, limit] levels."""
    h, s, v = rng.uniform(-limit, limit, 3)
    return _lut3([np.trunc(np.mod(_LEVELS + h, 180)), np.trunc(_LEVELS + s), np.trunc(_LEVELS + v)])


def apply_hsv(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.LUT(cv2.cvtColor(img, cv2.COLOR_RGB2HSV), lut), cv2.COLOR_HSV2RGB)


def draw_brightness_contrast(rng: np.random.Generator, brightness: float, contrast: float) -> np.ndarray:
    """(256,) uint8 lookup table of in * (1 + c) + 255 * b, b in +-brightness, c in +-contrast."""
    b = rng.uniform(-brightness, brightness)
    c = rng.uniform(-contrast, contrast)
    return np.clip(_LEVELS * (1.0 + c) + 255.0 * b, 0, 255).astype(np.uint8)


def apply_lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return cv2.LUT(img, lut)


def down_up(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour downscale by `factor`, bilinear upscale back to the same size."""
    hh, ww = img.shape[:2]
    small = cv2.resize(img, (max(1, ww // factor), max(1, hh // factor)), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(small, (ww, hh), interpolation=cv2.INTER_LINEAR)


def sharpen(img: np.ndarray, alpha: float, lightness: float) -> np.ndarray:
    """Blend of identity and a Laplacian-type kernel (centre 8 + lightness, neighbours -1) with weight alpha."""
    k = -np.ones((3, 3), np.float32)
    k[1, 1] = 8.0 + lightness
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1.0
    return cv2.filter2D(img, -1, (1.0 - alpha) * identity + alpha * k)
