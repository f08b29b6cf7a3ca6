"""Pseudo-fake synthesis: masks, flip, SBI and BI contracts, donor table (real faces from dlib's examples)."""

import cv2
import numpy as np
import pytest

from model.config import BLEND_RATIOS, SBIConfig
from model.data.bi import bi, piecewise_affine_warp
from model.data.bi_index import build_donor_table, normalise_shapes, shape_distance
from model.data.blend import resample_mask
from model.data.masks import EYE_A, EYE_B, FLIP_INDEX, MASK_KINDS, flip_landmarks, forehead_points, hull_mask
from model.data.sbi import elastic_field, flip_face, sbi, sbi_fake_for_eval
from model.data.targets import boundary
from tests.face_fixtures import load_faces

SIZE = 192


@pytest.fixture(scope="module")
def faces():
    return load_faces(SIZE, margin=1.25 * 1.3)


def test_flip_index_is_an_involution_and_swaps_eyes(faces):
    assert (FLIP_INDEX[FLIP_INDEX] == np.arange(68)).all()
    face, lm = faces[0]
    flipped_face, flipped = flip_face(face, lm)
    assert np.array_equal(flipped_face, face[:, ::-1])
    # The image-left eye of the mirrored face is the mirrored image-right eye of the original.
    np.testing.assert_allclose(flipped[EYE_A][:, 0], SIZE - 1 - lm[EYE_B][[3, 2, 1, 0, 5, 4], 0])
    assert flipped[EYE_A][:, 0].mean() < flipped[EYE_B][:, 0].mean()
    np.testing.assert_allclose(flip_landmarks(flipped, SIZE), lm, atol=1e-4)
    assert FLIP_INDEX[36] == 45 and FLIP_INDEX[39] == 42 and FLIP_INDEX[48] == 54 and FLIP_INDEX[8] == 8


def test_masks_are_inside_the_face_and_forehead_extends_upwards(faces):
    for _face, lm in faces:
        # Part hulls are rasterised separately: allow their edge pixels one pixel outside the whole hull.
        full = cv2.dilate(hull_mask(lm, (SIZE, SIZE), "facehull"), np.ones((3, 3), np.uint8))
        for kind in MASK_KINDS:
            m = hull_mask(lm, (SIZE, SIZE), kind)
            assert m.dtype == np.uint8 and m.any()
            if kind != "extended":   # the extended type raises the brows above the 68-point hull
                assert not (m & (1 - full)).any(), kind
            ext = hull_mask(lm, (SIZE, SIZE), kind, forehead=True)
            grown = cv2.dilate(ext, np.ones((3, 3), np.uint8))        # hull edges rasterise independently
            assert ext.sum() > m.sum() and not (m & (1 - grown)).any(), kind
        fh = forehead_points(lm)
        assert (fh[:, 1].min() < lm[17:27, 1].min() - 2)      # upright faces: the forehead is above the brows


def _sbi_support_ok(face, lm, pair, forehead):
    """The fake differs from the real only where the resampled mask is > 0, and the mask sits on the face."""
    weight = resample_mask(pair.mask, face.shape[0])
    diff = (pair.real != pair.fake).any(-1)
    assert diff.any()
    assert not (diff & (weight <= 0)).any()
    g = pair.mask.shape[0]
    lm_g = (lm + 0.5) * (g / face.shape[0]) - 0.5
    if pair.flipped:
        lm_g = flip_landmarks(lm_g, g)
    # The largest hull (raised brows, optional forehead), grown by the recipe's shift/scale (<= 6 % of the side
    # for a face filling the crop) and blur reach, contains the mask's core and its whole support.
    big = hull_mask(lm_g, (g, g), "extended", forehead)
    core = cv2.dilate(big, np.ones((2 * 16 + 1,) * 2, np.uint8))
    reach = cv2.dilate(big, np.ones((2 * 64 + 1,) * 2, np.uint8))
    assert not ((pair.mask >= 0.5) & (core == 0)).any()
    assert not ((pair.mask > 0) & (reach == 0)).any()


@pytest.mark.parametrize("forehead", [False, True])
def test_sbi_fake_differs_only_inside_a_nonempty_face_mask(faces, forehead):
    rng = np.random.default_rng(1)
    cfg = SBIConfig(forehead=forehead)
    for i, kind in enumerate(MASK_KINDS * 2):
        face, lm = faces[i % len(faces)]
        pair = sbi(face, lm, rng, cfg, kind=kind)
        assert pair.real.shape == pair.fake.shape == face.shape and pair.fake.dtype == np.uint8
        assert pair.mask.dtype == np.float32 and pair.mask.shape == (256, 256)
        assert 0.0 <= pair.mask.min() and abs(pair.mask.max() - 1.0) < 1e-5
        _sbi_support_ok(face, lm, pair, forehead)
        b = boundary(pair.mask)
        assert b.min() >= 0.0 and b.max() <= 1.0 and b.max() > 0.9
        x0, y0, x1, y1 = pair.crop
        assert 5 / 256 <= x0 <= 24 / 256 and 1 - 24 / 256 <= x1 <= 1 - 5 / 256 and y0 < y1


