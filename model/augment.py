"""Training augmentation applied jointly to a (real, fake) pair and its boundary map.

The paper's list (section 4.1): horizontal flip, random crop, random scale, random erasing, colour jitter,
Gaussian noise, blur, JPEG compression (quality 40..100). Both images of a pair get the same draw (same
geometry, same colours, same noise field, same erased box), so they keep differing only by the blend, and
the boundary map gets the same geometry at heatmap resolution, so the targets stay aligned with the pixels.

Geometry is one axis-aligned crop window in whole pixels (the SBI margin crop and a random zoom-and-crop
composed) plus a flip: images are cropped and resized straight to the output size, and the mask-grid
boundary is warped with the same map (in normalised coordinates) straight to the heatmap size.
Probabilities and ranges are `AugmentConfig` fields; the defaults are ours (the paper names the transforms, not their parameters), except JPEG quality 40..100.
Photometric steps run on uint8 with lookup tables where possible (these run once per training image).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


@dataclass(frozen=True)
class Geometry:
    """An axis-aligned crop of an n x n input (window: x0, y0, x1, y1 in whole pixels, exclusive ends)
    resized to the output square, then mirrored if `flip`."""

    window: tuple[int, int, int, int]
    flip: bool
    size_in: int

    def norm_map(self) -> np.ndarray:
        """The same geometry as a (3, 3) map in normalised coordinates (for maps of any resolution)."""
        x0, y0, x1, y1 = (v / self.size_in for v in self.window)
        geo = crop_map((x0, y0, x1, y1))
        if self.flip:
            geo = np.array([[-1.0, 0, 1.0], [0, 1, 0], [0, 0, 1]]) @ geo
        return geo


def sample_geometry(rng: np.random.Generator, cfg: AugmentConfig | None, size_in: int,
                    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> Geometry:
    """The `crop` box (fractions of the side), then (if cfg) a random zoom z with a uniformly placed window
    of side 1/z inside it (random scale + random crop), rounded to whole input pixels so that images are
    cropped and resized rather than warped; then a horizontal flip with p = hflip_p. cfg None: crop only."""
    x0, y0, x1, y1 = crop
    flip = False
    if cfg is not None:
        z = rng.uniform(*cfg.zoom)
        ox, oy = rng.uniform(0.0, 1.0 - 1.0 / z, 2)
        w, h = (x1 - x0) / z, (y1 - y0) / z
        x0, y0 = x0 + ox * (x1 - x0), y0 + oy * (y1 - y0)
        x1, y1 = x0 + w, y0 + h
        flip = bool(rng.random() < cfg.hflip_p)
    px0, py0 = int(round(x0 * size_in)), int(round(y0 * size_in))
    px1, py1 = max(px0 + 1, int(round(x1 * size_in))), max(py0 + 1, int(round(y1 * size_in)))
    return Geometry((px0, py0, min(size_in, px1), min(size_in, py1)), flip, size_in)


def apply_geometry(img: np.ndarray, geom: Geometry, out_size: int) -> np.ndarray:
    """Crop the window of a square (n, n[, c]) image and resize it (bilinear) to (out_size, out_size[, c]),
    mirrored if geom.flip: the same pixels as warp(img, geom.norm_map(), out_size) up to OpenCV's
    fixed-point rounding, three times faster."""
    x0, y0, x1, y1 = geom.window
    out = cv2.resize(img[y0:y1, x0:x1], (out_size, out_size), interpolation=cv2.INTER_LINEAR)
    return cv2.flip(out, 1) if geom.flip else out


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


@lru_cache(maxsize=4)
def noise_bank(size: int) -> np.ndarray:
    """float32 (2 size, 2 size, 3) standard normal field, drawn once per process from a fixed seed.

    Drawing 3 size^2 normals per noisy image costs more than everything else in the augmentation, so each
    noisy image takes a window of this bank at a random offset (size^2 + 1 choices) and sign instead:
    about 300k distinct fields at 384, identical in every worker and run.
    """
    return np.random.default_rng(20240601).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)


@dataclass
class PhotometricDraw:
    """One draw of the photometric augmentation (None = step not applied)."""

    colour: tuple[np.ndarray, np.ndarray] | None
    blur_sigma: float | None
    noise: tuple[float, int, int] | None          # std (levels), bank row and column offsets (sign in std)
    jpeg_quality: int | None


def draw_photometric(rng: np.random.Generator, cfg: AugmentConfig, first: np.ndarray) -> PhotometricDraw:
    """Draw colour jitter (contrast around the mean level of `first`), blur, noise and JPEG settings."""
    colour = blur = noise = jpeg = None
    if rng.random() < cfg.colour_p:
        mean_level = float(cv2.mean(cv2.cvtColor(first, cv2.COLOR_RGB2GRAY))[0])
        colour = _colour_luts(rng, cfg, mean_level)
    if rng.random() < cfg.blur_p:
        blur = float(rng.uniform(*cfg.blur_sigma))
    if rng.random() < cfg.noise_p:
        std = float(rng.uniform(*cfg.noise_std)) * (1.0 if rng.random() < 0.5 else -1.0)
        oy, ox = (int(v) for v in rng.integers(0, first.shape[0] + 1, 2))
        noise = (std, oy, ox)
    if rng.random() < cfg.jpeg_p:
        jpeg = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    return PhotometricDraw(colour, blur, noise, jpeg)


def apply_photometric(img: np.ndarray, draw: PhotometricDraw, full_size: int | None = None,
                      origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Apply a draw to a uint8 (h, w, 3) image that is the window at `origin` (x, y) of a full_size image.

    Colour jitter (brightness/contrast lookup table, then saturation/hue through HSV tables), Gaussian
    blur, the bank noise (the window's own part of the full image's field), JPEG (OpenCV's codec).
    """
    out = img
    if draw.colour is not None:
        rgb, hsv = draw.colour
        out = cv2.cvtColor(cv2.LUT(cv2.cvtColor(cv2.LUT(out, rgb), cv2.COLOR_RGB2HSV), hsv), cv2.COLOR_HSV2RGB)
    if draw.blur_sigma is not None:
        out = cv2.GaussianBlur(out, (0, 0), draw.blur_sigma)
    if draw.noise is not None:
        std, oy, ox = draw.noise
        h, w = out.shape[:2]
        bank = noise_bank(full_size or h)
        y, x = oy + origin[1], ox + origin[0]
        out = cv2.addWeighted(out, 1.0, bank[y:y + h, x:x + w], std, 0.0, dtype=cv2.CV_8U)
    if draw.jpeg_quality is not None:
        out = _jpeg(out, draw.jpeg_quality)
    return out


