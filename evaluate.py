"""Evaluate a LAA-Net checkpoint on prepared test shards: metrics, curves, heatmap overlays, robustness.

    python evaluate.py --checkpoint runs/x/best.pt --dataset ffpp cdf2 --split test --out runs/x/eval
    python evaluate.py --checkpoint ckpt.pt --shards shards/mine/test --perturb all --out out/eval

Protocol (LAA-Net paper Table 1): ``--frames`` evenly spaced faces per video (32), score = the cls head
only, flip test averages the logits of each face and its mirror, video score = sigmoid of the mean frame
logit (``--aggregate prob-mean``: mean of frame probabilities). The protocol of every test set is printed
with its numbers and stored next to them in ``metrics.json`` and the report.

Outputs in ``--out``: ``metrics.json``, ``scores.csv`` (one row per video), ``frame_scores.csv`` (one row per
face), ``report.md`` (tables), ``roc.png``, ``pr.png``, ``overlays/*.png`` (predicted heatmaps over the most
confident fakes and reals and the worst mistakes) and, with ``--perturb``, ``robustness.png``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# Human-readable dataset variants for the protocol; a name not listed is reported as given.
DATASET_VARIANTS = {
    "ffpp": "FaceForensics++",
    "ff++": "FaceForensics++",
    "cdf2": "Celeb-DF v2",
    "celebdf": "Celeb-DF v2",
    "dfd": "DeepFakeDetection (Google/Jigsaw)",
    "dfdc": "DFDC full test set (5,000 videos)",
    "dfdcp": "DFDC-Preview (the reference implementation's 'DFDC')",
    "dfdc_preview": "DFDC-Preview (the reference implementation's 'DFDC')",
    "dfw": "WildDeepfake",
    "wilddeepfake": "WildDeepfake",
    "sample": "embedded sample clips (demo)",
}
_COMPRESSION_RE = re.compile(r"(?:^|[/_\-])(c0|c23|c40|raw)(?:$|[/_\-])")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint from train.py or a converted reference one")
    p.add_argument("--dataset", nargs="*", default=[], help="dataset names under --shards-root (several: one table)")
    p.add_argument("--split", default="test")
    p.add_argument("--shards-root", default="shards", help="folder holding <dataset>/<split>/index.json")
    p.add_argument("--shards", nargs="*", default=[], help="ad-hoc split folders (each holds an index.json)")
    p.add_argument("--frames", type=int, default=32, help="faces per video, evenly spaced (0 = all stored)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="flip test: average the cls logits of each face and its mirror")
    p.add_argument("--aggregate", choices=("logit-mean", "prob-mean"), default="logit-mean")
    p.add_argument("--perturb", nargs="*", default=[], help="robustness: 'all' or perturbation names")
    p.add_argument("--synthetic-fakes", choices=("sbi", "bi"), default=None,
                   help="pair every real face with a synthetic blended fake (for sets without fakes)")
    p.add_argument("--compression", default=None, help="compression of the source videos, for the protocol "
                   "(default: read from the video paths, e.g. c23)")
    p.add_argument("--overlays", type=int, default=8, help="faces per overlay sheet (0: no overlays)")
    p.add_argument("--batch-size", type=int, default=0, help="0: chosen from the free memory")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader worker processes reading and resizing faces (default: cores, at most 8)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 autocast on CUDA (off: float32, the paper's numbers)")
    p.add_argument("--out", required=True, help="output folder")
    return p


# ----------------------------------------------------------------------------------------------- test sets
@dataclass
class TestSet:
    """One row group of the report: a named split folder with its protocol."""

    name: str
    split_dir: Path
    dataset: str
    split: str
    protocol: dict = field(default_factory=dict)


def resolve_test_sets(args) -> list[TestSet]:
    """``--dataset`` names under ``--shards-root`` plus ``--shards`` folders; each must hold an index.json."""
    from pipeline.shards import ShardError, load_index

    def index_of(d: Path) -> dict:
        try:
            return load_index(d)
        except ShardError as e:
            raise SystemExit(f"evaluate.py: {e}") from e

    sets = []
    for name in args.dataset:
        d = Path(args.shards_root) / name / args.split
        index = index_of(d)
        sets.append(TestSet(f"{name}/{args.split}", d, index.get("dataset", name), index.get("split", args.split)))
    for folder in args.shards:
        d = Path(folder)
        index = index_of(d)
        dataset, split = index.get("dataset", d.parent.name), index.get("split", d.name)
        sets.append(TestSet(f"{dataset}/{split}", d, dataset, split))
    names = [s.name for s in sets]
    for s in sets:
        if names.count(s.name) > 1:  # two ad-hoc folders with the same index names: fall back to the path
            s.name = str(s.split_dir)
    if not sets:
        raise SystemExit("evaluate.py: give --dataset NAME (under --shards-root) or --shards DIR")
    return sets


def infer_compression(paths: list[str]) -> str:
    """The FF++-style compression tag shared by all video paths (c0 / c23 / c40 / raw), else "as stored"."""
    tags = {m.group(1) for p in paths if (m := _COMPRESSION_RE.search(p))}
    if len(tags) == 1 and all(_COMPRESSION_RE.search(p) for p in paths):
        return tags.pop()
    if tags:
        return "mixed: " + ", ".join(sorted(tags))
    return "unknown (not in the video paths; pass --compression)"


def shard_protocol(split_dir: Path) -> dict:
    """Facts about how the faces were prepared, read from the shards and the split's failures log.

    Videos the pipeline could not decode, or where no sampled frame had a face, have no face to score and
    are absent from the metrics; they are counted here so that the report says so.
    """
    from pipeline.shards import FAILURES_NAME, ShardReader, load_index, shard_paths

    paths, attrs, no_face_frames, faceless_videos = [], {}, 0, 0
    for p in shard_paths(split_dir):
        r = ShardReader(p)
        attrs = attrs or r.attrs
        paths += [v.get("path", "") for v in r.videos]
        no_face_frames += len(r.no_face)
        faceless_videos += len(r.videos) - len(np.unique(r.video))
        r.close()
    failures: dict[str, int] = {}
    log = split_dir / load_index(split_dir).get("failures", FAILURES_NAME)
    if log.is_file():
        for line in log.read_text().splitlines():
            if line.strip():
                stage = json.loads(line).get("stage", "?")
                failures[stage] = failures.get(stage, 0) + 1
    return {"compression": infer_compression(paths), "crop_scale": attrs.get("crop_scale"),
            "crop_size": attrs.get("crop_size"), "detector": attrs.get("detector"),
            "sampled_frames_without_face": no_face_frames, "videos_without_faces": faceless_videos,
            "pipeline_failures": failures}


# ----------------------------------------------------------------------------------------------- inference
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


@dataclass
class FrameResults:
    """Per-face outputs of one pass over a test set, all (N,) in dataset order."""

    logits: np.ndarray
    labels: np.ndarray
    video_ids: list[str]
    methods: list[str]
    frame_index: np.ndarray


def _as_list(x) -> list:
    if hasattr(x, "tolist"):
        return x.tolist()
    return list(x)


class PerturbCollate:
    """Collate that perturbs each face (as uint8 at network resolution) before stacking.

    Runs inside DataLoader workers; the seed of every face comes from its video id and frame index, so the
    result does not depend on batch composition or worker count.
    """

    def __init__(self, name: str, level: int, collate):
        self.name, self.level, self.collate = name, level, collate

    def __call__(self, items: list[dict]) -> dict:
        from model import perturb
        from model.data import to_tensor

        for item in items:
            img = tensor_to_uint8(item["image"])
            seed = perturb.perturbation_seed(f"{item['video_id']}:{item['frame_index']}", self.name, self.level)
            item["image"] = to_tensor(perturb.apply(img, self.name, self.level, seed=seed))
        return self.collate(items)


def tensor_to_uint8(image) -> np.ndarray:
    """(3, S, S) float tensor in [-1, 1] -> (S, S, 3) uint8 RGB (exact inverse of ``model.data.to_tensor``)."""
    arr = (image.detach().float().cpu().numpy().transpose(1, 2, 0) + 1.0) * 127.5
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def run_inference(model, dataset, batch_size: int, device, flip: bool, collate, workers: int, desc: str,
                  amp: bool = False) -> FrameResults:
    """Cls logits of every face of ``dataset`` (flip test optional), with a progress bar."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from model.predict import score_faces

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    logits, labels, vids, methods, frames = [], [], [], [], []
    with tqdm(total=len(dataset), desc=desc, unit="face", dynamic_ncols=True, file=sys.stderr) as bar:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            cls, _ = score_faces(model, images, flip=flip, want_heatmap=False, amp=amp)
            logits.append(cls.float().cpu().numpy())
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
    )


