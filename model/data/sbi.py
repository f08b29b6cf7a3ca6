"""Self-blended images (SBI): a real face blended with a colour-transformed, slightly deformed copy of itself.

A pseudo-fake is I_M = M * I_F + (1 - M) * I_B (blend of a foreground face I_F into a background face I_B
through a soft mask M in [0, 1]). Every function is pure: it takes numpy arrays and an np.random.Generator
and returns new arrays; the same generator state gives the same sample.

Resolutions. Faces are uint8 RGB (S, S, 3) crops (S = 384 in our shards). The recipe's geometric parameters
(elastic alpha/sigma, blur kernels, margins) are pixel values defined on 256 x 256 crops, so the mask is
built and deformed on a `grid` x `grid` raster (default 256) and only the final soft mask is resampled to
S for blending. That keeps the recipe's mask distribution independent of S, and is also where most of the
speed comes from: no full-resolution float mask processing, and the source face is only warped, colour-
transformed and blended inside the mask's bounding box.
"""
from __future__ import annotations

import cv2
import numpy as np

from model.config import SBIConfig
from model.data import colour
from model.data.blend import SyntheticPair, bbox, blend_roi, odd_size, resample_mask, roi_at, to_pixels, warp_roi
from model.data.masks import MASK_KINDS, flip_landmarks, hull_mask

# The defaults of functions taking a `cfg` (read only: never mutated).
DEFAULT_SBI = SBIConfig()


def affine_about_centre(scale: float, tx: float, ty: float) -> np.ndarray:
    """(3, 3) map in normalised coordinates ([0, 1]^2, pixel edges): scale about the centre, then shift."""
    return np.array([[scale, 0.0, 0.5 - 0.5 * scale + tx],
                     [0.0, scale, 0.5 - 0.5 * scale + ty],
                     [0.0, 0.0, 1.0]])


