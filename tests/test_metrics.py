"""Metrics against scikit-learn on fixed arrays, EER on known cases, video aggregation."""
import numpy as np
import pytest
from sklearn import metrics as skm

from model.eval import metrics


def _fixed_arrays():
    rng = np.random.default_rng(1234)
    labels = rng.integers(0, 2, size=200)
    # Overlapping classes plus deliberate ties (rounded scores) to exercise the tie handling.
    scores = np.round(np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0, 1), 2)
    return labels, scores


def test_auc_ap_match_sklearn():
    labels, scores = _fixed_arrays()
    assert metrics.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )


def test_roc_curve_matches_sklearn_points():
    labels, scores = _fixed_arrays()
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_threshold_metrics_match_sklearn():
    labels, scores = _fixed_arrays()
    pred = (scores >= 0.5).astype(int)
    m = metrics.binary_metrics(labels, scores)
    assert m["acc"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["ar"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, pred))
    ap = skm.average_precision_score(labels, scores)
    ar = skm.balanced_accuracy_score(labels, pred)
    assert m["mf1"] == pytest.approx(2 * ap * ar / (ap + ar))
    assert m["n"] == 200 and m["n_real"] + m["n_fake"] == 200


def test_eer_known_answers():
    # One real above and one fake below the crossing: at threshold 0.6 both error rates are 1/4.
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    assert metrics.equal_error_rate(labels, scores) == pytest.approx(0.25)
    # Perfect separation: no errors at the right threshold.
    assert metrics.equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.0)
    # Fully inverted scores: every threshold trades one error for the other; the crossing is at 1.
    assert metrics.equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(1.0)
    # Constant scores: the ROC is the diagonal, crossing at 1/2.
    assert metrics.equal_error_rate([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)


def test_eer_matches_roc_crossing_on_random_data():
    labels, scores = _fixed_arrays()
    eer = metrics.equal_error_rate(labels, scores)
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    # The EER lies between the two error rates at the last point where fnr > fpr and the first where not.
    j = int(np.argmax(fnr - fpr <= 0))
    lo, hi = sorted([fpr[j - 1], fpr[j]])
    assert lo - 1e-12 <= eer <= hi + 1e-12
    assert 0.2 < eer < 0.45


def test_single_class_gives_nan_not_crash():
    m = metrics.binary_metrics([0, 0, 0], [0.1, 0.6, 0.3])
    assert np.isnan(m["auc"]) and np.isnan(m["ap"]) and np.isnan(m["eer"])
    assert m["acc"] == pytest.approx(2 / 3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="length"):
        metrics.roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])


def test_aggregation_keeps_same_named_videos_under_different_methods_apart():
    # "000_003" exists as a Deepfakes and a Face2Face video; "000" is the original.
    vids = ["000_003", "000_003", "000_003", "000_003", "000", "000"]
    methods = ["Deepfakes", "Deepfakes", "Face2Face", "Face2Face", "original", "original"]
    labels = [1, 1, 1, 1, 0, 0]
    logits = np.array([2.0, 4.0, -1.0, 3.0, -2.0, 0.0])
    v = metrics.aggregate_videos(vids, methods, labels, logits)
    assert v.video_id == ["000_003", "000_003", "000"]
    assert v.method == ["Deepfakes", "Face2Face", "original"]
    np.testing.assert_array_equal(v.n_frames, [2, 2, 2])
    np.testing.assert_array_equal(v.label, [1, 1, 0])
    np.testing.assert_allclose(v.score, metrics.sigmoid(np.array([3.0, 1.0, -1.0])))


def test_prob_mean_differs_from_logit_mean():
    v_logit = metrics.aggregate_videos(["a", "a"], ["m", "m"], [1, 1], [-4.0, 4.0], mode="logit-mean")
    v_prob = metrics.aggregate_videos(["a", "a"], ["m", "m"], [1, 1], [-4.0, 2.0], mode="prob-mean")
    assert v_logit.score[0] == pytest.approx(0.5)
    expected = (metrics.sigmoid(np.array(-4.0)) + metrics.sigmoid(np.array(2.0))) / 2
    assert v_prob.score[0] == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="aggregation"):
        metrics.aggregate_videos(["a"], ["m"], [1], [0.0], mode="median")


def test_aggregation_rejects_mixed_labels_in_one_video():
    with pytest.raises(ValueError, match="both labels"):
        metrics.aggregate_videos(["a", "a"], ["m", "m"], [0, 1], [0.0, 0.0])


def test_sigmoid_is_stable():
    out = metrics.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])
    assert np.all(np.isfinite(out))
