"""Device and precision: the one place that turns ``--device`` and ``--amp`` into a torch device and an autocast dtype,
for training (``train.device``, ``train.amp``), evaluation (``evaluate.py --device --amp``) and ``model.predict``.

Devices: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``; under DDP ``cuda`` means the
process's own GPU. Precision (``AMP_MODES``): ``off`` (float32), ``bf16``, ``fp16`` (CUDA only; training adds a
gradient scaler), ``auto`` (bf16 where the GPU supports it, else fp16; float32 on CPU).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from model.config import ConfigError

DEVICES_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
AMP_MODES = ("auto", "off", "bf16", "fp16")


def select_device(name: str | None, local_rank: int | None = None, what: str = "--device") -> torch.device:
    """The torch device for ``name`` (None = auto); ``local_rank`` picks the GPU of a DDP process for ``cuda``."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    if not (name == "cpu" or name == "cuda" or name.startswith("cuda:")):
        raise ConfigError(f"{what}={name!r}: expected {DEVICES_HELP}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{what}={name!r} but no CUDA device is available")
    return torch.device(name)


def select_amp(mode: str, device: torch.device, what: str = "--amp") -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for float32, whether training needs a gradient scaler) for an ``AMP_MODES`` value."""
    if mode not in AMP_MODES:
        raise ConfigError(f"{what}={mode!r}: expected one of {', '.join(AMP_MODES)}")
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return None, False
    if mode == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ConfigError(f"{what}=fp16 needs a CUDA device (use bf16 or off on CPU)")
    return torch.float16, True


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context in ``dtype`` on ``device``, or a no-op context for float32 (None)."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
