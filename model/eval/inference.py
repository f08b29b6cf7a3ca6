"""The one scorer: how a face becomes a score, for validation (best.pt), evaluate.py and model.predict alike.

Protocol (paper Table 1, reference behaviour): the cls logit of each face; with the flip test, the mean of
the logits of the face and its mirror (for the heatmap, the mirrored prediction is mirrored back first);
video score = sigmoid of the mean frame logit (see model.eval.metrics.aggregate_videos). Precision: float32,
or autocast in the given dtype on CUDA.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from model.device import autocast


def score_faces(model, images: torch.Tensor, flip: bool = True, want_heatmap: bool = False,
                amp: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward pass for scoring, optionally with the flip test.

    Args:
        model: LAA-Net in eval mode. images: (B, 3, S, S) float tensor in [-1, 1] on the model's device.
        flip: also run the horizontally mirrored images and average the logits.
        want_heatmap: also return the hm logits (the flip-test mean when flip).
        amp: the autocast dtype (model.device.select_amp), or None for float32.
    Returns:
        (cls logits (B,), hm logits (B, 1, S/4, S/4) or None), float32 tensors.
    """
    with torch.inference_mode(), autocast(images.device, amp):
        x = torch.cat([images, images.flip(-1)]) if flip else images
        out = model(x, heads=("cls", "hm") if want_heatmap else ("cls",))
        cls = out["cls"].float().reshape(len(x), -1)[:, 0]
        hm = out.get("hm") if want_heatmap else None
        if hm is not None:
            hm = hm.float()
        if flip:
            b = len(images)
            cls = (cls[:b] + cls[b:]) / 2
            if hm is not None:
                hm = (hm[:b] + hm[b:].flip(-1)) / 2
    return cls, hm


def _as_list(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


@dataclass
class FrameResults:
    """Per-face outputs of one pass over a loader, all (N,) in loader order. hm_peak: the max heatmap logit
    of each face (empty unless asked for)."""

    logits: np.ndarray
    labels: np.ndarray
    video_ids: list[str]
    methods: list[str]
    frame_index: np.ndarray
    hm_peak: np.ndarray = field(default_factory=lambda: np.zeros(0))


def run_inference(model, loader, device: torch.device, flip: bool = True, amp: torch.dtype | None = None,
                  channels_last: bool = False, hm_peak: bool = False, desc: str | None = None,
                  total: int | None = None) -> FrameResults:
    """Score every face of `loader` (batches of collate_eval) with `score_faces`; a progress bar on stderr
    when `desc` is given. The model is put in eval mode (the caller restores train mode)."""
    from tqdm import tqdm

    model.eval()
    logits, peaks, labels, vids, methods, frames = [], [], [], [], [], []
    with tqdm(total=total, desc=desc, unit="face", dynamic_ncols=True, file=sys.stderr,
              disable=desc is None) as bar:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            cls, hm = score_faces(model, images, flip=flip, want_heatmap=hm_peak, amp=amp)
            logits.append(cls.cpu().numpy())
            if hm is not None:
                peaks.append(hm.flatten(1).amax(dim=1).cpu().numpy())
            labels += _as_list(batch["label"])
            vids += _as_list(batch["video_id"])
            methods += _as_list(batch["method"])
            frames += _as_list(batch["frame_index"])
            bar.update(len(images))
    return FrameResults(
        logits=np.concatenate(logits) if logits else np.zeros(0),
        labels=np.asarray(labels, dtype=np.int64),
        video_ids=[str(v) for v in vids],
        methods=[str(m) for m in methods],
        frame_index=np.asarray(frames, dtype=np.int64),
        hm_peak=np.concatenate(peaks) if peaks else np.zeros(0),
    )


def choose_batch_size(image_size: int, flip: bool, device, requested: int = 0) -> int:
    """Faces per forward pass that fit comfortably in the free memory of ``device``.

    Inference memory grows about linearly with the batch: on CPU, a batch of 4 B4 faces at 384 x 384 peaked
    at 375 MB above the loaded model (about 0.1 GB per face, measured with ru_maxrss). We budget 0.25 GB
    per image to leave a margin for other layouts, scale with the input area, double it for the flip test
    (two images per face) and use at most a quarter of the free memory. CPU batches are capped at 16:
    larger ones are no faster there and only delay the progress bar; CUDA batches at 128.
    """
    if requested > 0:
        return requested
    import psutil
    import torch

    per_face = 0.25e9 * (image_size / 384) ** 2 * (2 if flip else 1)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cap = 128
    else:
        free = psutil.virtual_memory().available
        cap = 16
    return int(max(1, min(cap, (free // 4) // per_face)))


def run_dataset(model, dataset, batch_size: int, device, flip: bool, collate, workers: int, desc: str,
                amp: torch.dtype | None = None) -> FrameResults:
    """`run_inference` over a DataLoader of ``dataset`` (evaluation's settings), with a progress bar."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    return run_inference(model, loader, device, flip=flip, amp=amp, desc=desc, total=len(dataset))
