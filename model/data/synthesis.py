"""Pseudo-fakes from real faces: self-blended images (SBI) and blended images (BI, Face X-ray style).

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

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from model.data import colour
from model.config import BIConfig, SBIConfig
from model.data.masks import MASK_KINDS, flip_landmarks, hull_mask



@dataclass
class SyntheticPair:
    """One (real, fake) pair before training augmentation.

    real, fake: uint8 (S, S, 3); the fake differs from the real only where `mask` (resampled to S) > 0.
    mask: float32 (grid, grid) soft blend mask M in [0, 1], max 1 (the targets use M, not ratio * M).
    ratio: blend ratio r; the fake is r*M*src + (1 - r*M)*real.
    crop: (x0, y0, x1, y1) margin crop as fractions of the side, to apply to real, fake and mask alike.
    kind: mask type; flipped: whether the frame was mirrored first.
    aug_side, applied: which image got the source transform, and which of its steps fired.
    box: (x0, y0, x1, y1) pixel box of the face (exclusive ends) outside which fake == real.
    """

    real: np.ndarray
    fake: np.ndarray
    mask: np.ndarray
    ratio: float
    crop: tuple[float, float, float, float]
    kind: str
    flipped: bool
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    aug_side: str = ""                      # "source" or "target": which image got the source transform
    applied: tuple[str, ...] = ()           # source transforms that fired, e.g. ("HueSaturationValue", ...)


# ----------------------------------------------------------------------------------------------- geometry
def affine_about_centre(scale: float, tx: float, ty: float) -> np.ndarray:
    """(3, 3) map in normalised coordinates ([0, 1]^2, pixel edges): scale about the centre, then shift."""
    return np.array([[scale, 0.0, 0.5 - 0.5 * scale + tx],
                     [0.0, scale, 0.5 - 0.5 * scale + ty],
                     [0.0, 0.0, 1.0]])


def to_pixels(norm: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    """Turn a (3, 3) map between normalised square coordinates into the (2, 3) pixel matrix for cv2.warpAffine
    from an n_in x n_in image to an n_out x n_out one (pixel centres at integers: u = (x + 0.5) / n)."""
    a = np.array([[1.0 / n_in, 0, 0.5 / n_in], [0, 1.0 / n_in, 0.5 / n_in], [0, 0, 1]])
    b = np.array([[n_out, 0, -0.5], [0, n_out, -0.5], [0, 0, 1]])
    return (b @ norm @ a)[:2]


def resample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float (g, g) mask to (size, size) with the same normalised geometry."""
    if mask.shape[0] == size:
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)


