"""LAA-Net losses on small hand-computed examples."""
import math

import pytest
import torch

from model.config import LossConfig
from model.train.losses import LAALoss, classification_loss, consistency_loss, heatmap_focal_loss

LN2 = math.log(2.0)


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_focal_loss_one_positive():
    # logits 0 -> p = 0.5 everywhere. Pixels: one positive (H = 1), H = 0.5, H = 0, H = 0.
    target = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    logits = torch.zeros_like(target)
    pos = 0.25 * LN2                   # -(1 - p)^2 log p
    neg_half = 0.5 ** 4 * 0.25 * LN2   # -(1 - H)^4 p^2 log(1 - p)
    neg_zero = 0.25 * LN2
    expected = pos + neg_half + 2 * neg_zero  # one positive: divided by 1
    assert heatmap_focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    expected_ref = 0.72 * pos + neg_half + 2 * neg_zero
    assert heatmap_focal_loss(logits, target, pos_weight=0.72).item() == pytest.approx(expected_ref, rel=1e-6)


def test_focal_loss_normalises_by_positives_in_batch_and_not_without():
    target = torch.zeros(2, 1, 2, 2)
    target[0, 0, 0, 0] = 1.0
    target[1, 0, 1, 1] = 1.0
    logits = torch.zeros_like(target)
    expected = (2 * 0.25 * LN2 + 6 * 0.25 * LN2) / 2
    assert heatmap_focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # no positive at all (real images): plain sum of the negative terms
    assert heatmap_focal_loss(logits, torch.zeros_like(target)).item() == pytest.approx(8 * 0.25 * LN2, rel=1e-6)


def test_focal_loss_clamps_probabilities():
    logits = torch.tensor([[[[100.0, -100.0]]]])
    target = torch.tensor([[[[0.0, 1.0]]]])
    p_hi, p_lo = 1 - 1e-4, 1e-4
    expected = -(p_hi ** 2 * math.log(1 - p_hi)) - (1 - p_lo) ** 2 * math.log(p_lo)
    assert heatmap_focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-4)


def test_consistency_loss_known_anchor():
    # D = 2, one image of 1 x 2 pixels: f0 = (1, 1), f1 = (2, -1); C = (0.2, 0.9) -> anchor is pixel 1.
    emb = torch.tensor([[[[1.0, 2.0]], [[1.0, -1.0]]]])
    target = torch.tensor([[[0.2, 0.9]]])
    z0 = (1 * 2 + 1 * -1) / math.sqrt(2)   # <f1, f0> / sqrt(D)
    z1 = (2 * 2 + -1 * -1) / math.sqrt(2)  # <f1, f1> / sqrt(D)
    expected = (bce(sig(z0), 0.2) + bce(sig(z1), 0.9)) / 2
    assert consistency_loss(emb, target).item() == pytest.approx(expected, rel=1e-6)


def test_consistency_loss_real_image_all_zero_target():
    # C = 0 everywhere: the anchor is the first pixel and every prediction is pushed to 0.
    emb = torch.tensor([[[[1.0, 0.0], [3.0, -2.0]]]])  # D = 1, 2 x 2
    z = [1.0 * v for v in (1.0, 0.0, 3.0, -2.0)]
    expected = sum(bce(sig(v), 0.0) for v in z) / 4
    assert consistency_loss(emb, torch.zeros(1, 2, 2)).item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_and_smoothing():
    assert classification_loss(torch.zeros(1, 1), torch.ones(1)).item() == pytest.approx(LN2, rel=1e-6)
    got = classification_loss(torch.tensor([[2.0]]), torch.ones(1), smoothing=0.1).item()
    assert got == pytest.approx(bce(sig(2.0), 0.95), rel=1e-6)


def test_total_loss_on_a_real_image_with_all_zero_targets():
    g = torch.Generator().manual_seed(0)
    outputs = {"cls": torch.randn(1, 1, generator=g), "hm": torch.randn(1, 1, 4, 4, generator=g),
               "cstency": torch.randn(1, 8, 4, 4, generator=g)}
    batch = {"label": torch.zeros(1), "heatmap": torch.zeros(1, 1, 4, 4), "consistency": torch.zeros(1, 4, 4)}
    cls = bce(sig(outputs["cls"].item()), 0.0)
    hm = 0.0
    for v in outputs["hm"].flatten().tolist():
        p = min(max(sig(v), 1e-4), 1 - 1e-4)
        hm += -(p ** 2) * math.log(1 - p)
    f = outputs["cstency"][0].reshape(8, 16)
    cst = sum(bce(sig(float(f[:, 0] @ f[:, j]) / math.sqrt(8)), 0.0) for j in range(16)) / 16
    for cfg in (LossConfig(), LossConfig.reference()):
        total, terms = LAALoss(cfg)(outputs, batch)
        assert terms["cls"].item() == pytest.approx(cls, rel=1e-5)
        assert terms["hm"].item() == pytest.approx(hm, rel=1e-5)
        assert terms["cstency"].item() == pytest.approx(cst, rel=1e-5)
        expected = cfg.lambda_cls * cls + cfg.lambda_hm * hm + cfg.lambda_c * cst
        assert total.item() == pytest.approx(expected, rel=1e-5)
    assert LossConfig().lambda_hm == 10 and LossConfig.reference().lambda_hm == 100


def test_absent_head_contributes_nothing_and_losses_are_float32_under_bf16():
    outputs = {"cls": torch.zeros(2, 1, dtype=torch.bfloat16, requires_grad=True)}
    total, terms = LAALoss()(outputs, {"label": torch.tensor([0.0, 1.0])})
    assert set(terms) == {"cls"} and total.dtype == torch.float32
    assert total.item() == pytest.approx(LN2, rel=1e-6)
    total.backward()
    assert outputs["cls"].grad is not None
    with pytest.raises(ValueError, match="no known head"):
        LAALoss()({}, {})


def test_float64_outputs_keep_float64():
    total, _ = LAALoss()({"cls": torch.zeros(1, 1, dtype=torch.float64)}, {"label": torch.ones(1)})
    assert total.dtype == torch.float64
