"""Device and precision: the one place that turns ``--device`` and ``--amp`` into a torch device and an autocast dtype,
for training (``train.device``, ``train.amp``), evaluation (``evaluate.py --device --amp``) and ``model.predict``.

Devices: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``; under DDP ``cuda`` means the
process's own GPU. Precision (``AMP_MODES``): ``off`` (float32), ``bf16``, ``fp16`` (CUDA only; training adds a
gradient scaler), ``auto`` (bf16 where the GPU supports it, else fp16; float32 on CPU).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from contextlib import nullcontext

import torch

from model.config import ConfigError

DEVICES_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
# glibc mallopt parameters (malloc.h) and the values keep_freed_memory sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 1 << 30}
MALLOC_ENV = "LAANET_MALLOC_TUNING"  # 0 leaves glibc's defaults
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


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel; True when applied.

    With glibc's defaults, every activation of a CPU forward pass above the (adaptive) mmap threshold is
    mmapped and unmapped, and the top of the heap is trimmed after each large free, so each batch faults its
    memory in again page by page: evaluating the Lite0 recipe on 432 faces spent 38.7 s in the kernel against
    54.9 s computing (17.7 M page faults). Mapping below 32 MB from the heap, never trimming below 2 GB and
    growing the heap 1 GB at a time makes the same evaluation 1.6x faster (52.8 s -> 32.3 s wall, 0.41 M page
    faults), for a peak RSS of 1.97 GB against 1.76 GB (docs/evaluation.md, "Throughput"); a training step
    alone moves within the machine's noise (docs/training.md). Process-wide and numerically neutral (where tensors
    live, not what they hold); forked workers inherit it. A no-op off glibc, or with LAANET_MALLOC_TUNING=0.
    """
    if os.environ.get(MALLOC_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


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
