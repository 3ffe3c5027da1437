"""Detection metrics (anomalies are the positive class) and threshold calibration."""
from __future__ import annotations

import math
import warnings

import numpy as np


def binary_labels(values, what: str = "labels") -> np.ndarray:
    """`values` as an int array of 0 (normal) / 1 (anomaly), compared as values, not truncated ints:
    0.7 and NaN are not labels ("0" / "1" strings are); a ValueError names the values that are not."""
    raw = np.asarray(values).ravel()
    try:
        as_float = raw.astype(np.float64)
    except (TypeError, ValueError):
        as_float = None
    if as_float is None or not np.isin(as_float, (0.0, 1.0)).all():
        odd = raw if as_float is None else raw[~np.isin(as_float, (0.0, 1.0))]
        shown = sorted({str(v) for v in odd.tolist()})[:5]
        raise ValueError(f"{what} must be 0 (normal) or 1 (anomaly), got {', '.join(shown)}")
    return as_float.astype(int)


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    raw = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if raw.shape != scores.shape:
        raise ValueError(f"{raw.size} labels but {scores.size} scores")
    labels = binary_labels(raw)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} score(s) are NaN or infinite")
    if labels.min() == labels.max():
        raise ValueError("both normal (0) and anomalous (1) samples are needed for this metric")
    return labels, scores


def auroc(labels, scores) -> float:
    labels, scores = _check(labels, scores)
    from sklearn.metrics import roc_auc_score  # here: sklearn costs predict a second at start-up

    return float(roc_auc_score(labels, scores))


def aupr(labels, scores) -> float:
    """Area under the precision-recall curve as average precision (sklearn's step-wise sum, not a
    trapezoid), anomalies as positives."""
    labels, scores = _check(labels, scores)
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


def fpr_at_tpr(labels, scores, tpr: float = 0.95) -> float:
    """The smallest false-positive rate at which at least `tpr` of the anomalies are detected."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    labels, scores = _check(labels, scores)
    # every threshold: the default drop_intermediate removes collinear points, such as the one where
    # tied (anomaly, normal) pairs first reach `tpr`, and the next point has a higher FPR
    from sklearn.metrics import roc_curve

    fpr, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr - 1e-12, side="left")])


def detection_metrics(labels, scores) -> dict[str, float]:
    return {"auroc": auroc(labels, scores), "aupr": aupr(labels, scores), "fpr95": fpr_at_tpr(labels, scores)}


def calibrate_threshold(normal_scores, target_fpr: float = 0.05, conservative: bool = False) -> float:
    """A threshold t on held-out *normal* scores; predict anomaly when score > t.

    Default (empirical): t is just above the (k+1)-th largest calibration score with
    k = floor(target_fpr * n), so on the calibration data exactly floor(target_fpr * n) / n <=
    target_fpr of the scores lie above t (fewer with ties). "Just above": by a relative 1e-5 (the
    float32 rounding a score gets from the batch it is scored in is ~1e-7), never reaching the next
    larger score, so that calibration image is not flagged when scored again in other company.

    Finite samples: for a new normal sample exchangeable with the n calibration samples the
    expected false-positive rate of that threshold is (k + 1) / (n + 1), which exceeds the
    target when n is small (n = 10, target 0.05: 1/11 = 0.09). `conservative=True` picks
    k = floor(target_fpr * (n + 1)) - 1 instead (split-conformal), which guarantees an expected
    FPR (k + 1) / (n + 1) <= target_fpr; with n + 1 < 1 / target_fpr (or a target of 0) no
    calibration score can, and the largest one is used with a warning.
    """
    s = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())[::-1]
    if s.size == 0:
        raise ValueError("threshold calibration needs at least one held-out normal score")
    if not np.isfinite(s).all():
        raise ValueError("calibration scores contain NaN or infinite values")
    check_target_fpr(target_fpr)
    n = s.size
    if conservative:
        k = math.floor(target_fpr * (n + 1) + 1e-9) - 1
        if k < 0:
            need = f"at least {math.ceil(1 / target_fpr) - 1} are needed" if target_fpr > 0 else "none can"
            warnings.warn(
                f"{n} calibration samples cannot guarantee a false-positive rate of {target_fpr}: "
                f"{need}; using the largest score",
                stacklevel=2,
            )
            k = 0
        k = min(k, n - 1)
    else:
        k = int(math.floor(target_fpr * n + 1e-9))
        if k >= n:
            k = n - 1
    return _just_above(s, k)


def _just_above(descending: np.ndarray, k: int) -> float:
    """A threshold above descending[k] by float32 rounding's margin, below every larger score."""
    at = descending[k]
    upper = descending[descending > at].min(initial=np.inf)
    return float(min(at + 1e-5 * max(1.0, abs(at)), (at + upper) / 2))


def check_target_fpr(target_fpr) -> float:
    """target_fpr as a float in [0, 1), else a ValueError (callers check it before scoring)."""
    try:
        ok = 0 <= target_fpr < 1
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"target FPR must be a number in [0, 1), got {target_fpr!r}")
    return float(target_fpr)


def false_positive_rate(normal_scores, threshold: float) -> float:
    s = np.asarray(normal_scores, dtype=np.float64)
    return float((s > threshold).mean())
