"""Per-epoch validation for the trainer: video-level AUC of the classification head.

``val.fakes`` chooses what the real validation videos are tested against:
- ``sbi`` (default, the reference's model selection) or ``bi``: each real face of the validation videos also
  gets a synthetic fake made from it (``EvalDataset(..., synthetic_fakes=...)``); fake videos in the shards
  are left out. Model selection then uses real data only, as the paper claims ("trained on real data only").
  The AUC measures how well the model separates real faces from blends of unseen people: a proxy, not a
  deepfake AUC.
- ``real``: the fake videos of the validation shards (e.g. FF++ val's four manipulations), the
  deepfake-specific signal; it needs fake videos in ``val.shards``.
``val.perturb`` (e.g. ``jpeg:4``) degrades every validation face after synthesis with one robustness
perturbation (model.eval.perturb), for selecting on degraded video.
Faces are shown at ``val.face_scale`` (default the reference's test geometry, as evaluation).
Scoring is evaluation's (model.eval.inference): cls logit per frame, flip test as ``val.flip`` (on, as in
evaluation), video score = sigmoid(mean frame logit).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from model.config import ConfigError
from model.data.datasets import EvalDataset, collate_eval
from model.data.face_scale import resolve_face_scale
from model.eval import perturb
from model.eval.inference import run_inference
from model.eval.metrics import aggregate_videos, roc_auc, sigmoid
from model.eval.robustness import PerturbCollate
from pipeline.shards import ShardReader, shard_paths


def has_fake_videos(split_dirs: list[str]) -> bool:
    """True if any video row of any finished shard in ``split_dirs`` has label 1."""
    for d in split_dirs:
        for path in shard_paths(d):
            reader = ShardReader(path)
            try:
                if any(int(row["label"]) == 1 for row in reader.videos):
                    return True
            finally:
                reader.close()
    return False


def build_val_loader(cfg) -> tuple[DataLoader | None, str]:
    """(loader, mode description) for ``cfg.val`` (a :class:`model.config.Config`); (None, "off")
    when no validation shards are configured. Raises ValueError for ``val.fakes: real`` without fakes."""
    if not cfg.val.shards or cfg.val.every <= 0:
        return None, "off (no val.shards)"
    face_scale = resolve_face_scale(cfg.val.face_scale, cfg.sbi, cfg.augment)
    where = ", ".join(cfg.val.shards)
    if cfg.val.fakes == "real":
        if not has_fake_videos(cfg.val.shards):
            raise ConfigError(f"val.fakes is 'real' but {where} holds no fake video; use val.fakes=sbi")
        dataset = EvalDataset(cfg.val.shards, cfg.data.image_size, frames_per_video=cfg.val.frames_per_video,
                              face_scale=face_scale)
        mode = f"real fakes (val.fakes=real) from {where}"
    else:
        dataset = EvalDataset(cfg.val.shards, cfg.data.image_size, frames_per_video=cfg.val.frames_per_video,
                              synthetic_fakes=cfg.val.fakes, seed=cfg.data.seed, face_scale=face_scale,
                              only_real=True)
        mode = f"{cfg.val.fakes.upper()} pseudo-fakes of the real videos (val.fakes={cfg.val.fakes}) in {where}"
    mode += (f", faces at {face_scale or 'the stored crop'}x the face box, flip test "
             f"{'on' if cfg.val.flip else 'off'} (val.flip)")
    collate = collate_eval
    if cfg.val.perturb:
        name, level = cfg.val.perturb.split(":")
        if name not in perturb.PARAMS:
            raise ConfigError(f"val.perturb: unknown perturbation {name!r} (one of {', '.join(perturb.PARAMS)})")
        collate = PerturbCollate(name, int(level), collate_eval)
        mode += f", every face perturbed by {name} level {level} ({perturb.PARAMS[name][int(level) - 1]}; val.perturb)"
    if cfg.val.max_videos > 0:
        dataset = first_videos(dataset, cfg.val.max_videos)
    loader = DataLoader(dataset, batch_size=cfg.val.batch_size, shuffle=False, num_workers=cfg.val.num_workers,
                        collate_fn=collate)
    return loader, mode


def first_videos(dataset: EvalDataset, max_videos: int) -> Subset:
    """Keep the items of the first ``max_videos`` videos, with the synthetic fakes made from them
    (their id is the real video's id + "/sbi" or "/bi")."""
    suffix = f"/{dataset.synthetic_fakes}" if dataset.synthetic_fakes else None
    keep: list[str] = []
    indices = []
    for i in range(len(dataset)):
        vid = dataset.item_video_id(i)
        base = vid[: -len(suffix)] if suffix and vid.endswith(suffix) else vid
        if base not in keep:
            if len(keep) >= max_videos:
                continue
            keep.append(base)
        indices.append(i)
    return Subset(dataset, indices)


def validate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, flip: bool = True) -> dict[str, float]:
    """Score every validation frame with the evaluation scorer (`model.eval.inference`, flip test as
    ``val.flip``); returns ``auc_video``, ``auc_frame``, ``n_videos``, ``n_frames``, ``p_fake_real`` and
    ``p_fake_fake`` (the mean fake probability of the real and of the fake frames: which side a degraded
    validation moves) and, when the model has a heatmap head, ``auc_frame_hm_peak`` (frame score = max
    heatmap logit; a diagnostic, selection uses the cls head as evaluation does). The model is left in eval
    mode; the caller puts it back in train mode.
    """
    has_hm = "hm" in getattr(model, "heads", {})
    frames = run_inference(model, loader, device, flip=flip, amp=amp_dtype, channels_last=channels_last,
                           hm_peak=has_hm)
    videos = aggregate_videos(frames.video_ids, frames.methods, frames.labels, frames.logits)
    out = {
        "auc_video": roc_auc(videos.label, videos.score),
        "auc_frame": roc_auc(frames.labels, frames.logits),
        "n_videos": float(len(videos.label)),
        "n_frames": float(len(frames.logits)),
    }
    prob = sigmoid(frames.logits)
    for name, label in (("p_fake_real", 0), ("p_fake_fake", 1)):
        side = prob[frames.labels == label]
        out[name] = float(side.mean()) if len(side) else float("nan")
    if len(frames.hm_peak):
        out["auc_frame_hm_peak"] = roc_auc(frames.labels, frames.hm_peak)
    return out
