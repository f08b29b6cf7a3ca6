"""Training augmentation applied jointly to a (real, fake) pair and its target maps, as the reference applies it.

After synthesis (SBI step 7 gives a margin crop), every pair goes through (config section ``augment``):
1. geometry, ONE draw for real, fake and every target map: a horizontal flip (p 0.5) and, with p 0.5, one of
   {random crop, random scale 0.85..1.15, random erasing} picked uniformly;
2. colour, ONE draw shared by real and fake: RGB shift +-20, hue/sat/value +-0.3, brightness/contrast +-0.3
   (p 0.3 each), JPEG quality 40..100 (p 0.5). Gaussian noise and blur are in the paper's list but switched
   off in the reference's SBI path: they are options here, off by default. So is a resolution step (in neither
   the paper nor the reference): downscale, JPEG at the small size, upscale back.
Rates and ranges are the ones measured on the reference (`../shared/reference/sbi_distribution.json`,
"augmentation"); the reference's quirks are switches: its random crop keeps the scale and shifts the window
to the corner, padding black (`crop_mode: shift`; `zoom` resizes the window instead), and its random scale
zooms about the top-left corner (a bug: `scale_about: centre` is our default, `corner` the reference).

Geometry is an axis-aligned map in normalised coordinates ([0, 1]^2, pixel edges) from the synthesis face to
the output, plus the input window it reads (content outside the window is black): images are cropped and
resized when that is all it is, warped otherwise, and maps of any resolution get the same map.
Photometric steps run on uint8 with lookup tables (see model.data.colour).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from model.config import AugmentConfig
from model.data import colour
from model.data.blend import to_pixels


def crop_map(box: tuple[float, float, float, float]) -> np.ndarray:
    """(3, 3) normalised map sending the box (x0, y0, x1, y1) onto the unit square."""
    x0, y0, x1, y1 = box
    return np.array([[1.0 / (x1 - x0), 0, -x0 / (x1 - x0)], [0, 1.0 / (y1 - y0), -y0 / (y1 - y0)], [0, 0, 1]])


# ----------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Output = `norm` (a (3, 3) axis-aligned normalised map) applied to the input, reading only the input
    `window` (x0, y0, x1, y1, normalised; black outside it), then mirrored if `flip`; `erase` is an output box
    (normalised) set to `erase_value` in images and to 0 in target maps, or None. `applied` names the steps
    that fired; `erase_targets` says whether target maps are erased too. `kept` is the input side fraction
    the output spans (for the face scale)."""

    norm: np.ndarray
    window: tuple[float, float, float, float]
    flip: bool
    erase: tuple[float, float, float, float] | None = None
    erase_value: int = 0
    erase_targets: bool = True
    applied: tuple[str, ...] = ()

    def full_map(self) -> np.ndarray:
        if not self.flip:
            return self.norm
        return np.array([[-1.0, 0, 1.0], [0, 1, 0], [0, 0, 1]]) @ self.norm

    @property
    def kept(self) -> float:
        """Side of the output in input units (mean of both axes): 1 / |scale| of the map."""
        return float(0.5 * (1.0 / abs(self.norm[0, 0]) + 1.0 / abs(self.norm[1, 1])))


