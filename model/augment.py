"""Training augmentation applied jointly to a (real, fake) pair and its boundary map.

The paper's list (section 4.1): horizontal flip, random crop, random scale, random erasing, colour jitter,
Gaussian noise, blur, JPEG compression (quality 40..100). Both images of a pair get the same draw (same
geometry, same colours, same noise field, same erased box), so they keep differing only by the blend, and
the boundary map gets the same geometry at heatmap resolution, so the targets stay aligned with the pixels.

Geometry is one affine map in normalised coordinates (the SBI margin crop, a random zoom-and-crop and the
flip composed), applied once per image with cv2.warpAffine straight to the output size, and once to the
mask-grid boundary straight to the heatmap size. Probabilities and ranges are `AugmentConfig` fields; the
defaults are ours (the paper names the transforms, not their parameters), except JPEG quality 40..100.
Photometric steps run on uint8 with lookup tables where possible (these run once per training image).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.synthesis import to_pixels


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentation (fractions of the image side / 255 levels)."""

    hflip_p: float = 0.5
    zoom: tuple[float, float] = (1.0, 1.15)          # random scale: the crop window is 1/zoom of the side
    colour_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02                                # fraction of the hue circle
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise_p: float = 0.2
    noise_std: tuple[float, float] = (2.0, 10.0)     # in uint8 levels
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 100)
    erase_p: float = 0.3
    erase_area: tuple[float, float] = (0.02, 0.12)
    erase_aspect: tuple[float, float] = (0.3, 3.3)


def crop_map(box: tuple[float, float, float, float]) -> np.ndarray:
    """(3, 3) normalised map sending the box (x0, y0, x1, y1) onto the unit square."""
    x0, y0, x1, y1 = box
    return np.array([[1.0 / (x1 - x0), 0, -x0 / (x1 - x0)], [0, 1.0 / (y1 - y0), -y0 / (y1 - y0)], [0, 0, 1]])


def sample_geometry(rng: np.random.Generator, cfg: AugmentConfig | None,
                    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> tuple[np.ndarray, bool]:
    """Normalised (3, 3) map input -> output: the `crop` box, then (if cfg) a random zoom z with a uniformly
    placed window of side 1/z (random scale + random crop), then a horizontal flip with p = hflip_p.
    Returns (map, flipped). cfg None gives the crop alone."""
    geo = crop_map(crop)
    if cfg is None:
        return geo, False
    z = rng.uniform(*cfg.zoom)
    ox, oy = rng.uniform(0.0, 1.0 - 1.0 / z, 2)
    geo = np.array([[z, 0, -ox * z], [0, z, -oy * z], [0, 0, 1.0]]) @ geo
    flipped = bool(rng.random() < cfg.hflip_p)
    if flipped:
        geo = np.array([[-1.0, 0, 1.0], [0, 1, 0], [0, 0, 1]]) @ geo
    return geo, flipped


def warp(img: np.ndarray, geo: np.ndarray, out_size: int) -> np.ndarray:
    """Apply a normalised map to a square (n, n[, c]) image, producing (out_size, out_size[, c]), bilinear."""
    mat = to_pixels(geo, img.shape[0], out_size)
    return cv2.warpAffine(img, mat, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _colour_luts(rng: np.random.Generator, cfg: AugmentConfig, mean_level: float):
    """Draw one colour-jitter setting; returns (rgb LUT (256,) uint8, hsv LUT (256, 1, 3) uint8)."""
    levels = np.arange(256, dtype=np.float64)
    bf = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    cf = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    sf = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    hs = rng.uniform(-cfg.hue, cfg.hue) * 180.0
    rgb = np.clip((levels * bf - mean_level * bf) * cf + mean_level * bf, 0, 255).round().astype(np.uint8)
    hsv = np.stack([np.mod(np.round(levels + hs), 180), np.clip(np.round(levels * sf), 0, 255), levels], -1)
    return rgb, hsv.astype(np.uint8).reshape(256, 1, 3)


def photometric(images: list[np.ndarray], rng: np.random.Generator, cfg: AugmentConfig) -> list[np.ndarray]:
    """Colour jitter, blur, Gaussian noise and JPEG with ONE draw shared by all images (uint8 (S, S, 3) each).

    Colour jitter: brightness and contrast through one lookup table (contrast around the mean level of the
    first image, so every image gets the same table), saturation scale and hue shift through HSV tables.
    Noise: one N(0, std^2) field added to every image. JPEG: each image encoded and decoded at the drawn
    quality (OpenCV's codec).
    """
    out = list(images)
    if rng.random() < cfg.colour_p:
        mean_level = float(cv2.mean(cv2.cvtColor(out[0], cv2.COLOR_RGB2GRAY))[0])
        rgb, hsv = _colour_luts(rng, cfg, mean_level)
        out = [cv2.cvtColor(cv2.LUT(cv2.cvtColor(cv2.LUT(im, rgb), cv2.COLOR_RGB2HSV), hsv), cv2.COLOR_HSV2RGB)
               for im in out]
    if rng.random() < cfg.blur_p:
        sigma = rng.uniform(*cfg.blur_sigma)
        out = [cv2.GaussianBlur(im, (0, 0), sigma) for im in out]
    if rng.random() < cfg.noise_p:
        std = rng.uniform(*cfg.noise_std)
        noise = rng.standard_normal(out[0].shape, dtype=np.float32)
        noise *= np.float32(std)
        out = [cv2.add(im, noise, dtype=cv2.CV_8U) for im in out]
    if rng.random() < cfg.jpeg_p:
        q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        out = [_jpeg(im, q) for im in out]
    return out


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed at quality {quality}")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def random_erase(images: list[np.ndarray], maps: list[np.ndarray], rng: np.random.Generator,
                 cfg: AugmentConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """With p = erase_p, fill one random box (area and aspect from cfg) with one random colour in every image
    and set every map (e.g. the boundary, any resolution) to 0 inside the same box: an erased blend leaves
    no visible artefact, so it gets no target. Inputs are not modified."""
    if rng.random() >= cfg.erase_p:
        return images, maps
    area = rng.uniform(*cfg.erase_area)
    aspect = np.exp(rng.uniform(np.log(cfg.erase_aspect[0]), np.log(cfg.erase_aspect[1])))
    bw, bh = min(1.0, np.sqrt(area * aspect)), min(1.0, np.sqrt(area / aspect))
    x0, y0 = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
    colour = rng.integers(0, 256, 3).astype(np.uint8)

    def box(n: int) -> tuple[slice, slice]:
        return slice(int(round(y0 * n)), int(round((y0 + bh) * n))), slice(int(round(x0 * n)), int(round((x0 + bw) * n)))

    new_images = []
    for im in images:
        im = im.copy()
        im[box(im.shape[0])] = colour
        new_images.append(im)
    new_maps = []
    for m in maps:
        m = m.copy()
        m[box(m.shape[0])] = 0
        new_maps.append(m)
    return new_images, new_maps