# ----------------------------------------------------------------------------------------------- metrics
def compute_metrics(frames: FrameResults, aggregate: str) -> tuple[dict, dict, object]:
    """Video-level metrics (plus frame AUC / AP) overall and per manipulation method.

    Returns (metrics, per_method, videos): videos are the aggregated ``model.metrics.VideoScores``;
    per_method maps each fake method to the metrics of the set
    "real videos + that method's fakes" (the FF++ per-manipulation protocol); empty when there is only
    one fake method or no real video.
    """
    from model import metrics

    videos = metrics.aggregate_videos(frames.video_ids, frames.methods, frames.labels, frames.logits, aggregate)
    out = metrics.binary_metrics(videos.label, videos.score)
    frame_probs = metrics.sigmoid(frames.logits)
    out["frame_auc"] = metrics.roc_auc(frames.labels, frame_probs)
    out["frame_ap"] = metrics.average_precision(frames.labels, frame_probs)
    out["n_faces"] = int(len(frames.logits))
    out["n_videos"] = int(len(videos.label))
    per_method = {}
    fake_methods = sorted({m for m, lab in zip(videos.method, videos.label) if lab == 1})
    has_real = bool((videos.label == 0).any())
    if len(fake_methods) > 1 and has_real:
        vmethod = np.asarray(videos.method)
        fmethod = np.asarray(frames.methods)
        for m in fake_methods:
            vsel = (videos.label == 0) | (vmethod == m)
            fsel = (frames.labels == 0) | (fmethod == m)
            pm = metrics.binary_metrics(videos.label[vsel], videos.score[vsel])
            pm["frame_auc"] = metrics.roc_auc(frames.labels[fsel], frame_probs[fsel])
            pm["frame_ap"] = metrics.average_precision(frames.labels[fsel], frame_probs[fsel])
            pm["n_videos"] = int(vsel.sum())
            per_method[m] = pm
    return out, per_method, videos


