"""Quality checks: accuracy on the window's feedback, and the label-free (CBPE-style) estimate with its interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tuneloop.monitor.drift import stats as ds
from tuneloop.monitor.drift.checks import CheckResult, Skip
from tuneloop.monitor.drift.context import REFERENCE_CACHE, CheckContext, finite_values


def _labelled(frame: pd.DataFrame, label: str = "label", truth: str = "true_label") -> pd.DataFrame:
    if truth not in frame.columns or label not in frame.columns:
        return frame.iloc[0:0]
    return frame.loc[frame[truth].notna() & frame[label].notna()]


def _correct(frame: pd.DataFrame, label: str = "label", truth: str = "true_label") -> np.ndarray:
    return (frame[label].astype(str) == frame[truth].astype(str)).to_numpy(dtype=np.float64)


def _reference_labelled(c: CheckContext, label: str, truth: str) -> pd.DataFrame:
    lab = _labelled(c.ref, label, truth)
    if len(lab) < c.settings.min_labels:
        raise Skip(f"reference has {len(lab)} labelled rows, fewer than min_labels={c.settings.min_labels}")
    return lab


def _accuracy_threshold(c: CheckContext, null: np.ndarray, reference_accuracy: float) -> float:
    """Drift below: under both the calibrated lower bound and reference accuracy minus the tolerance."""
    return min(c.threshold(null, upper=False), reference_accuracy - c.settings.accuracy_tolerance)


def classification_summary(y_true: Sequence[Any], y_pred: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, macro F1 (over classes seen in truth or prediction) and recall per true class.

    Computed with scikit-learn on integer codes (fast at 100k rows); Evidently's ``Accuracy`` and
    ``F1Score`` give the same numbers.
    """
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    yt, yp = pd.Series(y_true).astype(str).to_numpy(), pd.Series(y_pred).astype(str).to_numpy()
    codes, names = pd.factorize(np.concatenate([yt, yp]), sort=True)
    ct, cp = codes[: len(yt)], codes[len(yt) :]
    present = np.unique(ct)
    recall = recall_score(ct, cp, labels=present, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(ct, cp)),
        "macro_f1": float(f1_score(ct, cp, labels=np.arange(len(names)), average="macro", zero_division=0)),
        "per_class_recall": {str(names[i]): float(v) for i, v in zip(present, recall, strict=True)},
    }


def check_labelled(c: CheckContext) -> CheckResult:
    """Accuracy on the window's feedback against the reference's held-out labels, by an exact test.

    Drift = the one-sided exact permutation test of the per-row outcomes (Fisher's, see
    :func:`~tuneloop.monitor.drift.stats.accuracy_drop_test`) rejects at ``1 - quantile``, its
    critical accuracy widened by ``threshold_margin`` times its distance below the reference
    accuracy, *and* the drop exceeds ``accuracy_tolerance`` (so a huge window does not alarm on a
    negligible dip). A resampled threshold would carry its own Monte Carlo error on a statistic
    that takes few values; the exact null has none.
    """
    label, truth = c.spec.columns
    cur_lab = _labelled(c.cur, label, truth)
    if len(cur_lab) < c.settings.min_labels:
        raise Skip(f"current has {len(cur_lab)} labelled rows, fewer than min_labels={c.settings.min_labels}")
    ref_correct = _correct(_reference_labelled(c, label, truth), label, truth)
    cur_correct = _correct(cur_lab, label, truth)
    summary = classification_summary(cur_lab[truth].tolist(), cur_lab[label].tolist())
    ref_acc, value = float(ref_correct.mean()), summary["accuracy"]
    p_value, critical = ds.accuracy_drop_test(int(ref_correct.sum()), len(ref_correct),
                                              int(cur_correct.sum()), len(cur_correct), 1.0 - c.settings.quantile)
    widened = critical - c.settings.threshold_margin * max(ref_acc - critical, 0.0)
    threshold = max(min(widened, ref_acc - c.settings.accuracy_tolerance), 0.0)
    details = {
        "method": "fisher_exact_one_sided",
        "direction": "below",
        "n_labelled": len(cur_lab),
        "reference_accuracy": ref_acc,
        "reference_labelled": len(ref_correct),
        "tolerance": c.settings.accuracy_tolerance,
        "p_value": p_value,
        "exact_threshold": critical,
        **summary,
    }
    return c.result(value, threshold, value < threshold, details)


