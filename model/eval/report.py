"""Evaluation report: markdown tables, ROC / PR curves, robustness plot and heatmap overlays.

Pure presentation: every function takes numbers or images that the evaluator already computed and writes
text or PNG files. Matplotlib runs on the non-interactive Agg backend (no display needed).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from model.data.tensors import tensor_to_uint8
from model.eval import metrics
from model.eval.inference import FrameResults, score_faces
from pipeline.files import atomic_path

# Columns of the main table: (key in the metrics dict, header, is a percentage).
METRIC_COLUMNS = (
    ("auc", "AUC", True),
    ("ap", "AP", True),
    ("eer", "EER", True),
    ("acc", "Acc@0.5", True),
    ("ar", "AR", True),
    ("mf1", "mF1", True),
    ("f1", "F1", True),
    ("frame_auc", "frame AUC", True),
    ("frame_ap", "frame AP", True),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt(value, percent: bool = True) -> str:
    """A metric as text: percentages with two decimals, NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.2f}" if percent else str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table from a header and rows of strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# Printed and tabled unless --all-metrics: the ranking metrics that need both classes.
HEADLINE = ("auc", "ap", "eer")


def metric_columns(all_metrics: bool = False) -> tuple:
    """METRIC_COLUMNS to show: the headline ones, or all (threshold and frame-level ones too)."""
    return METRIC_COLUMNS if all_metrics else tuple(c for c in METRIC_COLUMNS if c[0] in HEADLINE)


def videos_cell(n_real: int, n_fake: int) -> str:
    return f"{n_real} real / {n_fake} fake"


def console_line(name: str, m: dict, all_metrics: bool = False) -> str:
    """One line of results for the console: the set, its real / fake videos and faces, then the metrics."""
    values = " ".join(f"{h} {fmt(m.get(k), pct)}" for k, h, pct in metric_columns(all_metrics))
    return f"{name}: {videos_cell(m['n_real'], m['n_fake'])} videos, {m['n_faces']} faces: video {values}"


def metrics_table(entries: list[dict], all_metrics: bool = False) -> str:
    """Main results table, one row per (dataset, subset).

    Each entry: ``{"name": str, "metrics": {auc, ap, ...}, "n_videos": int, "n_real": int, "n_fake": int}``.
    Metrics are video-level except the two frame-level columns (shown with ``all_metrics``); values in percent.
    """
    columns = metric_columns(all_metrics)
    header = ["test set", "videos"] + [h + " %" for _, h, _ in columns]
    rows = []
    for e in entries:
        m = e["metrics"]
        rows.append([e["name"], videos_cell(e["n_real"], e["n_fake"])]
                    + [fmt(m.get(k), pct) for k, _, pct in columns])
    return markdown_table(header, rows)


def protocol_table(protocols: dict[str, dict]) -> str:
    """The protocol as a table with one row per field and one column per test set (fields are many)."""
    keys: list[str] = []
    for p in protocols.values():
        keys += [k for k in p if k not in keys]

    def cell(v) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k}: {x}" for k, x in v.items()) or "none"
        return "-" if v is None else str(v)

    rows = [[k] + [cell(p.get(k)) for p in protocols.values()] for k in keys]
    return markdown_table(["protocol"] + list(protocols), rows)