# ----------------------------------------------------------------------------------------------- overlays
def pick_overlay_faces(frames: FrameResults, videos, k: int) -> dict[str, list[tuple[int, str]]]:
    """Dataset indices of faces to draw: ``{sheet: [(face index, caption), ...]}``.

    confident_fakes: the k fake videos with the highest score, each through its most fake-looking face;
    confident_reals: the k real videos with the lowest score, each through its most real-looking face;
    worst_mistakes: the k videos with the largest |label - score|, each through its most wrong face.
    """
    key_to_faces: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(frames.methods, frames.video_ids)):
        key_to_faces.setdefault(key, []).append(i)
    sheets: dict[str, list[tuple[int, str]]] = {"confident_fakes": [], "confident_reals": [], "worst_mistakes": []}
    order = {
        "confident_fakes": [v for v in np.argsort(-videos.score) if videos.label[v] == 1],
        "confident_reals": [v for v in np.argsort(videos.score) if videos.label[v] == 0],
        "worst_mistakes": [v for v in np.argsort(-np.abs(videos.label - videos.score))
                           if (videos.score[v] >= 0.5) != (videos.label[v] == 1)],
    }
    for sheet, vids in order.items():
        for v in vids[:k]:
            faces = key_to_faces[(videos.method[v], videos.video_id[v])]
            logits = frames.logits[faces]
            # Most fake-looking face for a fake (or a real called fake), most real-looking otherwise.
            towards_fake = (sheet == "confident_fakes") or (sheet == "worst_mistakes" and videos.label[v] == 0)
            face = faces[int(np.argmax(logits) if towards_fake else np.argmin(logits))]
            name = videos.video_id[v].split("/", 1)[-1]  # drop the dataset prefix
            name = name if len(name) <= 30 else "..." + name[-27:]
            caption = (f"{name} f{frames.frame_index[face]}\n"
                       f"label {'fake' if videos.label[v] else 'real'}, video p={videos.score[v]:.3f}")
            sheets[sheet].append((face, caption))
    return sheets


