"""Checkpoints, the whole layout: atomic save, the training state, and loading that rebuilds the network
from the checkpoint alone.

A checkpoint is a dict with at least
    model   the network's state_dict
    config  the full resolved config as plain Python (config["model"] = ModelConfig fields)
and, for a training checkpoint (`training_state`, read back by `restore_training_state`):
    optimizer, schedule, scaler   their state_dicts
    epoch       epochs completed (the next epoch to run)
    step        optimiser steps done
    best_auc, val, history        model selection so far
    rng         one entry per rank: Python, NumPy, torch (and CUDA) RNG states (`rng_state`)
    code_version                  `git describe` of the code that wrote it (`pipeline.version.code_version`)
    world_size
Converted reference checkpoints (model.convert) hold model, config and their provenance. Only tensors and
plain Python containers/scalars are stored: files are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import ModelConfig
from model.net.laanet import LAANet, build_model
from pipeline.errors import UserError
from pipeline.files import atomic_path
from pipeline.version import code_version


class CheckpointError(UserError, ValueError):
    """A file that is not a usable checkpoint (missing, unreadable, not LAA-Net, weights that do not fit)."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint at the path given."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (``pipeline.files.atomic_path``: a temporary file beside it,
    synced, then renamed): a killed run never leaves a truncated checkpoint under the final name."""
    path = Path(path)
    for key in ("model", "config"):
        if key not in state:
            raise ValueError(f"{path}: checkpoint state lacks '{key}' (has {sorted(state)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain lists, so checkpoints stay
    loadable with ``torch.load(weights_only=True)``."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)),
                                                             int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` recorded."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(*, model, optimizer, schedule, scaler, epochs_done: int, step: int, best_auc: float,
                   val: dict | None, history: list, rng: list[dict], config: dict, world_size: int) -> dict:
    """The dict a training checkpoint holds (see the module docstring)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": int(epochs_done),
        "step": int(step),
        "best_auc": float(best_auc),
        "val": val,
        "history": history,
        "rng": rng,
        "config": config,
        "code_version": code_version(),
        "world_size": int(world_size),
    }


def restore_training_state(state: dict, *, model, optimizer, schedule, scaler) -> dict:
    """Load a `training_state` dict into the given objects; returns the loop's counters
    {"epoch", "step", "best_auc", "history", "rng"} (rng: one entry per rank of the writing run)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    scaler.load_state_dict(state["scaler"])
    return {"epoch": int(state["epoch"]), "step": int(state["step"]), "best_auc": float(state["best_auc"]),
            "history": list(state.get("history", [])), "rng": list(state["rng"])}


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file that ``path`` names; raises CheckpointError (one line) for a missing path, and for a
    folder (a run directory) with the checkpoints inside it, so that the user picks one."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        inside = sorted(path.glob("*.pt")) or sorted(path.glob("*/*.pt"))
        if not inside:
            raise CheckpointError(f"{path}: a folder with no checkpoint (*.pt) inside; give the checkpoint file")
        best = next((p for p in inside if p.name == "best.pt"), inside[0])
        others = ", ".join(str(p.relative_to(path)) for p in inside[:6]) + (" ..." if len(inside) > 6 else "")
        raise CheckpointError(f"{path}: a folder, not a checkpoint; did you mean {best}? (inside: {others})")
    raise CheckpointNotFound(f"{path}: checkpoint not found")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint dict (raises a one-line error naming the file otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable LAA-Net checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt.get("config"), dict) \
            or not isinstance(ckpt["config"].get("model"), dict):
        found = f"a dict with keys {sorted(ckpt)[:10]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not an LAA-Net checkpoint (need 'model' and config['model']), found {found}"
                         + (" - a reference checkpoint? convert it with `python -m model.convert`"
                            if isinstance(ckpt, dict) and ("state_dict" in ckpt or "_conv_stem.weight" in ckpt)
                            else ""))
    return ckpt


def model_config_from_checkpoint(ckpt: dict[str, Any]) -> ModelConfig:
    """The checkpoint's ModelConfig, with weight downloads switched off (the state dict has them)."""
    cfg = ModelConfig.from_dict(ckpt["config"]["model"])
    cfg.pretrained = False
    cfg.backbone_weights = None
    return cfg


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LAANet:
    """Rebuild LAA-Net from a checkpoint file alone and return it in eval mode."""
    return model_from_checkpoint(read_checkpoint(path, map_location), path, map_location)


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path, map_location: str | torch.device = "cpu"
                          ) -> LAANet:
    """LAA-Net rebuilt from a checkpoint dict (``read_checkpoint``'s) in eval mode; ``path`` names it in errors."""
    model = build_model(model_config_from_checkpoint(ckpt))
    own = model.state_dict()
    differ = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in ckpt["model"].items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if differ:  # load_state_dict would raise a 40-line size-mismatch RuntimeError
        k, theirs, ours = differ[0]
        raise CheckpointError(f"{path}: weights do not match config['model'] (another architecture, e.g. other "
                         f"head_conv or backbone?): {len(differ)} tensors differ in shape, first {k} {theirs} in "
                         f"the file vs {ours} built from its config")
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match config['model']: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    return model.eval()
