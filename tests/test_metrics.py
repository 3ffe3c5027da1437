import numpy as np
import pytest

from con2.metrics import (aupr, auroc, calibrate_threshold, detection_metrics, false_positive_rate,
                          fpr_at_tpr)


def test_perfect_and_reversed_rankings():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert auroc(y, s) == 1.0 and aupr(y, s) == 1.0 and fpr_at_tpr(y, s) == 0.0
    assert auroc(y, -s) == 0.0 and fpr_at_tpr(y, -s) == 1.0


def test_auroc_counts_pairs_and_ties():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.5, 0.5, 0.9])  # pairs: (0.5 vs 0.5) is a tie -> 0.5
    assert auroc(y, s) == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_fpr95_by_hand():
    # 20 anomalies: 95 % TPR = 19 of them; the 19th highest anomaly is at 1.0, above 2 of 10 normals
    y = np.r_[np.zeros(10), np.ones(20)]
    s = np.r_[np.arange(10) / 10 + 0.05, np.r_[0.0, np.full(19, 1.0)]]
    assert fpr_at_tpr(y, s, 0.95) == 0.0
    s[9] = 1.5  # one normal above every anomaly
    assert fpr_at_tpr(y, s, 0.95) == pytest.approx(0.1)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both"):
        auroc([0, 0], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([0, 1], [0.0, np.nan])
    with pytest.raises(ValueError, match="labels"):
        auroc([0, 2], [1, 2])
    with pytest.raises(ValueError, match="labels"):  # fractions are not truncated to 0
        auroc([0.5, 0.9, 1.0], [0.1, 0.5, 0.3])
    with pytest.raises(ValueError, match="labels"):
        auroc([0.0, np.nan, 1.0], [0.1, 0.5, 0.3])
    assert auroc([False, True], [0.1, 0.2]) == auroc(np.array([0.0, 1.0]), [0.1, 0.2]) == auroc(["0", "1"], [0.1, 0.2]) == 1.0


@pytest.mark.parametrize("n", [20, 101, 1000])
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_threshold_hits_target_fpr_on_calibration_data(n, target):
    scores = np.random.default_rng(n).normal(size=n)
    t = calibrate_threshold(scores, target)
    assert false_positive_rate(scores, t) == pytest.approx(np.floor(target * n + 1e-9) / n)
    assert false_positive_rate(scores, t) <= target


@pytest.mark.parametrize("scale", [1e-3, 1.0, 500.0])  # NND distances, LH negative log-likelihoods
def test_threshold_leaves_the_calibration_labels_to_float32_rounding(scale):
    """The threshold was a calibration score itself: that image, scored again in another batch
    (a ~1e-7 relative change), was flagged or not by chance."""
    rng = np.random.default_rng(1)
    scores = scale * rng.uniform(size=200)
    for target in (0.0, 0.05, 0.5):
        t = calibrate_threshold(scores, target)
        rounded = scores * (1 + rng.choice([-1.0, 1.0], size=scores.size) * 2e-7)
        assert false_positive_rate(rounded, t) == false_positive_rate(scores, t) == np.floor(target * 200 + 1e-9) / 200
    tied = np.array([3.0, 2.0, 2.0, 2.0 + 1e-9, 1.0])  # the margin stops short of the next larger score
    assert 2.0 < calibrate_threshold(tied, 0.4) < 2.0 + 1e-9


def test_conservative_threshold_and_small_samples():
    s = np.random.default_rng(0).normal(size=99)
    t = calibrate_threshold(s, 0.05, conservative=True)  # k = floor(0.05 * 100) - 1 = 4 above
    assert false_positive_rate(s, t) == pytest.approx(4 / 99)
    with pytest.warns(UserWarning, match="cannot guarantee"):
        calibrate_threshold(s[:10], 0.05, conservative=True)
    assert false_positive_rate(s[:10], calibrate_threshold(s[:10], 0.05)) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        calibrate_threshold([], 0.05)
    with pytest.warns(UserWarning, match="none can"):  # a target of 0 cannot be guaranteed: the maximum
        t = calibrate_threshold(s, 0.0, conservative=True)
    assert s.max() < t == pytest.approx(s.max(), rel=2e-5)


def test_fpr95_is_exact_when_tied_scores_make_the_roc_curve_straight():
    # tied (anomaly, normal) pairs at 5 and 4: the ROC points (0, .9), (.05, .95), (.1, 1) are collinear;
    # 95 % of the anomalies are found at threshold 5 with 1 of 20 normals above it
    y = np.r_[np.ones(18), 1, 0, 1, 0, np.zeros(18)]
    s = np.r_[np.full(18, 10.0), 5, 5, 4, 4, np.zeros(18)]
    assert fpr_at_tpr(y, s, 0.95) == pytest.approx(0.05)
    assert fpr_at_tpr(y, s, 0.9) == 0.0 and fpr_at_tpr(y, s, 1.0) == pytest.approx(0.1)
    for bad in (0.0, 1.5, float("nan")):  # was an IndexError from deep inside for 1.5
        with pytest.raises(ValueError, match="tpr must be in"):
            fpr_at_tpr(y, s, bad)


def test_aupr_takes_the_anomalies_as_the_positive_class():
    """The only AUPR test ranked perfectly, where either class as positive gives 1 (mutation QA)."""
    from sklearn.metrics import average_precision_score

    y = np.array([1, 0, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert aupr(y, s) == pytest.approx((1 / 1 + 2 / 4) / 2)  # anomalies at ranks 1 and 4
    assert aupr(y, s) == pytest.approx(average_precision_score(y, s))


def test_false_positive_rate_counts_scores_strictly_above_the_threshold():
    assert false_positive_rate([1.0, 2.0, 3.0], 2.0) == pytest.approx(1 / 3)
