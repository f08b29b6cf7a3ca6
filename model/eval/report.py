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

from model.data.datasets import tensor_to_uint8
from model.eval import metrics
from model.eval.inference import FrameResults, score_faces

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


def metrics_table(entries: list[dict]) -> str:
    """Main results table, one row per (dataset, subset).

    Each entry: ``{"name": str, "metrics": {auc, ap, ...}, "n_videos": int, "n_real": int, "n_fake": int}``.
    Metrics are video-level except the two frame-level columns; values are in percent.
    """
    header = ["test set", "videos (real/fake)"] + [h + " %" for _, h, _ in METRIC_COLUMNS]
    rows = []
    for e in entries:
        m = e["metrics"]
        rows.append(
            [e["name"], f"{e['n_videos']} ({e['n_real']}/{e['n_fake']})"]
            + [fmt(m.get(k), pct) for k, _, pct in METRIC_COLUMNS]
        )
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


def heatmap_overlay(face: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Predicted heatmap drawn over the face.

    face: (S, S, 3) uint8 RGB; heatmap: (h, w) probabilities in [0, 1] (sigmoid of the hm head), upsampled
    bilinearly to S x S and coloured with the JET map (red = likely blending artefact).
    Returns (S, S, 3) uint8 RGB.
    """
    s_h, s_w = face.shape[:2]
    hm = cv2.resize(np.clip(heatmap, 0, 1).astype(np.float32), (s_w, s_h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap(np.rint(255 * hm).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    # Weight the colour by the absolute heatmap (full weight from 0.5 up), so cold regions keep the face
    # visible and an uninformative flat map stays faint instead of being stretched to look confident.
    w = (alpha * np.clip(2.0 * hm, 0, 1))[..., None]
    return np.clip(face * (1 - w) + colour * w, 0, 255).astype(np.uint8)


@dataclass
class OverlayItem:
    """One panel of an overlay sheet: the face crop, its predicted heatmap and a caption."""

    face: np.ndarray  # (S, S, 3) uint8 RGB
    heatmap: np.ndarray  # (h, w) float in [0, 1]
    caption: str


def save_overlay_sheet(items: list[OverlayItem], path: Path, title: str, columns: int = 4) -> None:
    """A grid of face / heatmap-overlay pairs with captions, saved as one PNG."""
    plt = _pyplot()
    if not items:
        raise ValueError(f"no faces to draw for {path}")
    cols = min(columns, len(items))
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.3 * 2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, item in enumerate(items):
        r, c = divmod(i, cols)
        axes[r, 2 * c].imshow(item.face)
        axes[r, 2 * c + 1].imshow(heatmap_overlay(item.face, item.heatmap))
        axes[r, 2 * c].set_title(item.caption, fontsize=7, loc="left")
        axes[r, 2 * c + 1].set_title(f"hm max {float(item.heatmap.max()):.2f}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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

    from model.eval.report import OverlayItem, save_overlay_sheet

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


def build_report(results: dict, robustness: dict, overlay_paths: list[Path], out: Path) -> str:
    """report.md: results table (video level unless marked), per-method breakdown, protocol, robustness."""
    from model.eval import report

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
