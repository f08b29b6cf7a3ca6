"""Evaluate a LAA-Net checkpoint on prepared test shards: metrics, curves, heatmap overlays, robustness.

    python evaluate.py --checkpoint runs/x/best.pt --dataset ffpp cdf2 --split test --out runs/x/eval
    python evaluate.py --checkpoint ckpt.pt --set mine=shards/mine_real,shards/mine_fake --out out/eval

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
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from model import cli as flags
from model.checkpoint import model_from_checkpoint, read_checkpoint, resolve_checkpoint
from model.data.datasets import EvalDataset, collate_eval
from model.data.face_scale import resolve_face_scale
from model.device import keep_freed_memory, select_amp, select_device
from model.eval import perturb, report
from model.eval.card import card_line, model_card, training_overlap
from model.eval.inference import choose_batch_size, run_dataset
from model.eval.metrics import compute_metrics
from model.eval.protocol import (
    EvaluationError,
    Scoring,
    TestSet,
    TestSetSpec,
    build_protocol,
    class_refusal,
    duplicate_video,
    faces_per_video,
    protocol_line,
    resolve_test_sets,
)
from model.eval.report import build_report, clean_json, draw_overlays, write_frame_scores, write_scores
from model.eval.robustness import run_robustness
from pipeline.crop import CROP_SCALE
from pipeline.errors import user_errors
from pipeline.files import atomic_write, file_sha256

EXAMPLES = """examples:
  python evaluate.py --checkpoint runs/x/best.pt --dataset ffpp cdf2 --split test --out runs/x/eval
  # your own real and fake videos (two pipeline folders) as ONE test set:
  python evaluate.py --checkpoint runs/x/best.pt --set mine=shards/mine_real,shards/mine_fake --out out/eval/mine
  python evaluate.py --checkpoint best.pt --shards shards/real shards/fake --merge --out out/eval/mine
  # real videos only: pair each with a synthetic blended fake
  python evaluate.py --checkpoint best.pt --shards shards/mine_real --synthetic-fakes sbi --out out/eval/sbi

A test set holding one class only (only real or only fake videos) is refused with one line; the run goes on
with the other sets and exits non-zero when no set could be evaluated.
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = flags.parser("python evaluate.py", __doc__.split("\n\n")[0], EXAMPLES)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint from train.py or a converted reference one (a run folder names the ones inside)")
    p.add_argument("--dataset", nargs="*", default=[],
                   help="dataset names: each --shards-root/NAME/--split is one test set (several: one table)")
    p.add_argument("--split", default="test", help="split of the --dataset names")
    p.add_argument("--shards-root", default="shards", help="where prepared shards live: <dataset>/<split>/index.json")
    p.add_argument("--shards", nargs="*", default=[],
                   help="ad-hoc split folders (each holds an index.json); each is one test set unless --merge")
    p.add_argument("--merge", action="store_true", help="evaluate all --shards folders as one test set")
    p.add_argument("--set", action="append", default=[], metavar="NAME=DIR[,DIR...]",
                   help="one test set named NAME made of these split folders (repeatable), e.g. "
                        "mine=shards/real,shards/fake")
    p.add_argument("--frames", type=int, default=32,
                   help="frames (faces) per video, evenly spaced among the stored ones (0 = all stored); the "
                        "report states how many were actually scored")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="flip test: average the cls logits of each face and its mirror")
    p.add_argument("--aggregate", choices=("logit-mean", "prob-mean"), default="logit-mean",
                   help="video score: sigmoid of the mean face logit, or the mean face probability")
    p.add_argument("--face-scale", type=flags.face_scale_arg, default="reference", help=flags.FACE_SCALE_HELP)
    p.add_argument("--perturb", nargs="*", default=[], help="robustness: 'all' or perturbation names")
    p.add_argument("--synthetic-fakes", choices=("sbi", "bi"), default=None,
                   help="pair every real face with a synthetic blended fake (for sets without fakes)")
    p.add_argument("--manifest", default="data_manifest.yaml",
                   help="dataset manifest: the protocol's compression comes from its datasets.<name>.compression")
    p.add_argument("--compression", default=None,
                   help="compression of the source videos, for the protocol (default: from --manifest, else "
                        "guessed from the video file names, e.g. c23, and marked so)")
    p.add_argument("--all-metrics", action="store_true",
                   help="also print the threshold metrics at 0.5 (Acc, AR, mF1, F1) and the frame-level AUC / AP "
                        "(metrics.json always holds them)")
    p.add_argument("--overlays", type=int, default=8, help="faces per overlay sheet (0: no overlays)")
    p.add_argument("--hm-range", type=flags.hm_range_arg, default="image", metavar="image|LO,HI",
                   help="colour range of the heatmap overlays: 'image' stretches each heatmap from its own min to "
                        "max (stated on its colour bar), LO,HI a fixed range of probabilities, e.g. 0,1")
    p.add_argument("--training-preview", default=None, metavar="PNG",
                   help="link this PNG (python -m model.data preview: the pairs the network trained on) in "
                        "report.md; copied into --out when it lies elsewhere")
    p.add_argument("--batch-size", type=int, default=0, help="faces per forward pass (0: chosen from the free memory)")
    flags.add_loader_workers(p, min(8, os.cpu_count() or 1), "reading and resizing faces (default: cores, at most 8)")
    flags.add_device_options(p, "off", "autocast precision (off: float32, the paper's numbers; auto: bf16 or fp16 on CUDA)")
    p.add_argument("--out", required=True, help="folder this command writes the report, scores and figures into")
    return p