def draw_overlays(model, dataset, frames: FrameResults, videos, k: int, device, flip: bool, out_dir: Path,
                  prefix: str, amp: bool = False) -> list[Path]:
    """Heatmap overlay sheets for one test set; returns the PNG paths written."""
    import torch

    from model.predict import score_faces
    from model.report import OverlayItem, save_overlay_sheet

    written = []
    for sheet, picks in pick_overlay_faces(frames, videos, k).items():
        if not picks:
            continue
        items = [dataset[i] for i, _ in picks]
        images = torch.stack([it["image"] for it in items]).to(device)
        _, hm = score_faces(model, images, flip=flip, want_heatmap=True, amp=amp)
        probs = torch.sigmoid(hm.float())[:, 0].cpu().numpy()
        panels = [OverlayItem(tensor_to_uint8(it["image"]), p, cap) for it, p, (_, cap) in zip(items, probs, picks)]
        path = out_dir / f"{prefix}_{sheet}.png"
        save_overlay_sheet(panels, path, f"{prefix}: {sheet.replace('_', ' ')} (predicted heatmap over the face)")
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------- outputs
def write_scores(path: Path, per_set: dict[str, tuple]) -> None:
    """scores.csv: one row per video (test set, video id, label, method, score = fake probability, n_frames)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test_set", "video_id", "label", "method", "score", "n_frames"])
        for name, (_, videos) in per_set.items():
            for vid, lab, m, s, n in zip(videos.video_id, videos.label, videos.method, videos.score, videos.n_frames):
                w.writerow([name, vid, int(lab), m, f"{s:.6f}", int(n)])


def write_frame_scores(path: Path, per_set: dict[str, tuple]) -> None:
    """frame_scores.csv: one row per face (test set, video id, method, frame index, label, cls logit)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test_set", "video_id", "method", "frame_index", "label", "logit"])
        for name, (frames, _) in per_set.items():
            for vid, m, fi, lab, lg in zip(frames.video_ids, frames.methods, frames.frame_index, frames.labels,
                                           frames.logits):
                w.writerow([name, vid, m, int(fi), int(lab), f"{lg:.6f}"])


def _clean(obj):
    """JSON-safe copy: NaN -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def protocol_line(p: dict) -> str:
    return (f"{p['dataset']} [{p['variant']}] split={p['split']} compression={p['compression']} "
            f"frames/video={p['frames_per_video']} flip={'on' if p['flip_test'] else 'off'} "
            f"aggregation={p['aggregation']} fakes={p['fakes']} ckpt sha256={p['checkpoint_sha256'][:12]}")


def build_protocol(ts: TestSet, args, image_size: int, sha: str, device) -> dict:
    """Everything a test set's numbers depend on, stored and printed next to them."""
    prep = shard_protocol(ts.split_dir)
    return {
        "dataset": ts.dataset,
        "variant": DATASET_VARIANTS.get(ts.dataset.lower(), ts.dataset),
        "split": ts.split,
        "compression": args.compression or prep["compression"],
        "frames_per_video": args.frames or "all stored",
        "flip_test": bool(args.flip),
        "aggregation": args.aggregate,
        "score": "cls head",
        "fakes": f"synthetic ({args.synthetic_fakes})" if args.synthetic_fakes else "dataset",
        "input_size": image_size,
        "crop_scale": prep["crop_scale"],
        "detector": prep["detector"],
        "sampled_frames_without_face": prep["sampled_frames_without_face"],
        "videos_without_faces (not scored)": prep["videos_without_faces"],
        "pipeline_failures_by_stage": prep["pipeline_failures"],
        "precision": "bf16 autocast" if (args.amp and device.type == "cuda") else "float32",
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": sha,
    }