def robustness_table(robustness: dict[str, dict]) -> str:
    """Video AUC (%) per perturbation (rows) and level (columns), with the clean AUC and the row mean.

    ``robustness``: ``{test set: {"clean": auc, "perturbations": {name: [auc level1..5]}}}``.
    """
    from model.eval import perturb

    header = ["test set", "perturbation", "clean"] + [f"level {lv}" for lv in perturb.LEVELS] + ["mean"]
    rows = []
    for dataset, r in robustness.items():
        for name, aucs in r["perturbations"].items():
            mean = float(np.nanmean(aucs)) if len(aucs) else float("nan")
            rows.append(
                [dataset, perturb.LABELS.get(name, name), fmt(r["clean"])] + [fmt(a) for a in aucs] + [fmt(mean)]
            )
    return markdown_table(header, rows)


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], roc_path: Path, pr_path: Path) -> None:
    """ROC and precision-recall curves (video level), one line per test set.

    ``curves``: ``{name: (labels (V,), fake probabilities (V,))}``; sets with one class only are skipped.
    """
    plt = _pyplot()
    fig_roc, ax_roc = plt.subplots(figsize=(5, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(5, 5))
    for name, (labels, scores) in curves.items():
        labels = np.asarray(labels)
        if labels.min() == labels.max():
            continue
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {100 * metrics.roc_auc(labels, scores):.2f})")
        precision, recall, _ = metrics.precision_recall_curve(labels, scores)
        # scikit-learn's curve runs from recall 1 down to (recall 0, precision 1); AP integrates it as steps.
        ax_pr.step(recall, precision, where="post",
                   label=f"{name} (AP {100 * metrics.average_precision(labels, scores):.2f})")
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax_roc.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)",
               title="ROC, video level", xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="recall (fake)", ylabel="precision (fake)", title="Precision-recall, video level",
              xlim=(0, 1), ylim=(0, 1.01))
    for fig, ax, path in ((fig_roc, ax_roc, roc_path), (fig_pr, ax_pr, pr_path)):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def plot_robustness(robustness: dict[str, dict], path: Path) -> None:
    """Video AUC against perturbation level, one panel per test set, one line per perturbation type.

    Level 0 is the clean AUC, so every line starts from the same point.
    """
    from model.eval import perturb

    plt = _pyplot()
    n = max(1, len(robustness))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, (dataset, r) in zip(axes[0], robustness.items()):
        for name, aucs in r["perturbations"].items():
            ax.plot(range(len(aucs) + 1), 100 * np.r_[r["clean"], aucs], marker="o",
                    label=perturb.LABELS.get(name, name))
        ax.set(xlabel="severity level (0 = clean)", ylabel="video AUC %", title=f"Robustness: {dataset}")
        ax.set_xticks(range(len(perturb.LEVELS) + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def heatmap_range(heatmap: np.ndarray, fixed: tuple[float, float] | None) -> tuple[float, float]:
    """The colour range of one heatmap: ``fixed``, or its own min and max."""
    return fixed if fixed is not None else (float(np.min(heatmap)), float(np.max(heatmap)))


def heatmap_overlay(face: np.ndarray, heatmap: np.ndarray, lo: float = 0.0, hi: float = 1.0,
                    alpha: float = 0.55) -> np.ndarray:
    """Predicted heatmap drawn over the face.

    face: (S, S, 3) uint8 RGB; heatmap: (h, w) probabilities (sigmoid of the hm head), upsampled bilinearly
    to S x S, mapped from [lo, hi] to [0, 1] and coloured with matplotlib's "jet" (red = likely blending
    artefact; the colour bar of `save_overlay_sheet` uses the same map and range). The colour is weighted by
    the mapped value, so cold regions keep the face visible; a flat map (hi - lo < 1e-6) adds no colour.
    Returns (S, S, 3) uint8 RGB.
    """
    import matplotlib

    s_h, s_w = face.shape[:2]
    hm = cv2.resize(np.asarray(heatmap, np.float32), (s_w, s_h), interpolation=cv2.INTER_LINEAR)
    t = np.clip((hm - lo) / (hi - lo), 0, 1) if hi - lo >= 1e-6 else np.zeros_like(hm)
    colour = 255.0 * matplotlib.colormaps["jet"](t)[..., :3]
    w = (alpha * t)[..., None]
    return np.clip(np.rint(face * (1 - w) + colour * w), 0, 255).astype(np.uint8)


def cut_left(text: str, max_chars: int) -> str:
    """``text`` as is when it fits in ``max_chars``, else its end behind an ellipsis (names differ at the end)."""
    return text if len(text) <= max_chars else "\u2026" + text[-(max_chars - 1):]


@dataclass
class OverlayItem:
    """One panel pair of an overlay sheet: the face crop, its predicted heatmap, a name (cut from the left
    only when it does not fit) and a caption."""

    face: np.ndarray  # (S, S, 3) uint8 RGB
    heatmap: np.ndarray  # (h, w) float in [0, 1]
    caption: str
    name: str = ""


PANEL_INCHES, CAPTION_PT = 2.3, 7


def save_overlay_sheet(items: list[OverlayItem], path: Path, title: str, columns: int = 4,
                       hm_range: tuple[float, float] | None = None) -> None:
    """A grid of face / heatmap-overlay pairs saved as one PNG. Each overlay has a colour bar with its range
    (``hm_range`` fixed, or per image: its own min..max) and its caption states the heatmap max; the layout
    leaves room for the captions (constrained layout), and names are cut from the left only when too long
    for the width of the pair."""
    plt = _pyplot()
    import matplotlib

    if not items:
        raise ValueError(f"no faces to draw for {path}")
    cols = min(columns, len(items))
    rows = math.ceil(len(items) / cols)
    caption_lines = max(2 + item.caption.count("\n") + bool(item.name) for item in items)
    caption_in = caption_lines * CAPTION_PT * 1.35 / 72
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(PANEL_INCHES * 2.2 * cols, (PANEL_INCHES + caption_in) * rows
                                                       + 0.5), squeeze=False, layout="constrained")
    max_chars = int(2 * PANEL_INCHES * 72 / (CAPTION_PT * 0.62))
    for ax in axes.ravel():
        ax.axis("off")
    cmap = matplotlib.colormaps["jet"]
    for i, item in enumerate(items):
        r, c = divmod(i, cols)
        lo, hi = heatmap_range(item.heatmap, hm_range)
        ax_face, ax_hm = axes[r, 2 * c], axes[r, 2 * c + 1]
        ax_face.imshow(item.face)
        ax_hm.imshow(heatmap_overlay(item.face, item.heatmap, lo, hi))
        scale = "fixed range" if hm_range is not None else "range of this map"
        digits = min(6, max(3, math.ceil(-math.log10(hi - lo)) + 1)) if hi > lo else 3  # tell lo and hi apart
        lines = ([cut_left(item.name, max_chars)] if item.name else []) + [item.caption] + \
            [f"hm max {float(np.max(item.heatmap)):.{digits}f}, colours: {scale} {lo:.{digits}f}..{hi:.{digits}f}"]
        ax_face.set_title("\n".join(lines), fontsize=CAPTION_PT, loc="left")
        norm = matplotlib.colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax_hm, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pick_overlay_faces(frames: FrameResults, videos, k: int) -> dict[str, list[tuple[int, str]]]:
    """Dataset indices of faces to draw: ``{sheet: [(face index, name, caption), ...]}``.

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
            name = f"{videos.video_id[v].split('/', 1)[-1]} f{frames.frame_index[face]}"  # no dataset prefix
            caption = f"label {'fake' if videos.label[v] else 'real'}, video p={videos.score[v]:.3f}"
            sheets[sheet].append((face, name, caption))
    return sheets


def draw_overlays(model, dataset, frames: FrameResults, videos, k: int, device, flip: bool, out_dir: Path,
                  prefix: str, amp=None, hm_range: tuple[float, float] | None = None) -> list[Path]:
    """Heatmap overlay sheets for one test set (colours: ``hm_range`` or per image); returns the PNGs written."""
    import torch

    written = []
    for sheet, picks in pick_overlay_faces(frames, videos, k).items():
        if not picks:
            continue
        items = [dataset[i] for i, _, _ in picks]
        images = torch.stack([it["image"] for it in items]).to(device)
        _, hm = score_faces(model, images, flip=flip, want_heatmap=True, amp=amp)
        probs = torch.sigmoid(hm.float())[:, 0].cpu().numpy()
        panels = [OverlayItem(tensor_to_uint8(it["image"]), p, cap, name)
                  for it, p, (_, name, cap) in zip(items, probs, picks)]
        path = out_dir / f"{prefix}_{sheet}.png"
        save_overlay_sheet(panels, path, f"{prefix}: {sheet.replace('_', ' ')} (predicted heatmap over the face)",
                           hm_range=hm_range)
        written.append(path)
    return written


def write_scores(path: Path, per_set: dict[str, tuple]) -> None:
    """scores.csv: one row per video (test set, video id, label, method, score = fake probability at full
    precision, so metrics recomputed from the file equal the report's, n_frames)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test_set", "video_id", "label", "method", "score", "n_frames"])
        for name, (_, videos) in per_set.items():
            for vid, lab, m, s, n in zip(videos.video_id, videos.label, videos.method, videos.score, videos.n_frames):
                w.writerow([name, vid, int(lab), m, repr(float(s)), int(n)])


def write_frame_scores(path: Path, per_set: dict[str, tuple]) -> None:
    """frame_scores.csv: one row per face (test set, video id, method, frame index, label, cls logit)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test_set", "video_id", "method", "frame_index", "label", "logit"])
        for name, (frames, _) in per_set.items():
            for vid, m, fi, lab, lg in zip(frames.video_ids, frames.methods, frames.frame_index, frames.labels,
                                           frames.logits):
                w.writerow([name, vid, m, int(fi), int(lab), repr(float(lg))])


def clean_json(obj):
    """JSON-safe copy: NaN -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def build_report(results: dict, robustness: dict, overlay_paths: list[Path], out: Path, all_metrics: bool = False,
                 refused: dict[str, str] | None = None, training_preview: Path | None = None,
                 card: dict | None = None) -> str:
    """report.md: results table (video level unless marked), per-method breakdown, sets not evaluated and why,
    protocol, curves, robustness, overlays and (``training_preview``, a PNG under ``out``) the training pairs."""
    entries = []
    for name, r in results.items():
        v = r["video"]
        entries.append({"name": name, "metrics": v, "n_videos": v["n_videos"], "n_real": v["n_real"],
                        "n_fake": v["n_fake"]})
        for m, pm in r["per_method"].items():
            entries.append({"name": f"{name} / {m}", "metrics": pm, "n_videos": pm["n_videos"],
                            "n_real": pm["n_real"], "n_fake": pm["n_fake"]})
    note = ("Video level unless marked frame. AR = balanced accuracy at 0.5 and mF1 = harmonic mean of AP and "
            "AR (the paper's definitions as its reference code computes them); F1 is the standard F1 of the fake "
            "class." if all_metrics else
            "Video level. Threshold metrics (Acc, AR, mF1, F1) and frame-level AUC / AP: `--all-metrics` "
            "(always in metrics.json).")
    parts = [
        "# Evaluation report\n",
        "## Results\n",
        metrics_table(entries, all_metrics),
        f"\n{note} Rows `set / Method` hold the real videos and that method's fakes.\n",
    ]
    if card is not None:
        from model.eval.card import card_markdown

        parts += ["\n## Model\n", card_markdown(card)]
    if refused:
        parts += ["\n## Not evaluated\n"] + [f"- {reason}\n" for reason in refused.values()]
    parts += [
        "\n## Protocol\n",
        "`frames_per_video`: faces per video actually scored (median, min, max); `frames_per_video_stored`: "
        "faces in the shards; `frames_per_video_requested`: `--frames`.\n",
        protocol_table({n: r["protocol"] for n, r in results.items()}),
        "\n## Curves\n",
        "![ROC](roc.png) ![PR](pr.png)\n",
    ]
    if robustness:
        parts += ["\n## Robustness (video AUC %, perturbations applied to the face crops)\n",
                  robustness_table(robustness), "\n![robustness](robustness.png)\n"]
    if overlay_paths:
        parts += ["\n## Heatmap overlays\n"] + [f"![{p.stem}]({p.relative_to(out).as_posix()})\n"
                                                 for p in overlay_paths]
    if training_preview is not None:
        rel = Path(training_preview).resolve().relative_to(Path(out).resolve()).as_posix()
        parts += ["\n## What the network trained on\n",
                  "Training pairs as the training config synthesises them (`python -m model.data preview`): "
                  "real face, its pseudo-fake, the blending mask and the boundary, heatmap and "
                  "consistency targets.\n", f"![training pairs]({rel})\n"]
    return "\n".join(parts)