# ----------------------------------------------------------------------------------------------- main
METRIC_DEFINITIONS = {
    "auc": "video-level ROC AUC (headline)", "ap": "video-level average precision",
    "eer": "video-level equal error rate", "acc": "video-level accuracy at 0.5",
    "ar": "balanced accuracy at 0.5 (the paper's AR as the reference code computes it)",
    "mf1": "harmonic mean of AP and AR (the paper's mF1 as the reference code computes it)",
    "f1": "standard F1 of the fake class at 0.5",
    "frame_auc": "frame-level ROC AUC", "frame_ap": "frame-level average precision",
}


def test_set_spec(args: argparse.Namespace) -> TestSetSpec:
    return TestSetSpec(datasets=tuple(args.dataset), split=args.split, shards_root=args.shards_root,
                       shards=tuple(args.shards), merge=args.merge, sets=tuple(args.set))


def main(args: argparse.Namespace) -> dict:
    try:  # reject bad names before any work
        perturbations = perturb.parse_names(args.perturb)
    except ValueError as e:
        raise EvaluationError(f"--perturb: {e}") from e
    if args.frames < 0:
        raise EvaluationError(f"--frames must be >= 0, got {args.frames}")
    ckpt_path = resolve_checkpoint(args.checkpoint)
    test_sets = resolve_test_sets(test_set_spec(args))
    preview = Path(args.training_preview) if args.training_preview else None
    if preview is not None and not preview.is_file():
        raise EvaluationError(f"--training-preview {preview}: no such file")
    out = Path(args.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)

    device = select_device(args.device)
    amp, _ = select_amp(args.amp, device)
    keep_freed_memory()
    scoring = Scoring(checkpoint=str(args.checkpoint), frames=args.frames, flip=args.flip, aggregate=args.aggregate,
                      synthetic_fakes=args.synthetic_fakes, compression=args.compression, manifest=args.manifest,
                      loader_workers=args.loader_workers, amp=amp)
    ckpt = read_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path).to(device).eval()
    sha = file_sha256(ckpt_path)
    card = model_card(ckpt, ckpt_path, sha)
    print(card_line(card), file=sys.stderr)
    batch_size = choose_batch_size(int(model.config.input_size), args.flip, device, args.batch_size)
    print(f"checkpoint {ckpt_path} sha256={sha[:12]} input {model.config.input_size}px on {device} "
          f"({scoring.precision}), batch {batch_size}{' (flip test: x2 images)' if args.flip else ''}", file=sys.stderr)

    results, per_set, curves, robustness, overlays, refused = {}, {}, {}, {}, [], {}
    for ts in test_sets:
        dataset, reason = _test_dataset(ts, scoring, args, int(model.config.input_size), sha)
        if reason:
            print(f"evaluate.py: {reason}; not evaluated", file=sys.stderr)
            refused[ts.name] = reason
            continue
        if seen := training_overlap(ckpt.get("config") or {}, ts.split_dirs):
            ts.protocol["WARNING test videos in the training shards"] = f"{len(seen)} (e.g. {seen[0]})"
            print(f"evaluate.py: WARNING: {ts.name}: {len(seen)} test videos are also in the checkpoint's "
                  f"training shards (e.g. {seen[0]})", file=sys.stderr)
        t0 = time.perf_counter()
        frames = run_dataset(model, dataset, batch_size, device, args.flip, collate_eval, args.loader_workers,
                             desc=ts.name, amp=amp)
        seconds = time.perf_counter() - t0
        video_metrics, per_method, videos = compute_metrics(frames, args.aggregate)
        per_set[ts.name] = (frames, videos)
        curves[ts.name] = (videos.label, videos.score)
        results[ts.name] = {"protocol": ts.protocol, "video": video_metrics, "per_method": per_method,
                            "faces_per_second": len(frames.logits) / max(seconds, 1e-9)}
        print(report.console_line(ts.name, video_metrics, args.all_metrics) + " | " + protocol_line(ts.protocol))
        overlays += _overlays(model, dataset, frames, videos, ts.name, device, args, amp, out)
        if perturbations:
            robustness[ts.name] = run_robustness(model, dataset, perturbations, video_metrics["auc"], batch_size,
                                                 device, scoring, ts.name)
            results[ts.name]["robustness"] = robustness[ts.name]
    if not results:
        raise EvaluationError("nothing could be evaluated: " + " | ".join(refused.values()))
    return _write_outputs(out, args, card, results, per_set, curves, robustness, overlays, refused, preview)