def run_robustness(model, dataset, perturbations: list[str], clean_auc: float, batch_size: int, device, args,
                   name: str) -> dict:
    """Video AUC of every perturbation type at every level: one full pass over ``dataset`` each.

    Returns ``{"clean": auc, "perturbations": {type: [auc level 1..5]}, "details": {type: [per-level dicts]}}``.
    """
    from model import perturb
    from model.data import collate_eval

    out = {"clean": clean_auc, "perturbations": {}, "details": {}}
    for kind in perturbations:
        aucs, details = [], []
        for level in perturb.LEVELS:
            frames = run_inference(model, dataset, batch_size, device, args.flip,
                                   PerturbCollate(kind, level, collate_eval), args.workers,
                                   desc=f"{name} {kind} L{level}", amp=args.amp)
            m, _, _ = compute_metrics(frames, args.aggregate)
            aucs.append(m["auc"])
            details.append({"level": level, "param": perturb.PARAMS[kind][level - 1], "auc": m["auc"],
                            "ap": m["ap"], "acc": m["acc"], "frame_auc": m["frame_auc"]})
        out["perturbations"][kind] = aucs
        out["details"][kind] = details
        print(f"{name} {kind}: video AUC by level " + " ".join(f"{100 * a:.2f}" for a in aucs))
    return out


# ----------------------------------------------------------------------------------------------- main
def main(args) -> dict:
    import torch

    from model import load_checkpoint, perturb, report
    from model.data import EvalDataset, collate_eval
    from pipeline.faces import file_sha256

    try:  # reject bad names before any work
        perturbations = perturb.parse_names(args.perturb)
    except ValueError as e:
        raise SystemExit(f"evaluate.py: --perturb: {e}") from e
    if args.frames < 0:
        raise SystemExit(f"evaluate.py: --frames must be >= 0, got {args.frames}")
    ckpt_path = Path(args.checkpoint)
    if not ckpt_path.is_file():
        raise SystemExit(f"evaluate.py: {ckpt_path}: checkpoint not found")
    test_sets = resolve_test_sets(args)
    out = Path(args.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = load_checkpoint(ckpt_path, map_location="cpu").to(device).eval()
    except ValueError as e:  # not a checkpoint, or weights that do not match its config: one line, no traceback
        raise SystemExit(f"evaluate.py: {e}") from e
    image_size = int(model.config.input_size)
    has_hm = "hm" in model.heads
    sha = file_sha256(ckpt_path)
    batch_size = choose_batch_size(image_size, args.flip, device, args.batch_size)
    print(f"checkpoint {ckpt_path} sha256={sha[:12]} input {image_size}x{image_size} on {device}, "
          f"batch {batch_size}{' (flip test: x2 images)' if args.flip else ''}", file=sys.stderr)

    per_set, results, curves, robustness, overlay_paths = {}, {}, {}, {}, []
    for ts in test_sets:
        ds_kwargs = {"synthetic_fakes": args.synthetic_fakes} if args.synthetic_fakes else {}
        dataset = EvalDataset([ts.split_dir], image_size, frames_per_video=args.frames or None, **ds_kwargs)
        ts.protocol = build_protocol(ts, args, image_size, sha, device)
        if args.synthetic_fakes:
            ts.protocol["real faces without landmarks (no synthetic fake)"] = \
                dataset.skipped.get("frames_without_landmarks", 0)
        print("protocol: " + protocol_line(ts.protocol), file=sys.stderr)
        t0 = time.perf_counter()
        frames = run_inference(model, dataset, batch_size, device, args.flip, collate_eval, args.workers,
                               desc=ts.name, amp=args.amp)
        seconds = time.perf_counter() - t0
        if len(frames.logits) == 0:
            raise SystemExit(f"evaluate.py: {ts.split_dir}: no faces to evaluate")
        video_metrics, per_method, videos = compute_metrics(frames, args.aggregate)
        per_set[ts.name] = (frames, videos)
        curves[ts.name] = (videos.label, videos.score)
        results[ts.name] = {"protocol": ts.protocol, "video": video_metrics, "per_method": per_method,
                            "faces_per_second": len(frames.logits) / max(seconds, 1e-9)}
        print(f"{ts.name}: video AUC {100 * video_metrics['auc']:.2f} AP {100 * video_metrics['ap']:.2f} "
              f"EER {100 * video_metrics['eer']:.2f} ({video_metrics['n_videos']} videos, "
              f"{video_metrics['n_faces']} faces) | {protocol_line(ts.protocol)}")
        prefix = ts.name.replace("/", "_")
        if args.overlays > 0 and has_hm:
            overlay_paths += draw_overlays(model, dataset, frames, videos, args.overlays, device, args.flip,
                                           out / "overlays", prefix, amp=args.amp)
        elif args.overlays > 0:
            print(f"{ts.name}: the checkpoint has no hm head, so no heatmap overlays", file=sys.stderr)
        if perturbations:
            robustness[ts.name] = run_robustness(model, dataset, perturbations, video_metrics["auc"], batch_size,
                                                 device, args, ts.name)
            results[ts.name]["robustness"] = robustness[ts.name]

    # ---- files
    report.plot_curves(curves, out / "roc.png", out / "pr.png")
    if robustness:
        report.plot_robustness(robustness, out / "robustness.png")
    write_scores(out / "scores.csv", per_set)
    write_frame_scores(out / "frame_scores.csv", per_set)
    summary = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "metric_definitions": {
            "auc": "video-level ROC AUC (headline)", "ap": "video-level average precision",
            "eer": "video-level equal error rate", "acc": "video-level accuracy at 0.5",
            "ar": "balanced accuracy at 0.5 (the paper's AR as the reference code computes it)",
            "mf1": "harmonic mean of AP and AR (the paper's mF1 as the reference code computes it)",
            "f1": "standard F1 of the fake class at 0.5",
            "frame_auc": "frame-level ROC AUC", "frame_ap": "frame-level average precision",
        },
        "test_sets": results,
    }
    (out / "metrics.json").write_text(json.dumps(_clean(summary), indent=1))
    md = build_report(results, robustness, overlay_paths, out)
    (out / "report.md").write_text(md)
    print("\n" + md)
    print(f"report: {out / 'report.md'} (metrics.json, scores.csv, roc.png, pr.png"
          f"{', robustness.png' if robustness else ''}, overlays/)")
    return summary


