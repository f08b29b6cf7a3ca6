"""Detection metrics and frame-to-video score aggregation.

The ranking metrics (ROC, AUC, AP, precision-recall) are scikit-learn's; this module adds the input
checks, NaN for a set with one class, the EER, the paper's AR / mF1 definitions and the video aggregation.
Conventions:

- ``labels``: (N,) ints, 1 = fake (the positive class), 0 = real.
- ``scores``: (N,) floats, larger = more likely fake (probabilities or logits; the ranking metrics only look
  at the order, the thresholded ones assume probabilities and a 0.5 threshold).

Metric names as reported:

- ``auc``: area under the ROC curve (ties count one half, as in the Mann-Whitney statistic).
- ``ap``: average precision, the step-wise sum ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds
  (no interpolation; the same definition as scikit-learn's ``average_precision_score``).
- ``eer``: equal error rate, where the false-positive rate equals the false-negative rate, linearly
  interpolated between the two ROC points that bracket the crossing.
- ``acc``: accuracy at threshold 0.5.
- ``ar``: the LAA-Net paper's "AR", which the reference implementation computes as the balanced accuracy
  at 0.5, i.e. the mean of the true-positive and true-negative rates.
- ``mf1``: the paper's "mF1", computed by the reference implementation as the harmonic mean of ``ap`` and
  ``ar`` (it is not an F1 score in the usual sense).
- ``f1``: the standard F1 score of the fake class at 0.5 (harmonic mean of precision and recall).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn import metrics as skm

if TYPE_CHECKING:
    from model.eval.inference import FrameResults

AGGREGATIONS = ("logit-mean", "prob-mean")


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any()) and bool((1 - y).any())


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score, starting at (0, 0) with threshold +inf (scikit-learn's
    ``roc_curve`` without dropping points). Returns (fpr, tpr, thresholds); positive when score >= threshold."""
    y, s = _check(labels, scores)
    if not _both_classes(y):
        raise ValueError("the ROC curve needs both real and fake samples")
    return skm.roc_curve(y, s, drop_intermediate=False)


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``); NaN with one class."""
    y, s = _check(labels, scores)
    return float(skm.roc_auc_score(y, s)) if _both_classes(y) else float("nan")


def precision_recall_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score (scikit-learn's ``precision_recall_curve``, whose last
    point is (precision 1, recall 0)). Returns (precision, recall, thresholds)."""
    y, s = _check(labels, scores)
    if not y.any():
        raise ValueError("the precision-recall curve needs at least one fake sample")
    return skm.precision_recall_curve(y, s)


def average_precision(labels, scores) -> float:
    """Step-wise average precision ``sum_n (R_n - R_{n-1}) P_n`` (scikit-learn's ``average_precision_score``);
    NaN without any fake sample."""
    y, s = _check(labels, scores)
    return float(skm.average_precision_score(y, s)) if y.any() else float("nan")


