"""The tiny network and synthetic shards the training, evaluation and DDP tests share (helpers, not tests).

Everything runs on CPU with timm's tiny ``test_efficientnet`` (0.5 M parameters) at SIZE x SIZE on synthetic shards
written with the pipeline's shard writer (smooth textures with a face-like 68-point layout, enough for SBI blending).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model import build_model
from model.checkpoint import save_checkpoint
from pipeline.shard_index import write_index
from pipeline.shard_writer import write_shard

CROP = 96
SIZE = 64


def face_landmarks(side: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible frontal 68-point layout (dlib order) in an ``side`` x ``side`` crop, jittered. (68, 2)."""
    t = np.linspace(0, np.pi, 17)
    jaw = np.stack([0.5 - 0.38 * np.cos(t), 0.4 + 0.45 * np.sin(t)], 1)
    brow_l = np.stack([np.linspace(0.2, 0.42, 5), 0.3 - 0.03 * np.sin(np.linspace(0, np.pi, 5))], 1)
    brow_r = brow_l * [-1, 1] + [1, 0]
    nose_bridge = np.stack([np.full(4, 0.5), np.linspace(0.36, 0.55, 4)], 1)
    nostrils = np.stack([np.linspace(0.43, 0.57, 5), np.full(5, 0.6)], 1)

    def ring(cx, cy, rx, ry, n):
        a = np.linspace(np.pi, 3 * np.pi, n, endpoint=False)
        return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)

    eye_l, eye_r = ring(0.32, 0.4, 0.06, 0.025, 6), ring(0.68, 0.4, 0.06, 0.025, 6)
    mouth_o, mouth_i = ring(0.5, 0.72, 0.12, 0.05, 12), ring(0.5, 0.72, 0.08, 0.02, 8)
    pts = np.concatenate([jaw, brow_l, brow_r[::-1], nose_bridge, nostrils, eye_l, eye_r, mouth_o, mouth_i])
    pts = pts * side + rng.normal(0, 0.01 * side, pts.shape)
    return pts.astype(np.float32)


def face_image(side: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random texture with a lighter face ellipse: (side, side, 3) uint8."""
    low = rng.uniform(40, 200, (6, 6, 3))
    ys, xs = np.linspace(0, 5, side), np.linspace(0, 5, side)
    img = np.stack([np.array([np.interp(xs, np.arange(6), row) for row in
                              np.array([np.interp(ys, np.arange(6), low[:, j, c]) for j in range(6)]).T])
                    for c in range(3)], -1)
    yy, xx = np.mgrid[0:side, 0:side] / side
    face = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.55) / 0.45) ** 2 < 1
    img[face] = 0.5 * img[face] + 0.5 * rng.uniform(150, 230, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def write_split(split_dir: Path, n_videos: int, frames: int, seed: int, fake_videos: int = 0) -> Path:
    """One synthetic shard (+ index) of ``n_videos`` real and ``fake_videos`` fake videos."""
    rng = np.random.default_rng(seed)
    n_all = n_videos + fake_videos
    faces = np.stack([face_image(CROP, rng) for _ in range(n_all * frames)])
    lms = np.stack([face_landmarks(CROP, rng) for _ in range(n_all * frames)])
    videos = [{"id": f"v{v:02d}", "label": int(v >= n_videos),
               "method": "original" if v < n_videos else "Synthetic"} for v in range(n_all)]
    write_shard(split_dir / "shard-00000.h5", faces, videos=videos, video=np.repeat(np.arange(n_all), frames),
                frame_index=np.tile(np.arange(frames), n_all), landmarks=lms)
    write_index(split_dir, dataset="toy", split=split_dir.name)
    return split_dir


def tiny_overrides(shards: dict[str, Path], out_dir: Path, *extra: str) -> list[str]:
    return [f"data.shards=[{shards['train']}]", "model.backbone=test_efficientnet", "model.pretrained=false",
            f"model.input_size={SIZE}", f"data.image_size={SIZE}", "model.head_conv=16", "model.dropout=0.0", "model.drop_path_rate=0.0",
            "train.device=cpu", "train.num_workers=0", "train.batch_pairs=2", "optim.lr_base_batch_pairs=2",
            "train.channels_last=false",
            "train.log_every=1", f"train.out_dir={out_dir}", "val.every=0", *extra]


def tiny_checkpoint(path):
    """A randomly initialised tiny LAA-Net (timm's test_efficientnet, SIZE px input) saved as a checkpoint."""
    torch.manual_seed(0)
    model = build_model({"backbone": "test_efficientnet", "input_size": SIZE, "head_conv": 8})
    save_checkpoint(path, {"model": model.state_dict(), "config": {"model": model.config.to_dict()},
                           "epoch": 0, "step": 0})
    return path
