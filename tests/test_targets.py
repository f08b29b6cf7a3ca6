"""Heatmap and consistency targets: peaks, centring, radii, run lengths, modes, real images."""
import cv2
import numpy as np
import pytest

from model.data.targets import (
    boundary,
    boundary_u8,
    draw_gaussian,
    draw_gaussians,
    gaussian_radius,
    make_targets,
    point_sigmas,
    reference_offset,
    reference_points,
    run_lengths,
)

H = 96


def ring_mask(cx=40.0, cy=52.0, r=25.0, blur=6.0, size=H) -> np.ndarray:
    """A soft disk: M = 1 inside, smooth edge, 0 outside (float32 (size, size))."""
    yy, xx = np.mgrid[0:size, 0:size]
    m = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.float32)
    return cv2.GaussianBlur(m, (0, 0), blur)


def quantised_boundary(mask: np.ndarray) -> np.ndarray:
    return boundary_u8(mask).astype(np.float32) / 255.0


@pytest.mark.parametrize("mode", ["reference", "paper"])
def test_real_images_get_all_zero_targets(mode):
    hm, c = make_targets(np.zeros((H, H), np.float32), mode)
    assert hm.dtype == np.float32 and c.dtype == np.float32 and hm.shape == c.shape == (H, H)
    assert not hm.any() and not c.any()


def test_boundary_range():
    m = np.linspace(0, 1, 101, dtype=np.float32)
    b = boundary(m)
    assert b.min() >= 0 and b.max() <= 1 and b[50] == pytest.approx(1.0) and b[0] == 0 and b[-1] == 0
    assert boundary_u8(m).max() == 255 and boundary_u8(m).dtype == np.uint8


def test_reference_peaks_are_one_at_every_vulnerable_point():
    b = quantised_boundary(ring_mask())
    hm, c = make_targets(b, "reference")
    ys, xs, has_peak = reference_points(b)
    assert len(ys) > 4 and has_peak.all()
    assert np.all(hm[ys, xs] == 1.0) and hm.max() == 1.0
    q = np.floor(255 * b + 1e-3)
    for r0, r1 in ((0, 48), (48, 96)):
        for c0, c1 in ((0, 48), (48, 96)):
            block = q[r0:r1, c0:c1]
            in_block = (ys >= r0) & (ys < r1) & (xs >= c0) & (xs < c1)
            assert in_block.sum() == (block == block.max()).sum()   # every tie is a point


def test_quadrants_without_boundary_get_no_points_and_zero_consistency():
    m = ring_mask(cx=20, cy=20, r=8, blur=2.5)                    # the blend sits in the top-left quadrant
    b = quantised_boundary(m)
    hm, c = make_targets(b, "reference")
    _, _, has_peak = reference_points(b)
    assert has_peak.tolist() == [[True, False], [False, False]]
    assert not c[48:].any() and not c[:, 48:].any() and not hm[48:].any()
    expected = 1.0 - np.abs(b.max() - b)
    np.testing.assert_allclose(c[:48, :48], expected[:48, :48], atol=1e-6)


def test_consistency_is_one_minus_distance_to_anchor_value():
    b = quantised_boundary(ring_mask())
    _, c = make_targets(b, "reference")
    np.testing.assert_allclose(c, 1.0 - np.abs(b.max() - b), atol=1e-6)
    _, cp = make_targets(b, "paper", np.random.default_rng(0))
    np.testing.assert_allclose(cp, 1.0 - np.abs(b.max() - b), atol=1e-6)


def test_paper_mode_uses_the_global_argmax_set():
    b = np.zeros((H, H), np.float32)
    b[30:34, 10:60] = 0.6
    b[31, 20] = 0.9
    b[32, 50] = 0.9
    hm, c = make_targets(b, "paper", np.random.default_rng(1))
    assert hm[31, 20] == 1.0 and hm[32, 50] == 1.0
    assert np.count_nonzero(hm == 1.0) == 2
    assert c[31, 20] == pytest.approx(1.0) and c[0, 0] == pytest.approx(0.1)


@pytest.mark.parametrize("sigma", [0.0, 0.4, 0.5, 0.8, 1.0, 1.3, 2.0, 2.5])
def test_gaussian_is_centred_on_the_point(sigma):
    hm = np.zeros((21, 21), np.float32)
    draw_gaussian(hm, 10, 10, sigma)
    assert hm[10, 10] == 1.0 and np.unravel_index(hm.argmax(), hm.shape) == (10, 10)
    np.testing.assert_array_equal(hm, hm[::-1])          # symmetric about row 10
    np.testing.assert_array_equal(hm, hm[:, ::-1])       # and column 10
    np.testing.assert_array_equal(hm, hm.T)
    if sigma > 0:
        assert hm[10, 11] == pytest.approx(np.exp(-1 / (2 * sigma * sigma)), rel=1e-5)