def equal_error_rate(labels, scores) -> float:
    """Rate where false positives equal false negatives, interpolated on the ROC curve; NaN with one class.

    Between consecutive ROC points (fpr_i, fnr_i) and (fpr_j, fnr_j) that bracket fnr - fpr = 0, the
    crossing is found by linear interpolation of both rates (they are equal there).
    """
    y, _ = _check(labels, scores)
    if not _both_classes(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # starts at 1 (threshold +inf), ends at -1 (everything called fake)
    j = int(np.argmax(diff <= 0))
    if diff[j] == 0:
        return float(fpr[j])
    i = j - 1
    t = diff[i] / (diff[i] - diff[j])
    return float(fpr[i] + t * (fpr[j] - fpr[i]))


def threshold_metrics(labels, probs, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy ("AR"), precision, recall and F1 at ``threshold`` on probabilities."""
    y, p = _check(labels, probs)
    pred = (p >= threshold).astype(np.int64)
    tp = int(np.sum((pred == 1) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    n_pos, n_neg = tp + fn, tn + fp
    tpr = tp / n_pos if n_pos else float("nan")
    tnr = tn / n_neg if n_neg else float("nan")
    precision = tp / (tp + fp) if (tp + fp) else 0.0
    recall = tpr
    if n_pos and (precision + recall) > 0:
        f1 = 2 * precision * recall / (precision + recall)
    else:
        f1 = 0.0 if n_pos else float("nan")
    return {
        "acc": (tp + tn) / len(y) if len(y) else float("nan"),
        "ar": float(np.nanmean([tpr, tnr])) if n_pos or n_neg else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tpr": tpr,
        "tnr": tnr,
    }


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b); 0 when both are 0, NaN when either is NaN."""
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def binary_metrics(labels, probs, threshold: float = 0.5) -> dict[str, float]:
    """All reported metrics for one set of (label, fake probability) pairs.

    Returns a dict with ``auc, ap, eer, acc, ar, mf1, f1, precision, recall, n, n_real, n_fake``
    (see the module docstring for the definitions).
    """
    y, p = _check(labels, probs)
    out = {"auc": roc_auc(y, p), "ap": average_precision(y, p), "eer": equal_error_rate(y, p)}
    t = threshold_metrics(y, p, threshold)
    out.update(acc=t["acc"], ar=t["ar"], f1=t["f1"], precision=t["precision"], recall=t["recall"])
    out["mf1"] = harmonic_mean(out["ap"], out["ar"])
    out.update(n=int(len(y)), n_real=int((y == 0).sum()), n_fake=int((y == 1).sum()))
    return {k: (float(v) if isinstance(v, float) else v) for k, v in out.items()}


def sigmoid(x) -> np.ndarray:
    """Numerically stable logistic function on an array."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


@dataclass
class VideoScores:
    """Per-video scores after aggregation; all arrays (V,), in order of first appearance."""

    video_id: list[str]
    method: list[str]
    label: np.ndarray
    score: np.ndarray  # fake probability of the video
    n_frames: np.ndarray


def aggregate_videos(video_ids, methods, labels, frame_logits, mode: str = "logit-mean") -> VideoScores:
    """Frame logits (N,) -> one fake probability per video.

    Videos are keyed by ``(method, video_id)``, so two videos that share a name under different
    manipulation methods (FF++ reuses the target id) stay apart. ``mode``:
    ``logit-mean`` = sigmoid of the mean frame logit (the reference behaviour, the default);
    ``prob-mean`` = mean of the frame probabilities.
    A video whose frames disagree on the label is an error (it would mean two videos share a key).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose from {AGGREGATIONS}")
    logits = np.asarray(frame_logits, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(np.int64).ravel()
    if not (len(video_ids) == len(methods) == len(labels) == len(logits)):
        raise ValueError("video_ids, methods, labels and frame_logits must have the same length")
    keys: dict[tuple[str, str], int] = {}
    row = np.empty(len(logits), dtype=np.int64)
    for i, key in enumerate(zip(methods, video_ids)):
        row[i] = keys.setdefault(key, len(keys))
    n_videos = len(keys)
    counts = np.bincount(row, minlength=n_videos)
    values = logits if mode == "logit-mean" else sigmoid(logits)
    mean = np.bincount(row, weights=values, minlength=n_videos) / np.maximum(counts, 1)
    score = sigmoid(mean) if mode == "logit-mean" else mean
    label = np.full(n_videos, -1, dtype=np.int64)
    for r, lab in zip(row, labels):
        if label[r] not in (-1, lab):
            method, vid = list(keys)[r]
            raise ValueError(f"video {method}/{vid} has frames with both labels")
        label[r] = lab
    ordered = list(keys)
    return VideoScores(
        video_id=[k[1] for k in ordered],
        method=[k[0] for k in ordered],
        label=label,
        score=score,
        n_frames=counts,
    )


def compute_metrics(frames: FrameResults, aggregate: str) -> tuple[dict, dict, object]:
    """Video-level metrics (plus frame AUC / AP) overall and per manipulation method.

    Returns (metrics, per_method, videos): videos are the aggregated ``model.eval.metrics.VideoScores``;
    per_method maps each fake method to the metrics of the set
    "real videos + that method's fakes" (the FF++ per-manipulation protocol); empty when there is only
    one fake method or no real video.
    """
    videos = aggregate_videos(frames.video_ids, frames.methods, frames.labels, frames.logits, aggregate)
    out = binary_metrics(videos.label, videos.score)
    frame_probs = sigmoid(frames.logits)
    out["frame_auc"] = roc_auc(frames.labels, frame_probs)
    out["frame_ap"] = average_precision(frames.labels, frame_probs)
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
            pm = binary_metrics(videos.label[vsel], videos.score[vsel])
            pm["frame_auc"] = roc_auc(frames.labels[fsel], frame_probs[fsel])
            pm["frame_ap"] = average_precision(frames.labels[fsel], frame_probs[fsel])
            pm["n_videos"] = int(vsel.sum())
            per_method[m] = pm
    return out, per_method, videos