def flip_face(face: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an (H, W, 3) face and remap its (68, 2) landmarks so that each index keeps its meaning."""
    return cv2.flip(face, 1), flip_landmarks(landmarks, face.shape[1])


# ----------------------------------------------------------------------------------- source transforms
def source_colour_transform(img: np.ndarray, rng: np.random.Generator, cfg: SBIConfig = SBIConfig(),
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


# -------------------------------------------------------------------------------------------- mask steps
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


def _odd(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(lo + 2 * rng.integers((hi - lo) // 2 + 1))


def soften_mask(mask: np.ndarray, rng: np.random.Generator, cfg: SBIConfig = SBIConfig()) -> np.ndarray:
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
    k1 = _odd(rng, *cfg.blur1_kernels)
    k2 = _odd(rng, *cfg.blur2_kernels)
    sigma2 = float(rng.integers(cfg.blur2_sigma[0], cfg.blur2_sigma[1] + 1))
    box = _bbox(m)
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


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) exclusive bounds of mask > 0, or None if empty."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _roi_at(box_grid: tuple[int, int, int, int], grid: int, size: int, pad: int = 2,
            align: int = 1) -> tuple[int, int, int, int]:
    """Map a grid-pixel box to a padded, clipped box at `size` whose origin is a multiple of `align`."""
    f = size / grid
    x0 = max(0, int(np.floor(box_grid[0] * f)) - pad)
    y0 = max(0, int(np.floor(box_grid[1] * f)) - pad)
    x0 -= x0 % align
    y0 -= y0 % align
    x1 = min(size, int(np.ceil(box_grid[2] * f)) + pad)
    y1 = min(size, int(np.ceil(box_grid[3] * f)) + pad)
    return x0, y0, x1, y1


def _warp_roi(img: np.ndarray, mat: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """The part `roi` of cv2.warpAffine(img, mat) (same result, only those output pixels computed)."""
    x0, y0, x1, y1 = roi
    m = mat.copy()
    m[:, 2] -= (x0, y0)
    return cv2.warpAffine(img, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


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


def _blend_roi(fg: np.ndarray, bg: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """uint8 weight*fg + (1-weight)*bg (rounded) for uint8 (h, w, 3) images and float32 (h, w) weights."""
    return cv2.blendLinear(fg, bg, weight, 1.0 - weight)


def random_margin(rng: np.random.Generator, cfg: SBIConfig = SBIConfig()) -> tuple[float, float, float, float]:
    """Step 7 of SBI: crop box (x0, y0, x1, y1) as fractions of the side. One margin m in cfg.margin grid px
    cut from all four sides (the face stays centred), or with `cfg.margin_symmetric` False one per side."""
    n = 1 if cfg.margin_symmetric else 4
    m = np.resize(rng.integers(cfg.margin[0], cfg.margin[1] + 1, n), 4) / cfg.grid
    return float(m[0]), float(m[1]), float(1.0 - m[2]), float(1.0 - m[3])


# ------------------------------------------------------------------------------------------------- SBI
def sbi(face: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
        cfg: SBIConfig = SBIConfig(), kind: str | None = None, flip: bool | None = None,
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

    box = _bbox(soft)
    roi = _roi_at(box, g, size)
    x0, y0, x1, y1 = roi
    mat = to_pixels(geo, size, size)
    if augment_source:
        # Only the pixels the warp reads for the mask's box are transformed; the box origin is a multiple
        # of 4 so that down-up scaling samples the same pixel grid as on the whole face.
        bx0, by0, bx1, by1 = _preimage_box(mat, roi, size, pad=8, align=4)
        src_part = source_colour_transform(face[by0:by1, bx0:bx1], colour_rng, cfg, applied)
        mat_part = mat.copy()
        mat_part[:, 2] += mat[:, :2] @ np.array([bx0, by0], np.float64)
        src = _warp_roi(src_part, mat_part, roi)
    else:
        src = _warp_roi(face, mat, roi)
    weight = resample_mask(soft, size)[y0:y1, x0:x1] * np.float32(ratio)
    fake = real.copy()
    fake[y0:y1, x0:x1] = _blend_roi(src, real[y0:y1, x0:x1], weight)
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


# -------------------------------------------------------------------------------------------------- BI
@lru_cache(maxsize=8)
def _hat_functions(g: int, cells: int) -> np.ndarray:
    """Piecewise-linear "hat" function of every interior control point of a (cells+1)^2 grid over a g x g
    raster, with each cell split into two triangles along its anti-diagonal: float32 ((cells-1)^2, g*g).
    A displacement of the control points moves each pixel by the hat-weighted sum of their displacements,
    which is exactly the piecewise-affine map of the triangulated grid."""
    step = (g - 1) / cells
    n = cells + 1
    ys, xs = np.mgrid[0:g, 0:g].reshape(2, -1).astype(np.float64)
    cx = np.minimum((xs / step).astype(np.int64), cells - 1)
    cy = np.minimum((ys / step).astype(np.int64), cells - 1)
    fx, fy = xs / step - cx, ys / step - cy
    upper = fx + fy <= 1.0
    # Triangle (p00, p10, p01) above the anti-diagonal, (p11, p01, p10) below, with barycentric weights.
    corners = [(cy, cx, np.where(upper, 1 - fx - fy, 0.0)),
               (cy, cx + 1, np.where(upper, fx, 1 - fy)),
               (cy + 1, cx, np.where(upper, fy, 1 - fx)),
               (cy + 1, cx + 1, np.where(upper, 0.0, fx + fy - 1))]
    hats = np.zeros((n, n, g * g), np.float64)
    pix = np.arange(g * g)
    for r, c, w in corners:
        np.add.at(hats, (r, c, pix), w)
    return hats[1:-1, 1:-1].reshape(-1, g * g).astype(np.float32)


def piecewise_affine_warp(mask: np.ndarray, rng: np.random.Generator, cells: int = 4,
                          jitter: float = 0.03) -> np.ndarray:
    """Piecewise-affine deformation of a float32 (g, g) mask.

    A (cells+1)^2 regular control grid is split into two triangles per cell; interior control points are
    moved by uniform noise of +-jitter * g. Each output pixel takes the mask value at the barycentric image
    of its triangle in the moved grid (an affine map per triangle, continuous across edges).
    """
    g = mask.shape[0]
    d = rng.uniform(-jitter * g, jitter * g, ((cells - 1) ** 2, 2)).astype(np.float32)
    hats = _hat_functions(g, cells)
    gx = np.tile(np.arange(g, dtype=np.float32), g)
    gy = np.repeat(np.arange(g, dtype=np.float32), g)
    # A plain multiply-add per control point: a (2, 9) x (9, g*g) BLAS product would start threads that,
    # on a busy machine, cost more than the arithmetic.
    for k in range(len(d)):
        gx += d[k, 0] * hats[k]
        gy += d[k, 1] * hats[k]
    gx, gy = gx.reshape(g, g), gy.reshape(g, g)
    return cv2.remap(mask, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def bi(target: np.ndarray, target_lm: np.ndarray, donor: np.ndarray, donor_lm: np.ndarray,
       rng: np.random.Generator, cfg: BIConfig = BIConfig(), kind: str | None = None) -> SyntheticPair:
    """Blended image: the donor's face (another video, similar landmarks) inside the target's face.

    The mask comes from the target's landmarks (a random hull type), deformed piecewise-affinely, eroded or
    dilated (random odd kernel), then feathered with a Gaussian and max-normalised. The donor is aligned to
    the target's landmarks, its masked mean colour matched to the target's (per RGB channel), and blended:
    fake = M * donor + (1 - M) * target. The real is the target; ratio is 1; crop is the whole face.
    """
    size, g = target.shape[0], cfg.grid
    t_lm = np.asarray(target_lm, np.float32)
    if kind is None:
        kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]
    mask = hull_mask((t_lm + 0.5) * (g / size) - 0.5, (g, g), kind, cfg.forehead).astype(np.float32)
    mask = piecewise_affine_warp(mask, rng, cfg.grid_cells, cfg.jitter)
    k = _odd(rng, *cfg.morph_kernels)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = (cv2.erode if rng.random() < 0.5 else cv2.dilate)(mask, kernel)
    kf = _odd(rng, *cfg.feather_kernels)
    mask = cv2.GaussianBlur(mask, (kf, kf), 0)
    peak = float(mask.max())
    if peak <= 0:
        raise ValueError("bi: the mask vanished (hull too small for the erosion)")
    mask *= 1.0 / peak
    # Only the mask's box of the donor is aligned, colour-matched and blended; the fake is the target elsewhere.
    roi = _roi_at(_bbox(mask), g, size)
    x0, y0, x1, y1 = roi
    mat, _ = cv2.estimateAffinePartial2D(np.asarray(donor_lm, np.float32), t_lm)
    if mat is None:
        raise ValueError("bi: could not fit a similarity between the donor's and the target's landmarks")
    aligned = _warp_roi(donor, mat, roi)
    weight = resample_mask(mask, size)[y0:y1, x0:x1]
    inside = (weight > 0.5).astype(np.uint8)
    if cv2.countNonZero(inside) < 16:
        raise ValueError("bi: fewer than 16 mask pixels above 0.5")
    shift = np.subtract(cv2.mean(target[y0:y1, x0:x1], inside)[:3], cv2.mean(aligned, inside)[:3])
    fg = cv2.add(aligned, tuple(float(v) for v in shift) + (0.0,), dtype=cv2.CV_8U)
    fake = target.copy()
    fake[y0:y1, x0:x1] = _blend_roi(fg, target[y0:y1, x0:x1], weight)
    return SyntheticPair(real=target, fake=fake, mask=mask, ratio=1.0, crop=(0.0, 0.0, 1.0, 1.0),
                         kind=kind, flipped=False, box=roi)
