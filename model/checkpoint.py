"""Checkpoints: atomic save, and loading that rebuilds the network from the checkpoint alone.

A checkpoint is a dict with at least
    model   the network's state_dict
    config  the full resolved config as plain Python (config["model"] = ModelConfig fields)
    epoch, step
and whatever the trainer adds (optimizer, scheduler, scaler, code version...). Only tensors and plain
Python containers/scalars may be stored: files are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig
from model.net.laanet import LAANet, build_model


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (``path.tmp`` then rename): a killed run never leaves a
    truncated checkpoint under the final name."""
    path = Path(path)
    for key in ("model", "config"):
        if key not in state:
            raise ValueError(f"{path}: checkpoint state lacks '{key}' (has {sorted(state)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint dict (raises a one-line error naming the file otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name and reason
        raise ValueError(f"{path}: not a readable LAA-Net checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt.get("config"), dict) \
            or not isinstance(ckpt["config"].get("model"), dict):
        found = f"a dict with keys {sorted(ckpt)[:10]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not an LAA-Net checkpoint (need 'model' and config['model']), found {found}"
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
    ckpt = read_checkpoint(path, map_location)
    model = build_model(model_config_from_checkpoint(ckpt))
    own = model.state_dict()
    differ = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in ckpt["model"].items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if differ:  # load_state_dict would raise a 40-line size-mismatch RuntimeError
        k, theirs, ours = differ[0]
        raise ValueError(f"{path}: weights do not match config['model'] (another architecture, e.g. other "
                         f"head_conv or backbone?): {len(differ)} tensors differ in shape, first {k} {theirs} in "
                         f"the file vs {ours} built from its config")
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match config['model']: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    return model.eval()