def build_report(results: dict, robustness: dict, overlay_paths: list[Path], out: Path) -> str:
    """report.md: results table (video level unless marked), per-method breakdown, protocol, robustness."""
    from model import report

    entries = []
    for name, r in results.items():
        v = r["video"]
        entries.append({"name": name, "metrics": v, "n_videos": v["n_videos"], "n_real": v["n_real"],
                        "n_fake": v["n_fake"]})
        for m, pm in r["per_method"].items():
            entries.append({"name": f"{name} / {m}", "metrics": pm, "n_videos": pm["n_videos"],
                            "n_real": pm["n_real"], "n_fake": pm["n_fake"]})
    parts = [
        "# Evaluation report\n",
        "## Results\n",
        report.metrics_table(entries),
        "\nVideo level unless marked frame. AR = balanced accuracy at 0.5 and mF1 = harmonic mean of AP and "
        "AR (the paper's definitions as its reference code computes them); F1 is the standard F1 of the fake "
        "class. Rows `set / Method` hold the real videos and that method's fakes.\n",
        "## Protocol\n",
        report.protocol_table({n: r["protocol"] for n, r in results.items()}),
        "\n## Curves\n",
        "![ROC](roc.png) ![PR](pr.png)\n",
    ]
    if robustness:
        parts += ["\n## Robustness (video AUC %, perturbations applied to the face crops)\n",
                  report.robustness_table(robustness), "\n![robustness](robustness.png)\n"]
    if overlay_paths:
        parts += ["\n## Heatmap overlays\n"] + [f"![{p.stem}]({p.relative_to(out)})\n" for p in overlay_paths]
    return "\n".join(parts)


def cli(argv: list[str] | None = None) -> None:
    """``python evaluate.py``: data and checkpoint errors end as one line (``LAANET_DEBUG=1``: traceback)."""
    from pipeline.cli_errors import debugging, one_line
    from pipeline.shards import ShardError

    try:
        main(get_args_parser().parse_args(argv))
    except (ShardError, ValueError) as err:
        if debugging():
            raise
        raise SystemExit(f"evaluate.py: {one_line(err)}") from None


if __name__ == "__main__":
    cli()
