"""LAA-Net losses: heatmap focal loss, self-consistency loss, classification loss.

    L = lambda_cls * L_cls + lambda_hm * L_hm + lambda_c * L_c
Paper weights (default): lambda_hm = 10, lambda_c = 100. The reference implementation's SBI config:
lambda_hm = 100, lambda_c = 100 and a positive-term factor 0.72 in the focal loss
(``LossConfig.reference()``). Losses compute in at least float32 whatever the autocast dtype of the
outputs (float64 stays float64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.config import LossConfig


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in float32, or float64 if it already is (bf16/fp16 autocast outputs are widened)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


# sigmoid(hm) is clamped to [HM_EPS, 1 - HM_EPS] before the logs, as in CornerNet / CenterNet.
HM_EPS = 1e-4


def heatmap_focal_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """CornerNet/CenterNet focal loss.

    Args:
        logits: (B, 1, h, w) heatmap logits.
        target: (B, 1, h, w) Gaussian heatmap in [0, 1]; positives are the pixels where it equals 1.
        pos_weight: factor on the positive term.
    Returns:
        scalar: -(pos_weight * sum_pos (1-p)^2 log p + sum_neg (1-H)^4 p^2 log(1-p)) / n_pos over the
        batch, p = clamp(sigmoid(logits)); not divided when the batch has no positive.
    """
    p = torch.sigmoid(_wide(logits)).clamp(HM_EPS, 1 - HM_EPS)
    target = target.to(p.dtype)
    pos = target.eq(1).to(p.dtype)
    neg = 1.0 - pos
    pos_term = (torch.log(p) * (1 - p).pow(2) * pos).sum()
    neg_term = (torch.log(1 - p) * p.pow(2) * (1 - target).pow(4) * neg).sum()
    n_pos = pos.sum().clamp(min=1.0)  # no division when there is no positive
    return -(pos_weight * pos_term + neg_term) / n_pos


def consistency_loss(emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Self-consistency loss.

    Args:
        emb: (B, D, h, w) raw per-pixel embeddings f.
        target: (B, h, w) consistency map C in [0, 1].
    Returns:
        scalar: mean over batch and pixels of BCE(sigmoid(<f_a, f_uv> / sqrt(D)), C_uv), where a is the
        argmax of C per image (the first pixel when C is constant, e.g. all zero on real images).
    """
    b, d, h, w = emb.shape
    f = _wide(emb).flatten(2)  # (B, D, hw)
    c = target.to(f.dtype).reshape(b, h * w)
    anchor = c.argmax(dim=1)  # (B,)
    f_a = f.gather(2, anchor.view(b, 1, 1).expand(b, d, 1))  # (B, D, 1)
    logits = (f_a * f).sum(dim=1) / math.sqrt(d)  # (B, hw)
    return F.binary_cross_entropy_with_logits(logits, c)


def classification_loss(logits: torch.Tensor, label: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """BCE on the image logit.

    Args:
        logits: (B, 1) or (B,) logits.
        label: (B,) 0 real / 1 fake.
        smoothing: s, targets become y (1 - s) + s / 2.
    Returns:
        scalar mean BCE.
    """
    z = _wide(logits).reshape(-1)
    y = label.to(z.dtype).reshape(-1)
    if smoothing:
        y = y * (1 - smoothing) + 0.5 * smoothing
    return F.binary_cross_entropy_with_logits(z, y)


class LAALoss:
    """Total LAA-Net loss: ``LAALoss(cfg)(outputs, batch) -> (total, terms)``.

    outputs: the model's dict (``cls`` (B, 1), ``hm`` (B, 1, h, w), ``cstency`` (B, D, h, w)); a head
    that is absent contributes nothing. batch: ``label`` (B,), ``heatmap`` (B, 1, h, w),
    ``consistency`` (B, h, w). terms: the unweighted, detached losses of the present heads.
    """

    def __init__(self, cfg: LossConfig | None = None):
        self.cfg = cfg or LossConfig()

    def __call__(self, outputs: dict[str, torch.Tensor],
                 batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        parts: list[tuple[float, str, torch.Tensor]] = []
        if "cls" in outputs:
            parts.append((cfg.lambda_cls, "cls",
                          classification_loss(outputs["cls"], batch["label"], cfg.cls_label_smoothing)))
        if "hm" in outputs:
            parts.append((cfg.lambda_hm, "hm",
                          heatmap_focal_loss(outputs["hm"], batch["heatmap"], cfg.hm_pos_weight)))
        if "cstency" in outputs:
            parts.append((cfg.lambda_c, "cstency", consistency_loss(outputs["cstency"], batch["consistency"])))
        if not parts:
            raise ValueError(f"no known head in outputs (keys {sorted(outputs)})")
        total = sum(weight * value for weight, _, value in parts)
        return total, {name: value.detach() for _, name, value in parts}
