"""Evidence of learning on CPU: train on five talking-head people, validate on a sixth with SBI fakes.

The six HDTF clips (``../shared/data/videos/hdtf``, research use only: read in place, never copied into
the project) go through the real pipeline (RetinaFace crops + dlib landmarks, ad-hoc mode) into
``OUT/shards/{train,val}``; five people train, the held-out person validates. Validation fakes are SBI
pseudo-fakes of the held-out person's real frames (fixed per frame), so the AUC answers "does the
detector separate real faces from self-blended ones of a person it never saw?".

Baseline, in the same run: the validation AUC of the same network before any training step (chance).
Prints the validation AUC per epoch (frame-level over all validation frames; the video-level AUC over a
single real and a single fake "video" is 0 or 1 and is only listed), training images/s, the load
average, and writes ``curves.png``, ``hdtf_auc.png`` and ``summary.json`` into the run folder.

The network is a small EfficientNet-B0 LAA-Net trained from scratch (no ImageNet weights can be
downloaded here), so the backbone is not frozen first (freezing a random backbone teaches nothing).
The run stops, checkpointed, when ``--minutes`` is used up; the LR schedule spans ``--epochs``.

    python -m bench.hdtf_learning                        # defaults: B0, 128 px, 30 minutes at most
    python -m bench.hdtf_learning --minutes 5 --epochs 4 # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from model.config import load_config
from model.net.laanet import build_model
from model.eval.validation import build_val_loader, validate
from pipeline.shards import load_index
from train import train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HDTF = REPO.parent / "shared" / "data" / "videos" / "hdtf"


def prepare_split(videos: list[Path], out: Path, frames: int, crop: int) -> Path:
    """Run the pipeline (frames, faces, landmarks) on ``videos`` into the shard folder ``out``.

    The clips are linked (not copied) into ``out.parent/videos_<name>`` so one ad-hoc glob selects them.
    Skipped when ``out`` already has an index with landmarks.
    """
    if (out / "index.json").is_file():
        index = load_index(out)
        if all(s["landmarks"] for s in index["shards"]) and index["n_videos"] == len(videos):
            print(f"{out}: already prepared ({index['n_faces']} faces)")
            return out
    print(f"{out}: preparing {len(videos)} clip(s)")
    links = out.parent / f"videos_{out.name}"
    links.mkdir(parents=True, exist_ok=True)
    for v in videos:
        link = links / v.name
        if not link.exists():
            link.symlink_to(v.resolve())
    py = sys.executable
    subprocess.run([py, "-m", "pipeline", "extract-frames", "--input", str(links / "*.mp4"), "--label", "real",
                    "--out", str(out), "--frames", str(frames), "--crop-size", str(crop), "--workers", "0"],
                   check=True, cwd=REPO)
    subprocess.run([py, "-m", "pipeline", "cache-landmarks", "--out", str(out), "--workers", "0"],
                   check=True, cwd=REPO)
    return out


def plot_auc(history: list[dict], baseline: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [0] + [h["epoch"] for h in history]
    auc = [baseline["auc_frame"]] + [h.get("val_auc_frame", float("nan")) for h in history]
    auc_hm = [baseline.get("auc_frame_hm_peak", float("nan"))] + [h.get("val_auc_frame_hm_peak", float("nan"))
                                                               for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(epochs, auc, marker="o", label="val frame AUC, cls head (held-out person, SBI fakes)")
    ax.plot(epochs, auc_hm, marker="s", ms=3, label="val frame AUC, heatmap peak (diagnostic)")
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("AUC")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hdtf", type=Path, default=DEFAULT_HDTF, help="folder of the six HDTF clips")
    p.add_argument("--val-person", default="WDA_KatieHill_000", help="clip stem held out for validation")
    p.add_argument("--out", type=Path, default=REPO / "out" / "hdtf_learning")
    p.add_argument("--frames", type=int, default=64, help="frames extracted per clip")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for training + validation")
    p.add_argument("--epochs", type=int, default=30, help="epochs the LR schedule spans")
    p.add_argument("--backbone", default="tf_efficientnet_b0")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--run-name", default="", help="run folder under --out (default run_<backbone>_<size>)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1 is fastest on a CPU shared with other jobs)")
    p.add_argument("overrides", nargs="*", help="extra config overrides (key.sub=value)")
    args = p.parse_args()

    clips = sorted(args.hdtf.glob("*.mp4"))
    if len(clips) < 2:
        raise SystemExit(f"{args.hdtf}: needs the HDTF clips (research-only data, not shipped); found {len(clips)}")
    val = [c for c in clips if c.stem == args.val_person]
    if not val:
        raise SystemExit(f"{args.hdtf}: no clip named {args.val_person}.mp4")
    train_clips = [c for c in clips if c not in val]
    print(f"train people: {[c.stem for c in train_clips]}; validation person: {val[0].stem}")

    t0 = time.perf_counter()
    train_dir = prepare_split(train_clips, args.out / "shards" / "train", args.frames, 256)
    val_dir = prepare_split(val, args.out / "shards" / "val", args.frames, 256)
    prep_s = time.perf_counter() - t0

    run_name = args.run_name or f"run_{args.backbone}_{args.size}"
    run_dir = args.out / run_name
    overrides = [
        f"model.backbone={args.backbone}", "model.pretrained=false", f"model.input_size={args.size}",
        f"data.image_size={args.size}", f"data.shards=[{train_dir}]", "data.frames_per_video=32",
        f"val.shards=[{val_dir}]", f"val.frames_per_video={args.frames}", "val.num_workers=0",
        f"train.epochs={args.epochs}", "train.freeze_backbone_epochs=0", "train.batch_pairs=8",
        "train.num_workers=1", "train.device=cpu", f"train.threads={args.threads}", f"train.out_dir={args.out}",
        f"train.run_name={run_name}",
        "optim.lr_start=2e-4", "optim.lr_peak=1e-3", "model.dropout=0.2", *args.overrides,
    ]
    cfg = load_config(REPO / "configs" / "demo_cpu.yaml", overrides)

    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(args.threads)
    loader, mode = build_val_loader(cfg)
    baseline = validate(build_model(cfg.model), loader, torch.device("cpu"))
    print(f"validation: {mode}")
    print(f"baseline (untrained network): frame AUC {baseline['auc_frame']:.4f} (heatmap peak "
          f"{baseline.get('auc_frame_hm_peak', float('nan')):.4f}) over {baseline['n_frames']:.0f} frames")

    budget = args.minutes * 60
    start = time.perf_counter()
    state = None
    if (run_dir / "last.pt").is_file():
        raise SystemExit(f"{run_dir}: a previous run is there; remove it (or continue it with train.py --resume)")
    while True:
        t = train(cfg, run_dir, resume_state=state, stop_after_epochs=1)
        h = t.history[-1]
        elapsed = time.perf_counter() - start
        print(f"epoch {h['epoch']:3d}  train loss {h['train_loss']:8.3f} (cls {h['train_loss_cls']:.3f})  "
              f"val frame AUC {h['val_auc_frame']:.4f} (heatmap peak {h.get('val_auc_frame_hm_peak', float('nan')):.4f})  "
              f"(video AUC over {h['val_n_videos']:.0f} videos {h['val_auc_video']:.2f})  "
              f"{h['train_images_per_s']:.2f} images/s  elapsed {elapsed / 60:.1f} min", flush=True)
        per_epoch = elapsed / len([x for x in t.history])
        if t.epoch >= cfg.train.epochs or elapsed + per_epoch > budget:
            break
        state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)

    history = t.history
    plot_auc(history, baseline, run_dir / "hdtf_auc.png",
             f"LAA-Net ({args.backbone}, {args.size} px, from scratch) on 5 HDTF people, CPU"
             + (f"\n{' '.join(args.overrides)}" if args.overrides else ""))
    best = max(history, key=lambda h: h["val_auc_frame"])
    ips = [h["train_images_per_s"] for h in history]
    summary = {"baseline_auc_frame": baseline["auc_frame"], "final_auc_frame": history[-1]["val_auc_frame"],
               "baseline_auc_frame_hm_peak": baseline.get("auc_frame_hm_peak"),
               "final_auc_frame_hm_peak": history[-1].get("val_auc_frame_hm_peak"),
               "config": {"backbone": args.backbone, "size": args.size, "epochs": args.epochs},
               "best_auc_frame": best["val_auc_frame"], "best_epoch": best["epoch"], "epochs_run": len(history),
               "epochs_planned": cfg.train.epochs, "train_images_per_s_median": sorted(ips)[len(ips) // 2],
               "train_minutes": (time.perf_counter() - start) / 60, "prep_minutes": prep_s / 60,
               "load_average": os.getloadavg()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"AUC (frame, held-out person vs its SBI fakes): {baseline['auc_frame']:.4f} untrained -> "
          f"{summary['final_auc_frame']:.4f} after {len(history)}/{cfg.train.epochs} epochs "
          f"(best {summary['best_auc_frame']:.4f} at epoch {best['epoch']}); training "
          f"{summary['train_images_per_s_median']:.2f} images/s (median epoch, data loading included); "
          f"{summary['train_minutes']:.1f} min training, {summary['prep_minutes']:.1f} min pipeline; "
          f"load average {summary['load_average']}")
    print(f"curves: {run_dir / 'curves.png'}, {run_dir / 'hdtf_auc.png'}")


if __name__ == "__main__":
    main()
