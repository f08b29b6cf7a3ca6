"""LAA-Net model package: network, losses, checkpoints, data and targets.

``build_model`` and ``load_checkpoint`` are imported lazily so that ``import model`` (e.g. by the data
pipeline or a Dask worker) does not pull in torch and timm.
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_model", "load_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from model.net.laanet import build_model

        return build_model
    if name == "load_checkpoint":
        from model.checkpoint import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'model' has no attribute {name!r}")
