"""Test-wide settings: offline hubs, small thread pools, and paths to the shipped sample data."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_videos_dir() -> Path:
    return REPO / "data" / "sample" / "videos"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """A synthetic train split (4 real videos) and val split (2 real, 2 fake) for the tiny network (tests.tiny)."""
    from tests.tiny import write_split

    root = tmp_path_factory.mktemp("shards")
    return {"train": write_split(root / "toy" / "train", n_videos=4, frames=6, seed=0),
            "val": write_split(root / "toy" / "val", n_videos=2, frames=3, seed=1, fake_videos=2)}
