"""Robustness perturbations: deterministic, shape-preserving, stronger at higher levels."""
import zlib

import numpy as np
import pytest

from model.eval import perturb


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A colourful, textured 256x256 RGB image (gradients + stripes + fine noise)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    r = 40 + 170 * x / 255
    g = 200 - 150 * y / 255
    b = 128 + 80 * np.sin(x / 9.0) * np.cos(y / 13.0)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, size=(256, 256, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


@pytest.mark.parametrize("name", perturb.PERTURBATIONS)
def test_deterministic_and_shape_preserving(image, name):
    for level in perturb.LEVELS:
        seed = perturb.perturbation_seed("ds/original/000:3", name, level)
        a = perturb.apply(image, name, level, seed=seed)
        b = perturb.apply(image.copy(), name, level, seed=seed)
        assert a.dtype == np.uint8 and a.shape == image.shape
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(perturb.apply(image, name, 1, seed=1), image)


@pytest.mark.parametrize("name", perturb.PERTURBATIONS)
def test_strength_grows_with_level(image, name):
    distances = [
        _distance(perturb.apply(image, name, level, seed=perturb.perturbation_seed("k", name, level)), image)
        for level in perturb.LEVELS
    ]
    assert all(d1 < d2 for d1, d2 in zip(distances, distances[1:])), (name, distances)


def test_random_types_depend_on_seed(image):
    for name in ("block", "noise"):
        assert not np.array_equal(perturb.apply(image, name, 3, seed=1), perturb.apply(image, name, 3, seed=2))


def test_seed_is_stable_across_processes():
    # CRC32-based: a fixed value, unlike Python's salted hash().
    assert perturb.perturbation_seed("a", "noise", 1) == perturb.perturbation_seed("a", "noise", 1)
    assert perturb.perturbation_seed("a", "noise", 1) != perturb.perturbation_seed("b", "noise", 1)
    assert perturb.perturbation_seed("a", "noise", 1, base_seed=0) == zlib.crc32(b"0|noise|1|a")


def test_saturation_level5_is_grey(image):
    out = perturb.apply(image, "saturation", 5)
    spread = out.astype(int).max(axis=-1) - out.astype(int).min(axis=-1)
    assert spread.max() <= 2  # rounding of the colour conversion only


def test_input_not_modified(image):
    before = image.copy()
    perturb.apply(image, "block", 5, seed=0)
    np.testing.assert_array_equal(image, before)


def test_bad_arguments():
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb.apply(img, "rain", 1)
    with pytest.raises(ValueError, match="level"):
        perturb.apply(img, "blur", 6)
    with pytest.raises(ValueError, match="uint8"):
        perturb.apply(img.astype(np.float32), "blur", 1)
    assert perturb.parse_names(["all"]) == list(perturb.PERTURBATIONS)
    assert perturb.parse_names(["jpeg", "blur", "jpeg"]) == ["jpeg", "blur"]
    with pytest.raises(ValueError, match="rain"):
        perturb.parse_names(["rain"])