def fit_confidence_calibration(confidence: np.ndarray, correct: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Isotonic map confidence -> probability that the prediction is correct (monotone, in [0, 1])."""
    xs, ys = _isotonic_steps(np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float))
    return lambda conf: np.interp(np.asarray(conf, dtype=float), xs, ys)


def _isotonic_steps(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The knots of the isotonic fit (``np.interp`` over them is its prediction, clipped at the ends)."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True).fit(confidence, correct)
    return iso.X_thresholds_, iso.y_thresholds_


@dataclass(frozen=True)
class _Calibration:
    """The fitted reference side of the label-free estimate: the calibration and its bootstrap replicates."""

    steps: tuple[np.ndarray, np.ndarray]
    replicates: list[tuple[np.ndarray, np.ndarray]]
    reference_p: np.ndarray
    reference_accuracy: float
    calibration_rows: int


def _estimate_interval(
    cal: _Calibration, conf: np.ndarray, rng: np.random.Generator, level: float = 0.95
) -> tuple[float, float]:
    """Interval of the window's accuracy: calibration refitted on bootstrap replicates of the labelled
    reference rows, the window's rows resampled, plus the Bernoulli spread of the rows' correctness
    (each row is right with its calibrated probability, so the realised accuracy varies around the mean)."""
    n = len(conf)
    est = np.empty(len(cal.replicates))
    for b, (xs, ys) in enumerate(cal.replicates):
        p = np.interp(conf[rng.integers(0, n, n)], xs, ys)
        est[b] = p.mean() + rng.standard_normal() * math.sqrt(float((p * (1 - p)).sum())) / n
    lo, hi = np.quantile(est, [(1 - level) / 2, (1 + level) / 2])
    return float(max(lo, 0.0)), float(min(hi, 1.0))


def check_estimated(c: CheckContext) -> CheckResult:
    """CBPE-style: calibrate confidence on the reference's labels, average the calibrated confidence now.

    Valid while P(correct | confidence) stays as in the reference (covariate shift, harder or easier
    inputs); it cannot see a model that is confidently wrong on a new kind of input, which is what
    the embedding check and labelled accuracy are for, and why :func:`mark_reliability` flags it.
    The answer carries a 95 % interval of the window's accuracy (calibration and sampling error).
    """
    conf, label, truth = c.spec.columns
    if conf not in c.cur.columns or conf not in c.ref.columns:
        raise Skip(f"no {conf} column")
    cur_conf = finite_values(c.cur, conf)
    if len(cur_conf) == 0:
        raise Skip(f"current has no {conf} values")

    def fit() -> _Calibration:
        ref_lab = _reference_labelled(c, label, truth)
        ref_conf = pd.to_numeric(ref_lab[conf], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(ref_conf)
        if ok.sum() < c.settings.min_labels:
            raise Skip(f"reference labelled rows lack {conf}")
        x, y = ref_conf[ok], _correct(ref_lab, label, truth)[ok]
        rng = c.rng("calibration")
        replicates = [_isotonic_steps(x[i], y[i]) for i in rng.integers(0, len(x), (c.settings.resamples, len(x)))]
        steps = _isotonic_steps(x, y)
        return _Calibration(steps, replicates, np.interp(finite_values(c.ref, conf), *steps), float(y.mean()), len(x))

    key = (c.reference_key, c.spec.name, c.settings.resamples, c.settings.min_labels, c.seed)
    cal = REFERENCE_CACHE.get_or_fit(key, fit)
    cur_p = np.interp(cur_conf, *cal.steps)
    value = float(cur_p.mean())
    low, high = _estimate_interval(cal, cur_conf, c.rng("interval"))
    # Spread of the estimate over reference windows of the current size (capped at sample_size).
    n = min(len(cur_conf), c.settings.sample_size)
    null = cal.reference_p[c.rng("bootstrap").integers(0, len(cal.reference_p), size=(c.settings.resamples, n))].mean(1)
    threshold = _accuracy_threshold(c, null, cal.reference_accuracy)
    details: dict[str, Any] = {
        "method": "isotonic_confidence_calibration",
        "direction": "below",
        "n_current": len(cur_conf),
        "interval_95": [low, high],
        "reference_accuracy": cal.reference_accuracy,
        "reference_estimated_accuracy": float(cal.reference_p.mean()),
        "calibration_rows": cal.calibration_rows,
        "tolerance": c.settings.accuracy_tolerance,
        "p_value": ds.exceedance(value, null, upper=False),
    }
    cur_lab = _labelled(c.cur, label, truth)
    if len(cur_lab):  # lets the dashboard show estimated next to actual where feedback exists
        details.update(_feedback_agreement(cal, cur_lab, conf, label, truth))
    return c.result(value, threshold, value < threshold, details)


def _feedback_agreement(cal: _Calibration, labelled: pd.DataFrame, conf: str, label: str, truth: str) -> dict[str, Any]:
    """Does the window's own feedback agree with the calibration? Compared on the labelled rows themselves
    (they are often label-queue picks, harder than average, so their accuracy is not the window's)."""
    from scipy.stats import binomtest

    correct = _correct(labelled, label, truth)
    out: dict[str, Any] = {"labelled_accuracy": float(correct.mean()), "n_labelled": len(labelled)}
    p = np.interp(pd.to_numeric(labelled[conf], errors="coerce").fillna(0.0).to_numpy(dtype=float), *cal.steps)
    ci = binomtest(int(correct.sum()), len(correct)).proportion_ci(0.95)
    out["estimated_on_labelled"] = float(p.mean())
    out["labelled_accuracy_interval_95"] = [float(ci.low), float(ci.high)]
    if len(correct) >= 20 and not ci.low <= p.mean() <= ci.high:
        out["unreliable_reasons"] = [
            f"the window's {len(correct)} labelled rows disagree with the calibration: estimated "
            f"{p.mean():.1%} on them, measured {correct.mean():.1%} (95 % interval {ci.low:.1%}-{ci.high:.1%})"
        ]
    return out