# JPEG works on 16-px blocks (8-px DCT blocks, chroma subsampled 2x2); blur reaches < 16 px (3 sigma <= 4.5).
_GRID = 16


def _grow_aligned(box: tuple[int, int, int, int], grow: int, size: int,
                  grid: int = _GRID) -> tuple[int, int, int, int]:
    """Grow a box by `grow` px, snap it outwards to a `grid`-px grid, clip to [0, size]."""
    x0, y0, x1, y1 = box
    return (max(0, (x0 - grow) // grid * grid), max(0, (y0 - grow) // grid * grid),
            min(size, -(-(x1 + grow) // grid) * grid), min(size, -(-(y1 + grow) // grid) * grid))


def photometric(images: list[np.ndarray], rng: np.random.Generator, cfg: AugmentConfig) -> list[np.ndarray]:
    """Colour jitter, blur, Gaussian noise and JPEG with ONE draw shared by all images (uint8 (S, S, 3))."""
    draw = draw_photometric(rng, cfg, images[0])
    return [apply_photometric(im, draw) for im in images]


def photometric_pair(real: np.ndarray, fake: np.ndarray, box: tuple[int, int, int, int],
                     rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """`photometric` for a pair whose fake equals the real outside `box` (x0, y0, x1, y1).

    The real is processed whole; the fake only near the box. Each step is pixel-wise (colour, noise), local
    (blur, reach <= 3 sigma < 16 px) or per 16-px JPEG block (identical blocks give identical codes; chroma
    upsampling reads one neighbouring sample). So outside the box grown by one block and snapped to the
    block grid, the processed fake equals the processed real; inside that region it is computed from a
    window one block larger still. The result equals processing the whole fake (checked in tests).
    """
    size = real.shape[0]
    draw = draw_photometric(rng, cfg, real)
    real_out = apply_photometric(real, draw)
    if box[2] <= box[0] or box[3] <= box[1]:
        return real_out, real_out.copy()
    x0, y0, x1, y1 = _grow_aligned(box, _GRID, size)               # where the processed fake may differ
    # What those pixels depend on; columns snapped to 64 px so that OpenCV's vectorised loops split every row
    # of the window into the same chunks as the whole image (colour conversions round differently in
    # vector and scalar code, so a window with a different tail would not be bit-identical).
    wx0, wy0, wx1, wy1 = _grow_aligned((x0, y0, x1, y1), _GRID, size, 64)
    part = apply_photometric(np.ascontiguousarray(fake[wy0:wy1, wx0:wx1]), draw, size, (wx0, wy0))
    fake_out = real_out.copy()
    fake_out[y0:y1, x0:x1] = part[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
    return real_out, fake_out


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed at quality {quality}")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def warp_box(box: tuple[int, int, int, int], geo: np.ndarray, n_in: int, n_out: int,
             pad: int = 3) -> tuple[int, int, int, int]:
    """Pixel box of an n_in image -> padded, clipped pixel box of the n_out image under the normalised map
    `geo` (so that output pixels outside it only sample input pixels outside `box`)."""
    x0, y0, x1, y1 = box
    mat = to_pixels(geo, n_in, n_out)
    pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ mat.T
    return (max(0, int(np.floor(pts[:, 0].min())) - pad), max(0, int(np.floor(pts[:, 1].min())) - pad),
            min(n_out, int(np.ceil(pts[:, 0].max())) + pad), min(n_out, int(np.ceil(pts[:, 1].max())) + pad))


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
        rows = slice(int(round(y0 * n)), int(round((y0 + bh) * n)))
        return rows, slice(int(round(x0 * n)), int(round((x0 + bw) * n)))

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
