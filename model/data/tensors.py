"""Images between uint8 arrays and network tensors: uint8 (..., S, S, 3) RGB <-> float32 (..., 3, S, S) in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch


def normalise_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., S, S, 3) tensor (any device) -> float32 (..., 3, S, S) in [-1, 1] (x / 127.5 - 1), laid out
    channels-last in memory; float input is returned as it is. The project's one uint8 -> [-1, 1] normaliser:
    the trainer calls it on its device, `to_tensor` on the CPU."""
    if images.dtype != torch.uint8:
        return images
    return images.float().div_(127.5).sub_(1.0).movedim(-1, -3)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., S, S, 3) array -> float32 (..., 3, S, S) in [-1, 1]: `normalise_images` of the array."""
    if images.dtype != np.uint8:
        raise TypeError(f"to_tensor takes uint8 images, got {images.dtype}")
    return normalise_images(torch.from_numpy(np.ascontiguousarray(images)))


def tensor_to_uint8(image) -> np.ndarray:
    """(3, S, S) float tensor in [-1, 1] -> (S, S, 3) uint8 RGB (exact inverse of `to_tensor`)."""
    arr = (image.detach().float().cpu().numpy().transpose(1, 2, 0) + 1.0) * 127.5
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