def flip_face(face: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an (H, W, 3) face and remap its (68, 2) landmarks so that each index keeps its meaning."""
    return cv2.flip(face, 1), flip_landmarks(landmarks, face.shape[1])


def source_colour_transform(img: np.ndarray, rng: np.random.Generator, cfg: SBIConfig = DEFAULT_SBI,
                            applied: list[str] | None = None) -> np.ndarray:
    """Step 3 of SBI: RGB shift +-20 (p = cfg.rgb_shift_p), hue/sat/value +-0.3 (cfg.hsv_p),
    brightness/contrast +-0.1 (cfg.brightness_contrast_p), then one of {down-up scale by 2 or 4, sharpen
    (alpha 0.2..0.5, lightness 0.5..1)}. uint8 (h, w, 3) -> uint8 (h, w, 3); see model.data.colour for the uint8
    semantics. The names of the steps that fired are appended to `applied`. Down-up scaling samples this
    image's own pixel grid at 1/2 or 1/4 (nearest) and restores it bilinearly.
    """
    fired = applied if applied is not None else []
    out = img
    if rng.random() < cfg.rgb_shift_p:
        out = colour.apply_rgb_shift(out, colour.draw_rgb_shift(rng))
        fired.append("RGBShift")
    if rng.random() < cfg.hsv_p:
        out = colour.apply_hsv(out, colour.draw_hsv(rng))
        fired.append("HueSaturationValue")
    if rng.random() < cfg.brightness_contrast_p:
        lim = cfg.brightness_contrast
        out = colour.apply_lut(out, colour.draw_brightness_contrast(rng, lim, lim))
        fired.append("RandomBrightnessContrast")
    if rng.random() < cfg.downscale_share:
        out = colour.down_up(out, (2, 4)[int(rng.integers(2))])
        fired.append("RandomDownScale")
    else:
        out = colour.sharpen(out, rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0))
        fired.append("Sharpen")
    return out


def elastic_field(shape: tuple[int, int], rng: np.random.Generator, alpha: float = 50.0, sigma: float = 7.0,
                  coarse: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Displacement fields (dx, dy), float32 (h, w) each: alpha * (uniform noise in [-1, 1] smoothed by a
    Gaussian of std sigma px), as in the recipe's elastic transform.

    Speed: the noise is drawn on a grid `coarse` times sparser, smoothed there with sigma / coarse and
    interpolated back. For sigma >> coarse this is the same random field: white noise of variance v on a grid
    of spacing c smoothed by a Gaussian of std s (in fine pixels) has std sqrt(v) / (2 sqrt(pi) s / c), so
    the coarse field is scaled by 1 / coarse to keep the fine-grid variance, and its spectrum (Gaussian,
    std 1 / (2 pi sigma) cycles/px) lies far below the coarse Nyquist frequency 1 / (2 coarse).
    `coarse=1` draws at full resolution.
    """
    h, w = shape
    ch, cw = -(-h // coarse), -(-w // coarse)
    noise = rng.random((2, ch, cw), dtype=np.float32) * 2.0 - 1.0
    gain = np.float32(alpha / coarse)
    fields = []
    for k in range(2):
        f = cv2.GaussianBlur(noise[k], (0, 0), sigma / coarse, borderType=cv2.BORDER_REFLECT_101) * gain
        if coarse > 1:
            # Coarse sample j sits at fine coordinate coarse * j + (coarse - 1) / 2 (cell centres).
            f = cv2.resize(f, (cw * coarse, ch * coarse), interpolation=cv2.INTER_LINEAR)[:h, :w]
        fields.append(f)
    return fields[0], fields[1]


def elastic_warp(mask: np.ndarray, rng: np.random.Generator, alpha: float = 50.0, sigma: float = 7.0,
                 coarse: int = 4) -> np.ndarray:
    """Elastic deformation of a float32 (h, w) mask by `elastic_field` displacements, bilinear remapping
    (edges replicated)."""
    h, w = mask.shape
    dx, dy = elastic_field((h, w), rng, alpha, sigma, coarse)
    gx = np.arange(w, dtype=np.float32)[None, :] + dx
    gy = np.arange(h, dtype=np.float32)[:, None] + dy
    return cv2.remap(mask, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def soften_mask(mask: np.ndarray, rng: np.random.Generator, cfg: SBIConfig = DEFAULT_SBI) -> np.ndarray:
    """Step 5 of SBI: 0/1 (g, g) mask -> float32 (g, g) soft mask M in [0, 1] with max 1.

    Resize by 0.8..1.25 per side (bilinear); Gaussian blur with an odd kernel k1 in 5..25 of the FLOAT mask,
    max-normalise and set every value below 1 to 0: only pixels whose whole k1 x k1 window lies inside the
    hull survive, so this step erodes the hull by about k1 / 2 (the reference's behaviour; with
    `cfg.blur1_float` False the blur runs on the uint8 mask, whose blurred values round back to 0/1, and
    the step keeps almost every hull pixel). Then blur again (odd kernel 5..25, integer sigma 5..45),
    max-normalise and resize back.
    """
    g_h, g_w = mask.shape
    fx, fy = rng.uniform(*cfg.resize_range, 2)
    size = (max(8, int(round(g_w * fx))), max(8, int(round(g_h * fy))))
    m = cv2.resize(mask.astype(np.float32 if cfg.blur1_float else np.uint8), size, interpolation=cv2.INTER_LINEAR)
    k1 = odd_size(rng, *cfg.blur1_kernels)
    k2 = odd_size(rng, *cfg.blur2_kernels)
    sigma2 = float(rng.integers(cfg.blur2_sigma[0], cfg.blur2_sigma[1] + 1))
    box = bbox(m)
    if box is None:
        raise ValueError("mask is empty before softening")
    # Both blurs only reach k1 // 2 + k2 // 2 px beyond the mask, so they run on its padded box: outside
    # it the result is 0 either way, and a box edge on the image edge reflects like the whole image does.
    pad = k1 // 2 + k2 // 2 + 2
    x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
    x1, y1 = min(size[0], box[2] + pad), min(size[1], box[3] + pad)
    part = _first_blur_core(m[y0:y1, x0:x1], k1, cfg.blur1_float)
    part = cv2.GaussianBlur(part, (k2, k2), sigma2)
    m = np.zeros(m.shape, np.float32)
    m[y0:y1, x0:x1] = part
    peak = float(m.max())
    if peak <= 0:
        raise ValueError("mask vanished while softening (empty or sub-kernel-sized hull)")
    m *= 1.0 / peak
    return cv2.resize(m, (g_w, g_h), interpolation=cv2.INTER_LINEAR)


def _first_blur_core(m: np.ndarray, k1: int, exact_float: bool) -> np.ndarray:
    """What survives the first blur: float32 0/1 map of the pixels where GaussianBlur(m, k1) equals its max.

    The Gaussian's k1 x k1 taps are all positive, so on a float mask with values in [0, 1] the blurred value
    reaches the all-ones maximum exactly where the whole window is 1: a k1 x k1 erosion of (m == 1), which
    is computed directly (same border rule; cheaper than the blur; the two differ only by the blur's float
    rounding, a few edge pixels per mask, checked in tests). If no window is all ones, the
    blur's own maximum is kept, as the recipe does. On a uint8 mask the blur rounds back to 0/1.
    """
    if exact_float and m.dtype == np.float32:
        core = cv2.erode((m >= 1.0).astype(np.uint8), np.ones((k1, k1), np.uint8),
                         borderType=cv2.BORDER_REFLECT_101)
        if core.any():
            return core.astype(np.float32)
    blurred = cv2.GaussianBlur(m, (k1, k1), 0)
    peak = float(blurred.max())
    if peak <= 0:
        raise ValueError("mask vanished while softening (empty or sub-kernel-sized hull)")
    return (blurred >= peak).astype(np.float32)             # x / max < 1 -> 0, and the rest is exactly 1


def _preimage_box(mat: np.ndarray, roi: tuple[int, int, int, int], size: int, pad: int, align: int):
    """Clipped, aligned box of input pixels that cv2.warpAffine(., mat) reads for the output box `roi`."""
    inv = cv2.invertAffineTransform(mat)
    x0, y0, x1, y1 = roi
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64)
    pts = corners @ inv.T
    bx0 = max(0, int(np.floor(pts[:, 0].min())) - pad)
    by0 = max(0, int(np.floor(pts[:, 1].min())) - pad)
    bx0 -= bx0 % align
    by0 -= by0 % align
    bx1 = min(size, int(np.ceil(pts[:, 0].max())) + pad)
    by1 = min(size, int(np.ceil(pts[:, 1].max())) + pad)
    return bx0, by0, bx1, by1


def random_margin(rng: np.random.Generator, cfg: SBIConfig = DEFAULT_SBI) -> tuple[float, float, float, float]:
    """Step 7 of SBI: crop box (x0, y0, x1, y1) as fractions of the side. One margin m in cfg.margin grid px
    cut from all four sides (the face stays centred), or with `cfg.margin_symmetric` False one per side."""
    n = 1 if cfg.margin_symmetric else 4
    m = np.resize(rng.integers(cfg.margin[0], cfg.margin[1] + 1, n), 4) / cfg.grid
    return float(m[0]), float(m[1]), float(1.0 - m[2]), float(1.0 - m[3])


def sbi(face: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
        cfg: SBIConfig = DEFAULT_SBI, kind: str | None = None, flip: bool | None = None,
        augment_source: bool | None = None) -> SyntheticPair:
    """Self-blended image from one real face (steps 1-7 of the recipe; step 7 is returned as `crop`).

    face: uint8 (S, S, 3) RGB; landmarks: (68, 2) crop pixels. `kind` / `flip` force a mask type / flip
    decision and `augment_source` which side gets the colour transform (None draws them: the source or
    the background, which is also the returned real, p = 0.5 each; the draw is made either way so that
    forcing it leaves every other random choice unchanged). The source and mask get the same random
    scale/translation; the mask alone is then elastically warped and softened; r is drawn from
    {0.25, 0.5, 0.75, 1, 1, 1}.
    """
    if face.ndim != 3 or face.shape[0] != face.shape[1] or face.shape[2] != 3 or face.dtype != np.uint8:
        raise ValueError(f"sbi: expected a square uint8 (S, S, 3) face, got {face.dtype} {face.shape}")
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise ValueError(f"sbi: expected finite (68, 2) landmarks, got shape {lm.shape}")
    size, g = face.shape[0], cfg.grid

    flipped = bool(rng.random() < cfg.flip_p) if flip is None else bool(flip)
    if flipped:
        face, lm = flip_face(face, lm)
    if kind is None:
        kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]

    side = bool(rng.random() < 0.5)
    augment_source = side if augment_source is None else bool(augment_source)
    colour_rng = rng.spawn(1)[0]           # drawn now, used on the source box or the whole real below
    applied: list[str] = []
    real = face if augment_source else source_colour_transform(face, colour_rng, cfg, applied)

    scale = rng.uniform(*cfg.scale)
    tx, ty = rng.uniform(-cfg.translate[0], cfg.translate[0]), rng.uniform(-cfg.translate[1], cfg.translate[1])
    geo = affine_about_centre(scale, tx, ty)
    # Warping a filled convex hull = filling the hull of the warped points (an affine map keeps convexity),
    # so the mask is drawn directly in the deformed position instead of being resampled.
    lm_grid = (lm + 0.5) * (g / size) - 0.5
    lm_grid = lm_grid @ to_pixels(geo, g, g)[:, :2].T.astype(np.float32) + to_pixels(geo, g, g)[:, 2].astype(np.float32)
    mask = hull_mask(lm_grid, (g, g), kind, cfg.forehead).astype(np.float32)
    mask = elastic_warp(mask, rng, cfg.elastic_alpha, cfg.elastic_sigma)
    mask_u8 = (mask >= 0.5).astype(np.uint8)   # the recipe keeps the deformed mask binary (nearest)
    if not mask_u8.any():
        raise ValueError("sbi: the landmark hull is empty at the mask resolution")
    soft = soften_mask(mask_u8, rng, cfg)
    ratio = float(cfg.blend_ratios[int(rng.integers(len(cfg.blend_ratios)))])
    crop = random_margin(rng, cfg)

    box = bbox(soft)
    roi = roi_at(box, g, size)
    x0, y0, x1, y1 = roi
    mat = to_pixels(geo, size, size)
    if augment_source:
        # Only the pixels the warp reads for the mask's box are transformed; the box origin is a multiple
        # of 4 so that down-up scaling samples the same pixel grid as on the whole face.
        bx0, by0, bx1, by1 = _preimage_box(mat, roi, size, pad=8, align=4)
        src_part = source_colour_transform(face[by0:by1, bx0:bx1], colour_rng, cfg, applied)
        mat_part = mat.copy()
        mat_part[:, 2] += mat[:, :2] @ np.array([bx0, by0], np.float64)
        src = warp_roi(src_part, mat_part, roi)
    else:
        src = warp_roi(face, mat, roi)
    weight = resample_mask(soft, size)[y0:y1, x0:x1] * np.float32(ratio)
    fake = real.copy()
    fake[y0:y1, x0:x1] = blend_roi(src, real[y0:y1, x0:x1], weight)
    return SyntheticPair(real=np.ascontiguousarray(real), fake=fake, mask=soft, ratio=ratio, crop=crop,
                         kind=kind, flipped=flipped, box=roi, aug_side="source" if augment_source else "target",
                         applied=tuple(applied))


def sbi_fake_for_eval(face: np.ndarray, landmarks: np.ndarray, seed: int | np.random.SeedSequence,
                      forehead: bool = False) -> np.ndarray:
    """A deterministic SBI fake of `face` for evaluation demos: same geometry as the face (no flip, no
    margin crop), background left untouched so it equals the input outside the mask.
    uint8 (S, S, 3) -> uint8 (S, S, 3); the same seed always gives the same fake."""
    rng = np.random.default_rng(seed)
    return sbi(face, landmarks, rng, SBIConfig(flip_p=0.0, forehead=forehead), augment_source=True).fake