def test_sbi_is_deterministic_per_seed(faces):
    face, lm = faces[2]
    a = sbi(face, lm, np.random.default_rng(7))
    b = sbi(face, lm, np.random.default_rng(7))
    c = sbi(face, lm, np.random.default_rng(8))
    assert np.array_equal(a.fake, b.fake) and np.array_equal(a.mask, b.mask) and a.crop == b.crop
    assert not np.array_equal(a.mask, c.mask)


def test_sbi_draws_follow_the_recipe(faces):
    face, lm = faces[1]
    rng = np.random.default_rng(0)
    ratios, kinds, flips = [], [], []
    for _ in range(120):
        p = sbi(face, lm, rng)
        ratios.append(p.ratio)
        kinds.append(p.kind)
        flips.append(p.flipped)
    assert set(ratios) <= set(BLEND_RATIOS)
    assert 0.3 < np.mean(np.array(ratios) == 1.0) < 0.7            # 1 is drawn with p = 1/2
    assert set(kinds) == set(MASK_KINDS) and 0.3 < np.mean(flips) < 0.7


def test_coarse_elastic_field_matches_the_full_resolution_statistics():
    rng = np.random.default_rng(0)
    # Measured with 300 fields each: std 1.171 (full) vs 1.129 (coarse, bilinear interpolation smooths a bit).
    fine = np.stack([elastic_field((256, 256), rng, coarse=1)[0] for _ in range(60)])[:, 32:-32, 32:-32]
    coarse = np.stack([elastic_field((256, 256), rng, coarse=4)[0] for _ in range(60)])[:, 32:-32, 32:-32]
    assert abs(coarse.std() / fine.std() - 1.0) < 0.1
    assert 0.9 < fine.std() < 1.4      # alpha 50 * std of U(-1, 1) noise smoothed by sigma 7: 50 * 0.577 / 24.8


def test_sbi_fake_for_eval_is_deterministic_and_keeps_the_background(faces):
    face, lm = faces[3]
    a = sbi_fake_for_eval(face, lm, seed=5)
    assert np.array_equal(a, sbi_fake_for_eval(face, lm, seed=5))
    assert not np.array_equal(a, sbi_fake_for_eval(face, lm, seed=6))
    changed = (a != face).any(-1)
    assert changed.any() and not changed[:3].any() and not changed[:, :3].any()


def test_sbi_rejects_bad_input(faces):
    face, lm = faces[0]
    with pytest.raises(ValueError, match="landmarks"):
        sbi(face, np.full((68, 2), np.nan, np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="square uint8"):
        sbi(face.astype(np.float32), lm, np.random.default_rng(0))


def test_bi_blends_a_donor_inside_the_target_mask(faces):
    (t, t_lm), (d, d_lm) = faces[0], faces[5]
    pair = bi(t, t_lm, d, d_lm, np.random.default_rng(3))
    weight = resample_mask(pair.mask, SIZE)
    diff = (pair.fake != t).any(-1)
    assert diff.any() and not (diff & (weight <= 0)).any()
    assert np.array_equal(pair.real, t)


def test_piecewise_affine_warp_is_identity_without_jitter_and_moves_with_it():
    yy, xx = np.mgrid[0:64, 0:64]
    mask = ((xx - 30) ** 2 + (yy - 34) ** 2 < 300).astype(np.float32)
    same = piecewise_affine_warp(mask, np.random.default_rng(0), cells=4, jitter=0.0)
    np.testing.assert_allclose(same, mask, atol=1e-3)
    moved = piecewise_affine_warp(mask, np.random.default_rng(0), cells=4, jitter=0.05)
    assert not np.allclose(moved, mask, atol=0.1) and abs(moved.sum() / mask.sum() - 1) < 0.3


def test_donor_table_excludes_same_video_and_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(68, 2)) * 30 + 100
    n_videos, frames = 12, 6
    lm = (base + rng.normal(size=(n_videos, 1, 68, 2)) * 3
          + rng.normal(size=(n_videos, frames, 68, 2)) * 0.5).reshape(-1, 68, 2)
    lm = lm * rng.uniform(0.5, 2.0, (len(lm), 1, 1)) + rng.uniform(-20, 20, (len(lm), 1, 2))  # scale/shift free
    video = np.repeat(np.arange(n_videos), frames)
    exact = build_donor_table(lm, video, k=10, shortlist=10**6)
    fast = build_donor_table(lm, video, k=10, shortlist=20)
    for table in (exact, fast):
        assert (table >= 0).all()
        assert not (video[table] == video[:, None]).any()
    shapes = normalise_shapes(lm)
    d = shape_distance(shapes[:, None], shapes[None])
    d[video[:, None] == video[None]] = np.inf
    best = np.sort(d, axis=1)[:, :10]
    rows = np.arange(len(lm))[:, None]
    np.testing.assert_allclose(d[rows, exact], best, rtol=1e-5)
    # The shortlist version keeps faces among the 10 nearest for the most part (and every donor is valid).
    nearest = np.argsort(d, axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(fast, nearest)])
    assert recall > 0.8