def test_vectorised_gaussians_match_one_by_one_and_clip_at_edges():
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, H, 40), rng.integers(0, H, 40)
    ys[:2], xs[:2] = (0, H - 1), (0, H - 1)
    sig = rng.uniform(0, 2.5, 40)
    a = np.zeros((H, H), np.float32)
    for y, x, s in zip(ys, xs, sig):
        draw_gaussian(a, int(x), int(y), float(s))
    b = np.zeros((H, H), np.float32)
    draw_gaussians(b, ys, xs, sig)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_run_lengths_do_not_wrap_around():
    a = np.zeros((4, 6), bool)
    a[0, 3:] = True      # run at the end of row 0 ...
    a[1, :2] = True      # ... and at the start of row 1: two runs, not one
    a[2:, 5] = True      # column runs stop at the bottom edge too
    rows, cols = run_lengths(a)
    assert rows[0, 5] == 3 and rows[1, 0] == 2 and rows[2, 5] == 1
    assert cols[3, 5] == 2 and cols[0, 5] == 1 and rows[0, 0] == 0


def test_gaussian_radius_matches_cornernet_formula():
    # h = w = 10, IoU 0.7: the third case (b3 + sqrt(b3^2 - 4 a3 c3)) / 2 with a3 = 2.8, b3 = -28, c3 = -30.
    assert gaussian_radius(10, 10) == pytest.approx((-28 + np.sqrt(28 ** 2 + 4 * 2.8 * 30)) / 2)
    assert gaussian_radius(0, 0) == 0.0
    assert np.all(np.diff(gaussian_radius(np.arange(1, 30), 4)) >= 0)   # grows with the box


def test_sigma_comes_from_the_run_length_box():
    b = quantised_boundary(ring_mask())
    ys, xs, _ = reference_points(b)
    sig = point_sigmas(b, ys, xs, "exact")
    rows, cols = run_lengths(b > 0.5)
    np.testing.assert_allclose(sig, gaussian_radius(cols[ys, xs], rows[ys, xs]) / 3.0)
    assert 0.2 < np.median(sig) < 2.0


def test_reference_sigma_rule_counts_the_point_twice_above_level_128():
    b = np.zeros((8, 12), np.float32)
    b[3, 2:9] = 200 / 255          # a 7-px row run above 128
    b[3, 9] = 128 / 255            # at 128: not counted (> 128 only), though B > 0.5 there
    b[1:6, 5] = 200 / 255          # a 5-px column run through (3, 5)
    ys, xs = np.array([3, 3]), np.array([5, 9])
    ref = point_sigmas(b, ys, xs, "reference")
    exact = point_sigmas(b, ys, xs, "exact")
    assert ref[0] == pytest.approx(gaussian_radius(5 + 1, 7 + 1) / 3.0)
    assert exact[0] == pytest.approx(gaussian_radius(5, 8) / 3.0)     # exact: B > 0.5 includes (3, 9)
    assert ref[1] == 0.0                                              # the point itself is not above 128


def test_run_lengths_wrap_only_when_asked():
    a = np.zeros((3, 5), bool)
    a[0, 3:] = True
    a[1, :2] = True
    rows, _ = run_lengths(a, wrap=True)
    assert rows[0, 4] == 4 and rows[1, 0] == 4
    rows, _ = run_lengths(a)
    assert rows[0, 4] == 2 and rows[1, 0] == 2


def test_reference_centre_moves_peaks_up_left_when_three_sigma_rounds_up():
    assert list(reference_offset(np.array([1.0, 0.9, 1.2, 0.8, 1.4]))) == [0, -1, -1, 0, 0]
    b = quantised_boundary(ring_mask())
    exact, _ = make_targets(b)
    shifted, _ = make_targets(b, centre="reference")
    ys, xs, _ = reference_points(b)
    sig = point_sigmas(np.floor(255 * b + 1e-3) / 255, ys, xs)
    off = reference_offset(sig)
    assert np.all(exact[ys, xs] == 1.0)
    moved = off == -1
    assert moved.any() and np.all(shifted[ys[moved] - 1, xs[moved] - 1] == 1.0)


def test_uint8_levels_are_read_back_exactly():
    levels = np.arange(256, dtype=np.float32) / 255.0
    b = np.tile(levels[:96], (96, 1)).astype(np.float32)
    ys, xs, _ = reference_points(b)
    assert set(xs.tolist()) == {47, 95}      # the max level of each left/right half, ties along the rows


def test_bad_boundary_is_rejected():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        make_targets(np.full((8, 8), 1.5, np.float32))
    with pytest.raises(ValueError, match="unknown mode"):
        make_targets(np.zeros((8, 8), np.float32), "other")