def _test_dataset(ts: TestSet, scoring: Scoring, args: argparse.Namespace, image_size: int, sha: str
                  ) -> tuple[EvalDataset | None, str | None]:
    """The faces of one test set with its protocol filled in, or the reason it cannot be scored."""
    ts.protocol = build_protocol(ts, scoring, image_size, sha)
    face_scale = resolve_face_scale(args.face_scale, crop_scale=float(ts.protocol["crop_scale"] or CROP_SCALE))
    ts.protocol["face_scale"] = f"{face_scale:.3f}x the face box ({args.face_scale})" if face_scale else \
        "the whole stored crop"
    ds_kwargs = {"synthetic_fakes": args.synthetic_fakes} if args.synthetic_fakes else {}
    dataset = EvalDataset([str(d) for d in ts.split_dirs], image_size, frames_per_video=args.frames or None,
                          face_scale=face_scale, **ds_kwargs)
    labels = {it.video_id: it.label for it in dataset.items}
    n_fake = sum(labels.values())
    n_real = len(labels) - n_fake
    reason = duplicate_video(ts.name, dataset) or \
        class_refusal(ts.name, n_real, n_fake, args.synthetic_fakes, len(args.shards) > 1 and not args.merge)
    if reason:
        return None, reason
    ts.protocol["videos"] = f"{n_real} real / {n_fake} fake"
    ts.protocol["frames_per_video"] = faces_per_video([it.video_id for it in dataset.items])
    if args.synthetic_fakes:
        ts.protocol["real faces without landmarks (no synthetic fake)"] = \
            dataset.skipped.get("frames_without_landmarks", 0)
    print("protocol: " + protocol_line(ts.protocol), file=sys.stderr)
    return dataset, None


def _overlays(model, dataset, frames, videos, name: str, device, args, amp, out: Path) -> list[Path]:
    if args.overlays <= 0:
        return []
    if "hm" not in model.heads:
        print(f"{name}: the checkpoint has no hm head, so no heatmap overlays", file=sys.stderr)
        return []
    prefix = name.replace("/", "_").replace(",", "+")
    return draw_overlays(model, dataset, frames, videos, args.overlays, device, args.flip, out / "overlays", prefix,
                         amp=amp, hm_range=args.hm_range)


def _write_outputs(out: Path, args, card, results, per_set, curves, robustness, overlays, refused, preview) -> dict:
    """metrics.json, scores.csv, frame_scores.csv, report.md and the figures; returns the summary."""
    report.plot_curves(curves, out / "roc.png", out / "pr.png")
    if robustness:
        report.plot_robustness(robustness, out / "robustness.png")
    if preview is not None and out.resolve() not in preview.resolve().parents:
        shutil.copy2(preview, out / preview.name)
        preview = out / preview.name
    write_scores(out / "scores.csv", per_set)
    write_frame_scores(out / "frame_scores.csv", per_set)
    summary = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
               "model": card, "metric_definitions": METRIC_DEFINITIONS, "test_sets": results,
               "not_evaluated": refused}
    atomic_write(out / "metrics.json", json.dumps(clean_json(summary), indent=1))
    md = build_report(results, robustness, overlays, out, all_metrics=args.all_metrics, refused=refused,
                      training_preview=preview, card=card)
    atomic_write(out / "report.md", md)
    print("\n" + md)
    print(f"report: {out / 'report.md'} (metrics.json, scores.csv, roc.png, pr.png"
          f"{', robustness.png' if robustness else ''}, overlays/)")
    return summary


def cli(argv: list[str] | None = None) -> None:
    """``python evaluate.py``: config, data and checkpoint errors (UserError) end as one line and exit 1
    (``LAANET_DEBUG=1``: traceback); anything else keeps its traceback."""
    args = get_args_parser().parse_args(argv)
    with user_errors("evaluate.py"):
        main(args)



if __name__ == "__main__":
    cli()