def _erase_box(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[float, float, float, float] | None:
    """A box of area fraction in cfg.erase_area and aspect (log-uniform) in cfg.erase_aspect that fits the
    image (up to 10 tries, as torchvision's RandomErasing), uniformly placed; None if none fits."""
    for _ in range(10):
        area = rng.uniform(*cfg.erase_area)
        aspect = np.exp(rng.uniform(np.log(cfg.erase_aspect[0]), np.log(cfg.erase_aspect[1])))
        bw, bh = np.sqrt(area * aspect), np.sqrt(area / aspect)
        if bw < 1.0 and bh < 1.0:
            x0, y0 = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
            return float(x0), float(y0), float(x0 + bw), float(y0 + bh)
    return None


def sample_geometry(rng: np.random.Generator, cfg: AugmentConfig | None,
                    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
                    size_in: int | None = None) -> Geometry:
    """The margin `crop` box (fractions of the side, rounded to whole pixels of a size_in image if given),
    then (if cfg is enabled) a flip and the one-of {crop, scale, erase} step of the module docstring."""
    x0, y0, x1, y1 = crop
    if size_in:
        x0, y0, x1, y1 = (round(v * size_in) / size_in for v in crop)
    norm = crop_map((x0, y0, x1, y1))
    window = (x0, y0, x1, y1)
    if cfg is None or not cfg.enabled:
        return Geometry(norm, window, False)
    applied = []
    flip = bool(rng.random() < cfg.hflip_p)
    if flip:
        applied.append("HorizontalFlip")
    erase = None
    if rng.random() < cfg.geometry_p:
        which = int(rng.integers(3))
        if which == 0:                                   # random crop of (1 - c) of each side
            cx, cy = (int(v) / 100 for v in rng.integers(0, round(cfg.crop_max * 100) + 1, 2))
            sx, sy = rng.uniform(0, 1, 2) * (cx, cy)     # start, as a fraction of the (margin-cropped) side
            w, h = x1 - x0, y1 - y0
            window = (x0 + sx * w, y0 + sy * h, x0 + (sx + 1 - cx) * w, y0 + (sy + 1 - cy) * h)
            if cfg.crop_mode == "zoom":
                norm = crop_map(window)
            else:                                        # the window keeps its scale, placed at the corner
                norm = np.array([[1, 0, -sx], [0, 1, -sy], [0, 0, 1]]) @ norm
            applied.append("RandomCrop")
        elif which == 1:                                 # random scale
            s = rng.uniform(1 - cfg.scale_limit, 1 + cfg.scale_limit)
            c = 0.0 if cfg.scale_about == "corner" else 0.5
            norm = np.array([[s, 0, c - s * c], [0, s, c - s * c], [0, 0, 1]]) @ norm
            applied.append("RandomScale")
        else:
            erase = _erase_box(rng, cfg)
            if erase is not None:
                applied.append("RandomErasing")
    return Geometry(norm, window, flip, erase, cfg.erase_value, cfg.erase_targets, tuple(applied))


def _window_pixels(window: tuple[float, float, float, float], n: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(round(v * n)) for v in window)
    return max(0, x0), max(0, y0), min(n, max(x0 + 1, x1)), min(n, max(y0 + 1, y1))


def _erase(img: np.ndarray, box: tuple[float, float, float, float], value) -> np.ndarray:
    n = img.shape[0]
    x0, y0, x1, y1 = (int(round(v * n)) for v in box)
    img[y0:y1, x0:x1] = value
    return img


def apply_geometry(img: np.ndarray, geom: Geometry, out_size: int, is_map: bool = False) -> np.ndarray:
    """Geometry applied to a square (n, n[, c]) image or target map (is_map: erased to 0 if the config
    erases targets, else left; images erased to `erase_value`), bilinear, black outside the window.
    Crop-and-resize when the map sends the window onto the whole output (the same pixels as the warp up
    to OpenCV's fixed-point rounding, three times faster), an affine warp otherwise."""
    n = img.shape[0]
    px0, py0, px1, py1 = _window_pixels(geom.window, n)
    part = img[py0:py1, px0:px1]
    mat = to_pixels(geom.norm, n, out_size)
    mat[:, 2] += mat[:, :2] @ np.array([px0, py0], np.float64)      # read from the window's own pixels
    sx, sy = mat[0, 0], mat[1, 1]
    fills = (abs(mat[0, 2] - (0.5 * sx - 0.5)) < 1e-6 and abs(mat[1, 2] - (0.5 * sy - 0.5)) < 1e-6
             and abs(sx * part.shape[1] - out_size) < 1e-6 and abs(sy * part.shape[0] - out_size) < 1e-6)
    if fills:
        out = cv2.resize(part, (out_size, out_size), interpolation=cv2.INTER_LINEAR)
    else:
        out = cv2.warpAffine(part, mat, (out_size, out_size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if geom.flip:
        out = cv2.flip(out, 1)
    if geom.erase is not None and (not is_map or geom.erase_targets):
        out = _erase(out, geom.erase, 0 if is_map else geom.erase_value)
    return out


def warp(img: np.ndarray, geo: np.ndarray, out_size: int) -> np.ndarray:
    """Apply a normalised map to a square (n, n[, c]) image, producing (out_size, out_size[, c]), bilinear."""
    mat = to_pixels(geo, img.shape[0], out_size)
    return cv2.warpAffine(img, mat, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def warp_box(box: tuple[int, int, int, int], geo: np.ndarray, n_in: int, n_out: int,
             pad: int = 3) -> tuple[int, int, int, int]:
    """Pixel box of an n_in image -> padded, clipped pixel box of the n_out image under the normalised map
    `geo` (so that output pixels outside it only sample input pixels outside `box`)."""
    x0, y0, x1, y1 = box
    mat = to_pixels(geo, n_in, n_out)
    pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ mat.T
    return (max(0, int(np.floor(pts[:, 0].min())) - pad), max(0, int(np.floor(pts[:, 1].min())) - pad),
            min(n_out, int(np.ceil(pts[:, 0].max())) + pad), min(n_out, int(np.ceil(pts[:, 1].max())) + pad))


# -------------------------------------------------------------------------------------------- photometric
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

    rgb_shift: tuple[float, float, float] | None = None
    hsv: np.ndarray | None = None
    brightness_contrast: np.ndarray | None = None
    blur_sigma: float | None = None
    noise: tuple[float, int, int] | None = None   # std (levels, sign included), bank row and column offsets
    jpeg_quality: int | None = None
    downscale: float | None = None                # factor; JPEG then runs at the reduced size

    @property
    def applied(self) -> tuple[str, ...]:
        names = (("RGBShift", self.rgb_shift), ("HueSaturationValue", self.hsv),
                 ("RandomBrightnessContrast", self.brightness_contrast), ("GaussianBlur", self.blur_sigma),
                 ("GaussNoise", self.noise), ("ImageCompression", self.jpeg_quality), ("Downscale", self.downscale))
        return tuple(n for n, v in names if v is not None)


def draw_photometric(rng: np.random.Generator, cfg: AugmentConfig, size: int) -> PhotometricDraw:
    """Draw the colour, blur, noise and JPEG settings of one pair (each step with its own probability)."""
    d = PhotometricDraw()
    if rng.random() < cfg.rgb_shift_p:
        d.rgb_shift = colour.draw_rgb_shift(rng, cfg.rgb_shift)
    if rng.random() < cfg.hsv_p:
        d.hsv = colour.draw_hsv(rng, cfg.hsv_shift)
    if rng.random() < cfg.brightness_contrast_p:
        d.brightness_contrast = colour.draw_brightness_contrast(rng, cfg.brightness, cfg.contrast)
    if rng.random() < cfg.blur_p:
        d.blur_sigma = float(rng.uniform(*cfg.blur_sigma))
    if rng.random() < cfg.noise_p:
        std = float(rng.uniform(*cfg.noise_std)) * (1.0 if rng.random() < 0.5 else -1.0)
        oy, ox = (int(v) for v in rng.integers(0, size + 1, 2))
        d.noise = (std, oy, ox)
    if rng.random() < cfg.jpeg_p:
        d.jpeg_quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    # Drawn only when enabled, so the default stream (and every default pair) stays as it was.
    if cfg.downscale_p > 0 and rng.random() < cfg.downscale_p:
        d.downscale = float(rng.uniform(*cfg.downscale_factor))
    return d


def apply_photometric(img: np.ndarray, draw: PhotometricDraw, full_size: int | None = None,
                      origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Apply a draw to a uint8 (h, w, 3) image that is the window at `origin` (x, y) of a full_size image:
    RGB shift, HSV, brightness/contrast, blur, the bank noise (the window's own part of the full image's
    field), JPEG (OpenCV's codec), in that order. A downscale draw needs the whole image (origin (0, 0)): it
    shrinks the image before the JPEG step and enlarges it back after."""
    out = img
    if draw.rgb_shift is not None:
        out = colour.apply_rgb_shift(out, draw.rgb_shift)
    if draw.hsv is not None:
        out = colour.apply_hsv(out, draw.hsv)
    if draw.brightness_contrast is not None:
        out = colour.apply_lut(out, draw.brightness_contrast)
    if draw.blur_sigma is not None:
        out = cv2.GaussianBlur(out, (0, 0), draw.blur_sigma)
    if draw.noise is not None:
        std, oy, ox = draw.noise
        h, w = out.shape[:2]
        bank = noise_bank(full_size or h)
        y, x = oy + origin[1], ox + origin[0]
        out = cv2.addWeighted(out, 1.0, bank[y:y + h, x:x + w], std, 0.0, dtype=cv2.CV_8U)
    if draw.downscale is not None:
        if origin != (0, 0) or (full_size is not None and full_size != out.shape[0]):
            raise ValueError("a downscale draw applies to whole images only")
        h, w = out.shape[:2]
        small = (max(1, round(w / draw.downscale)), max(1, round(h / draw.downscale)))
        out = cv2.resize(out, small, interpolation=cv2.INTER_AREA)
    if draw.jpeg_quality is not None:
        out = _jpeg(out, draw.jpeg_quality)
    if draw.downscale is not None:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
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
    """The photometric steps with ONE draw shared by all images (uint8 (S, S, 3))."""
    draw = draw_photometric(rng, cfg, images[0].shape[0])
    return [apply_photometric(im, draw) for im in images]


def photometric_pair(real: np.ndarray, fake: np.ndarray, box: tuple[int, int, int, int],
                     rng: np.random.Generator, cfg: AugmentConfig
                     ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """`photometric` for a pair whose fake equals the real outside `box` (x0, y0, x1, y1); also returns the
    names of the steps that fired.

    The real is processed whole; the fake only near the box. Each step is pixel-wise (colour, noise), local
    (blur, reach <= 3 sigma < 16 px) or per 16-px JPEG block (identical blocks give identical codes; chroma
    upsampling reads one neighbouring sample). So outside the box grown by one block and snapped to the
    block grid, the processed fake equals the processed real; inside that region it is computed from a
    window one block larger still. The result equals processing the whole fake (checked in tests).
    """
    size = real.shape[0]
    draw = draw_photometric(rng, cfg, size)
    real_out = apply_photometric(real, draw)
    if box[2] <= box[0] or box[3] <= box[1]:
        return real_out, real_out.copy(), draw.applied
    if draw.downscale is not None:              # resampling spreads every pixel: process the fake whole
        return real_out, apply_photometric(fake, draw), draw.applied
    x0, y0, x1, y1 = _grow_aligned(box, _GRID, size)               # where the processed fake may differ
    # What those pixels depend on; columns snapped to 64 px so that OpenCV's vectorised loops split every row
    # of the window into the same chunks as the whole image (colour conversions round differently in
    # vector and scalar code, so a window with a different tail would not be bit-identical).
    wx0, wy0, wx1, wy1 = _grow_aligned((x0, y0, x1, y1), _GRID, size, 64)
    part = apply_photometric(np.ascontiguousarray(fake[wy0:wy1, wx0:wx1]), draw, size, (wx0, wy0))
    fake_out = real_out.copy()
    fake_out[y0:y1, x0:x1] = part[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
    return real_out, fake_out, draw.applied


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed at quality {quality}")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
