"""What `pip install .` puts into site-packages: the two packages and console scripts that point into them, and no
top-level module that would shadow a user's own train.py or evaluate.py."""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_console_scripts_point_into_the_packages():
    scripts = PYPROJECT["project"]["scripts"]
    assert {"laanet-pipeline", "laanet-train", "laanet-evaluate", "laanet-predict"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert module.split(".")[0] in ("pipeline", "model"), f"{name} -> {target} is outside the packages"
        assert callable(getattr(importlib.import_module(module), func)), target


def test_no_top_level_modules_are_declared():
    assert "py-modules" not in PYPROJECT.get("tool", {}).get("setuptools", {})


@pytest.mark.slow
def test_wheel_holds_only_the_packages(tmp_path):
    src = tmp_path / "src"   # a copy, so the build leaves no build/ folder in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "README.md", "pipeline", "model"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, capture_output=True, timeout=300)
    wheel, = tmp_path.glob("laanet-*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}
        entry_points = next(z.read(n).decode() for n in z.namelist() if n.endswith("entry_points.txt"))
    assert tops == {"pipeline", "model"}, tops
    assert "laanet-train = model.train.main:cli" in entry_points
