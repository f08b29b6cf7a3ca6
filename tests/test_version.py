"""pipeline.version: the version stamps of shards, checkpoints and the cluster's code check."""
import importlib.metadata
import re

import pytest

from pipeline import version


@pytest.fixture
def fresh(monkeypatch):
    """pipeline.version with its caches cleared before and after (its functions are read once per process)."""
    version.package_version.cache_clear()
    version.code_version.cache_clear()
    yield monkeypatch
    version.package_version.cache_clear()
    version.code_version.cache_clear()


def test_package_version_of_a_checkout_that_was_never_installed(fresh, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    fresh.setattr(importlib.metadata, "version", missing)
    assert version.package_version() == re.search(r'^version = "(.+)"', (version.PACKAGE_DIR.parent / "pyproject.toml")
                                                  .read_text(), re.M).group(1) + "+source"


def test_code_hash_covers_the_pipeline_sources(fresh, tmp_path):
    assert version.PACKAGE_DIR.name == "pipeline" and re.fullmatch(r"[0-9a-f]{12}", version.code_hash())
    (tmp_path / "a.py").write_text("x = 1\n")
    fresh.setattr(version, "PACKAGE_DIR", tmp_path)
    before = version.code_hash()
    (tmp_path / "notes.txt").write_text("not code")
    assert version.code_hash() == before
    (tmp_path / "a.py").write_text("x = 2\n")
    assert version.code_hash() != before


def test_code_version_outside_a_git_checkout_is_the_package_version(fresh, tmp_path):
    fresh.setattr(version, "PACKAGE_DIR", tmp_path)
    assert version.code_version() == version.package_version()
