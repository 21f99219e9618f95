"""Drift checks: one runner over a list of declared checks, comparing a current window with a reference.

Inputs are two DataFrames with the columns ``text`` (str), ``label`` (predicted label), ``confidence``
(float), ``embedding`` (384 floats, may be missing) and optionally ``true_label`` (str or None) and
``id``. Storage, windows and scheduling live elsewhere; this module is pure computation.

Method, and why
---------------
*One statistic, one calibrated threshold per check.* Every check reduces the two windows to a
statistic (MMD for embeddings, Jensen-Shannon distance for labels, normalised Wasserstein for
numbers, accuracy for quality) and compares it with a threshold measured on the reference itself:
the statistic is recomputed on ``settings.resamples`` random reference-vs-reference splits drawn at
exactly the sample sizes of the real comparison, and the threshold is the ``settings.quantile``
quantile of that spread, widened by ``settings.threshold_margin`` times its distance from the median
(:func:`~tuneloop.monitor.drift_stats.calibrated_threshold`). So a threshold means "more different
than the reference ever is from itself at this sample size" in every check, with no magic constants
to tune per model or per embedding space. False alarms stay below ``1 - quantile``: with the
defaults, none of the six distribution checks fired in 200 same-distribution windows of real
tweets (margin 0 would have given up to 6 %: a quantile estimated from 50 resamples is noisy).

*Fixed sample sizes make verdicts scale-aware.* At most ``settings.sample_size`` rows per side are
compared (a fixed-seed draw), so cost is constant and the same pair of distributions gets the same
verdict at 500 or at 100,000 rows; a bigger window does not turn negligible differences into
"significant" drift as a plain hypothesis test on all rows would.

*Embeddings: PCA + MMD instead of Evidently's default.* Evidently's default ``EmbeddingsDrift``
trains a domain classifier and always draws a t-SNE picture (about 6 minutes for 20k x 384 rows on
two busy cores, see ``bench/drift.py``), and from 1 000 reference rows on it uses a fixed ROC-AUC
threshold of 0.55 whatever the sample size. Here: PCA fitted on reference rows outside the compared
samples (the top 32 axes carry the directions along which texts differ most, ~56 % of the variance
of tweet embeddings, and make kernels cheap), an RBF kernel with the median-heuristic bandwidth,
and the unbiased MMD^2 (the kernel two-sample statistic, sensitive to any change of distribution,
not only of the mean). All calibration splits come from one kernel matrix over the reference pool
and one matrix product (:func:`~tuneloop.monitor.drift_stats.mmd2_null`), so the check costs about
half a CPU-second at 20k rows per side. For the dashboard's "examples farthest from reference"
the current rows with the largest MMD witness (similarity to the current sample minus similarity
to the reference sample) are reported: they sit where the current window has mass the reference
lacks, i.e. they explain the drift, whereas plain outliers of either side score about zero.

*Anything learnt from the reference is fitted on rows that are not compared.* The PCA basis, the
kernel bandwidth and the OOV vocabulary come from reference rows outside the calibration pool
(:class:`~tuneloop.monitor.drift_stats.SamplePlan`); otherwise the reference would look "closer to
itself" than new data does and every window would drift.

*Quality.* ``labelled_accuracy`` uses the current window's feedback; ``estimated_accuracy`` is a
CBPE-style label-free estimate: isotonic regression of correctness on confidence, fitted on the
reference's labelled rows, averaged over the current window. Both alarm when accuracy falls below
``min(reference accuracy - settings.accuracy_tolerance, bootstrap lower bound at the same n)``.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tuneloop.monitor import drift_stats as ds
from tuneloop.monitor.config import DriftSettings

log = logging.getLogger(__name__)

CheckKind = Literal["embedding", "categorical", "numeric", "descriptor", "labelled_accuracy", "estimated_accuracy"]


@dataclass(frozen=True)
class CheckSpec:
    """One declared check: which metric, of which kind, over which columns, with which parameters.

    ``kind`` selects the computation; ``params`` tune it (e.g. ``{"dims": 32}`` for the PCA size,
    ``{"descriptor": "oov_share"}`` for a text descriptor, ``{"min_threshold": 0.01}`` for a floor
    under the calibrated threshold).
    """

    name: str
    kind: CheckKind
    columns: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """What one check found. ``details`` is JSON-safe (no NaN, no numpy types).

    For distances ``drifted`` means ``value > threshold``; for accuracies it means
    ``value < threshold`` (``details["direction"]`` says which).
    """

    metric: str
    value: float
    threshold: float
    drifted: bool
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The result as a plain dict (what the store records and the API returns)."""
        return asdict(self)


DEFAULT_CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("embedding_drift", "embedding", ("embedding",), {"dims": 32, "farthest": 10}),
    CheckSpec("prediction_drift", "categorical", ("label",), {"evidently": True}),
    CheckSpec("confidence_drift", "numeric", ("confidence",)),
    CheckSpec("text_length_drift", "descriptor", ("text",), {"descriptor": "text_length"}),
    CheckSpec("oov_rate_drift", "descriptor", ("text",), {"descriptor": "oov_share", "vocab_rows": 20_000}),
    CheckSpec("non_ascii_drift", "descriptor", ("text",), {"descriptor": "non_ascii_share"}),
    CheckSpec("labelled_accuracy", "labelled_accuracy", ("label", "true_label")),
    CheckSpec("estimated_accuracy", "estimated_accuracy", ("confidence", "label", "true_label")),
)
"""The checks tuneloop runs; ``settings.checks`` picks which of them by name."""


class Skip(Exception):
    """A check that cannot run on these windows (missing column, too few rows or labels)."""


# --------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class _Check:
    """Everything one check computation needs."""

    spec: CheckSpec
    ref: pd.DataFrame
    cur: pd.DataFrame
    settings: DriftSettings
    labels: list[str]
    rng: np.random.Generator

    def param(self, name: str, default: Any) -> Any:
        return self.spec.params.get(name, default)

    def need_columns(self) -> None:
        for side, frame in (("reference", self.ref), ("current", self.cur)):
            missing = [c for c in self.spec.columns if c not in frame.columns]
            if missing:
                raise Skip(f"{side} has no column {missing}")

    def plan(self, n_ref: int, n_cur: int) -> ds.SamplePlan:
        try:
            return ds.plan_samples(n_ref, n_cur, self.settings.sample_size, self.rng)
        except ValueError as e:
            raise Skip(str(e)) from None

    def splits(self, plan: ds.SamplePlan) -> np.ndarray:
        return ds.split_indicators(plan.n_ref + plan.n_cur, plan.n_ref, self.settings.resamples, self.rng)

    def threshold(self, null: np.ndarray, upper: bool = True) -> float:
        t = ds.calibrated_threshold(null, self.settings.quantile, self.settings.threshold_margin, upper=upper)
        floor = self.spec.params.get("min_threshold")
        return max(t, float(floor)) if floor is not None and upper else t

    def result(self, value: float, threshold: float, drifted: bool, details: dict[str, Any]) -> CheckResult:
        return CheckResult(self.spec.name, float(value), float(threshold), bool(drifted), _jsonable(details))


def run_checks(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    settings: DriftSettings,
    labels: Sequence[str],
    seed: int = 0,
    checks: Sequence[CheckSpec] | None = None,
) -> list[CheckResult]:
    """Run the declared checks of ``current`` against ``reference``; one result per check that could run.

    ``checks`` defaults to the :data:`DEFAULT_CHECKS` named in ``settings.checks``. A check that
    cannot run (column absent, fewer than ``settings.min_labels`` labels, too few rows) is left out
    of the answer and logged, and so is one that fails unexpectedly (with its traceback), so the
    others are still recorded. ``seed`` fixes every random draw: same inputs, same results.
    """
    if checks is None:
        unknown = set(settings.checks) - {c.name for c in DEFAULT_CHECKS}
        if unknown:
            raise ValueError(f"unknown drift checks in settings.checks: {sorted(unknown)}")
        checks = [c for c in DEFAULT_CHECKS if c.name in settings.checks]
    results = []
    for spec in checks:
        rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
        try:
            results.append(_RUNNERS[spec.kind](_Check(spec, reference, current, settings, list(labels), rng)))
        except Skip as why:
            log.info("drift check %s skipped: %s", spec.name, why)
        except Exception:  # one broken check must not silence the others
            log.exception("drift check %s failed", spec.name)
    return results


def render_report(reference: pd.DataFrame, current: pd.DataFrame, results: Sequence[CheckResult], path: Path) -> Path:
    """Write the Evidently HTML report of one check to ``path`` (see :mod:`tuneloop.monitor.drift_report`)."""
    from tuneloop.monitor.drift_report import render_report as render

    return render(reference, current, results, path)


def _jsonable(x: Any) -> Any:
    """Plain JSON types only: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, int | str):
        return x
    return str(x)


def _sizes(plan: ds.SamplePlan, n_ref_rows: int, n_cur_rows: int) -> dict[str, int]:
    return {
        "n_reference": n_ref_rows,
        "n_current": n_cur_rows,
        "sample_reference": plan.n_ref,
        "sample_current": plan.n_cur,
        "fit_rows": len(plan.fit),
    }


# --------------------------------------------------------------------------- embeddings


def _embedding_rows(values: Sequence[Any], dim: int | None = None) -> tuple[np.ndarray, int]:
    """Positions of rows holding an embedding of the right length (the first one seen sets it) and that length."""
    ok = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if isinstance(v, np.ndarray | list | tuple) and len(v) > 0:
            if dim is None:
                dim = len(v)
            ok[i] = len(v) == dim
    return np.flatnonzero(ok), dim or 0


def _stack(values: Sequence[Any], positions: np.ndarray) -> np.ndarray:
    return np.asarray([values[i] for i in positions], dtype=np.float32).reshape(len(positions), -1)


def _check_embedding(c: _Check) -> CheckResult:
    c.need_columns()
    col = c.spec.columns[0]
    ref_vals, cur_vals = c.ref[col].to_numpy(), c.cur[col].to_numpy()
    ref_ok, dim = _embedding_rows(ref_vals)
    cur_ok, _ = _embedding_rows(cur_vals, dim or None)
    plan = c.plan(len(ref_ok), len(cur_ok))

    # Projection and bandwidth are learnt from reference rows outside the compared pool.
    fit_x = _stack(ref_vals, ref_ok[plan.fit[: c.settings.sample_size]])
    if len(fit_x) < 3:
        raise Skip("reference too small to fit the projection")
    mean, axes = ds.pca_basis(fit_x, int(c.param("dims", 32)))
    gamma = ds.median_gamma(ds.project(fit_x, mean, axes), c.rng)

    pool_z = ds.project(_stack(ref_vals, ref_ok[plan.pool]), mean, axes)
    cur_z = ds.project(_stack(cur_vals, cur_ok[plan.cur]), mean, axes)
    ref_z = pool_z[: plan.n_ref]
    k_pool = ds.rbf(pool_z, pool_z, gamma)
    value = ds.mmd2_unbiased(
        k_pool[: plan.n_ref, : plan.n_ref], ds.rbf(cur_z, cur_z, gamma), ds.rbf(ref_z, cur_z, gamma)
    )
    null = ds.mmd2_null(k_pool, c.splits(plan))
    del k_pool
    threshold = c.threshold(null)

    # Examples that most explain the difference, over the whole current window: the MMD witness
    # (mean similarity to the current sample minus mean similarity to the reference sample) is
    # highest where the current window has mass the reference lacks; outliers of both score ~0.
    n_anchor = int(c.param("witness_anchors", 500))
    pick = c.rng.permutation(plan.n_cur)[:n_anchor]  # plan.cur is in row order: anchor a random part
    ref_anchor, cur_anchor = ref_z[:n_anchor], cur_z[pick]
    anchor_of = np.full(len(cur_ok), -1)
    anchor_of[plan.cur[pick]] = np.arange(len(pick))
    witness = np.empty(len(cur_ok))
    step = 20_000
    for i in range(0, len(cur_ok), step):
        chunk = ds.project(_stack(cur_vals, cur_ok[i : i + step]), mean, axes)
        own = ds.mean_similarity(chunk, cur_anchor, gamma)
        is_anchor = anchor_of[i : i + step] >= 0  # leave out each anchor's similarity to itself (1)
        own[is_anchor] = (own[is_anchor] * len(cur_anchor) - 1.0) / max(len(cur_anchor) - 1, 1)
        witness[i : i + step] = own - ds.mean_similarity(chunk, ref_anchor, gamma)
    order = np.argsort(-witness, kind="stable")[: int(c.param("farthest", 10))]
    far_rows = cur_ok[order]
    details: dict[str, Any] = {
        "method": f"pca{axes.shape[0]}_mmd_rbf",
        "direction": "above",
        **_sizes(plan, len(ref_ok), len(cur_ok)),
        "missing_reference": len(ref_vals) - len(ref_ok),
        "missing_current": len(cur_vals) - len(cur_ok),
        "dims": int(axes.shape[0]),
        "gamma": gamma,
        "p_value": ds.exceedance(value, null),
        "null_median": float(np.median(null)),
        "null_quantile": float(np.quantile(null, c.settings.quantile)),
        "farthest_rows": far_rows,
        "farthest_scores": witness[order],
    }
    if "id" in c.cur.columns:
        details["farthest_ids"] = c.cur["id"].to_numpy()[far_rows]
    return c.result(max(value, 0.0), threshold, value > threshold, details)


# --------------------------------------------------------------------------- labels and numbers


def _check_categorical(c: _Check) -> CheckResult:
    c.need_columns()
    col = c.spec.columns[0]
    cats = np.asarray(c.labels + ["(other)"])
    ref_codes = ds.label_codes(c.ref[col].tolist(), c.labels)
    cur_codes = ds.label_codes(c.cur[col].tolist(), c.labels)
    plan = c.plan(len(ref_codes), len(cur_codes))
    pool, cur_s = ref_codes[plan.pool], cur_codes[plan.cur]
    a = np.bincount(pool[: plan.n_ref], minlength=len(cats))
    b = np.bincount(cur_s, minlength=len(cats))
    value = float(ds.js_distance(a, b))
    null = ds.js_null(pool, len(cats), c.splits(plan))
    threshold = c.threshold(null)
    details: dict[str, Any] = {
        "method": "jensen_shannon",
        "direction": "above",
        **_sizes(plan, len(ref_codes), len(cur_codes)),
        "p_value": ds.exceedance(value, null),
        "null_median": float(np.median(null)),
        "reference_shares": dict(zip(cats.tolist(), (a / a.sum()).tolist(), strict=True)),
        "current_shares": dict(zip(cats.tolist(), (b / b.sum()).tolist(), strict=True)),
    }
    if c.param("evidently", False):
        details["evidently_value_drift"] = evidently_value_drift(
            pd.Series(cats[pool[: plan.n_ref]]), pd.Series(cats[cur_s]), "categorical"
        )
    return c.result(value, threshold, value > threshold, details)


def evidently_value_drift(
    reference: pd.Series, current: pd.Series, kind: Literal["categorical", "numerical"]
) -> dict[str, Any]:
    """Evidently ``ValueDrift`` with its default method and threshold on the same samples (for comparison)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    col = "value"
    dd = DataDefinition(**{f"{kind}_columns": [col]})
    snap = Report([ValueDrift(column=col)], include_tests=True).run(
        Dataset.from_pandas(pd.DataFrame({col: current.to_numpy()}), dd),
        Dataset.from_pandas(pd.DataFrame({col: reference.to_numpy()}), dd),
    )
    out = snap.dict()
    m = out["metrics"][0]
    # The verdict comes from Evidently's own test: for p-value methods drift is a *small* score.
    drifted = any(t.get("status") == "FAIL" for t in out.get("tests", []))
    return {
        "method": m["config"]["method"],
        "score": float(m["value"]),
        "threshold": float(m["config"]["threshold"]),
        "drifted": drifted,
    }


def _numeric_distance(
    c: _Check,
    n_ref_rows: int,
    n_cur_rows: int,
    values: Callable[[ds.SamplePlan], tuple[np.ndarray, np.ndarray]],
    extra: dict[str, Any] | None = None,
) -> CheckResult:
    """Normalised Wasserstein-1 (Evidently's "Wasserstein distance (normed)") with a calibrated threshold.

    ``values(plan)`` returns the per-row values of the sampled rows only (reference pool first,
    then current), so a descriptor is never computed on more than 3 x sample_size texts.
    """
    plan = c.plan(n_ref_rows, n_cur_rows)
    pool, cur_s = values(plan)
    scale = max(float(np.std(pool)), 1e-3)
    value = ds.wasserstein_1d(pool[: plan.n_ref], cur_s) / scale
    null = ds.wasserstein_null(pool, c.splits(plan)) / scale
    threshold = c.threshold(null)
    details = {
        "method": "wasserstein_normed",
        "direction": "above",
        **_sizes(plan, n_ref_rows, n_cur_rows),
        "p_value": ds.exceedance(value, null),
        "null_median": float(np.median(null)),
        "scale": scale,
        "reference_mean": float(np.mean(pool[: plan.n_ref])),
        "current_mean": float(np.mean(cur_s)),
        **(extra or {}),
    }
    return c.result(value, threshold, value > threshold, details)


def _finite(frame: pd.DataFrame, col: str) -> np.ndarray:
    v = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
    return v[np.isfinite(v)]


def _check_numeric(c: _Check) -> CheckResult:
    c.need_columns()
    ref_v, cur_v = _finite(c.ref, c.spec.columns[0]), _finite(c.cur, c.spec.columns[0])
    return _numeric_distance(c, len(ref_v), len(cur_v), lambda plan: (ref_v[plan.pool], cur_v[plan.cur]))


def _texts(frame: pd.DataFrame, col: str) -> np.ndarray:
    return frame[col].fillna("").astype(str).to_numpy()


def _check_descriptor(c: _Check) -> CheckResult:
    c.need_columns()
    name = c.spec.params["descriptor"]
    ref_t, cur_t = _texts(c.ref, c.spec.columns[0]), _texts(c.cur, c.spec.columns[0])
    extra: dict[str, Any] = {"descriptor": name}

    def values(plan: ds.SamplePlan) -> tuple[np.ndarray, np.ndarray]:
        pool_t, cur_s = list(ref_t[plan.pool]), list(cur_t[plan.cur])
        if name == "oov_share":
            vocab = ds.build_vocabulary(ref_t[plan.fit[: int(c.param("vocab_rows", 20_000))]])
            if not vocab:
                raise Skip("no reference words outside the compared sample")
            extra["vocabulary_size"] = len(vocab)
            return ds.oov_share(pool_t, vocab), ds.oov_share(cur_s, vocab)
        fn = ds.DESCRIPTORS[name]
        return fn(pool_t), fn(cur_s)

    return _numeric_distance(c, len(ref_t), len(cur_t), values, extra)


# --------------------------------------------------------------------------- quality


def _labelled(frame: pd.DataFrame, label: str = "label", truth: str = "true_label") -> pd.DataFrame:
    if truth not in frame.columns or label not in frame.columns:
        return frame.iloc[0:0]
    return frame.loc[frame[truth].notna() & frame[label].notna()]


def _correct(frame: pd.DataFrame, label: str = "label", truth: str = "true_label") -> np.ndarray:
    return (frame[label].astype(str) == frame[truth].astype(str)).to_numpy(dtype=np.float64)


def _reference_labelled(c: _Check, label: str, truth: str) -> pd.DataFrame:
    lab = _labelled(c.ref, label, truth)
    if len(lab) < c.settings.min_labels:
        raise Skip(f"reference has {len(lab)} labelled rows, fewer than min_labels={c.settings.min_labels}")
    return lab


def _accuracy_threshold(c: _Check, null: np.ndarray, reference_accuracy: float) -> float:
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


def _check_labelled(c: _Check) -> CheckResult:
    label, truth = c.spec.columns
    cur_lab = _labelled(c.cur, label, truth)
    if len(cur_lab) < c.settings.min_labels:
        raise Skip(f"current has {len(cur_lab)} labelled rows, fewer than min_labels={c.settings.min_labels}")
    ref_correct = _correct(_reference_labelled(c, label, truth), label, truth)
    summary = classification_summary(cur_lab[truth].tolist(), cur_lab[label].tolist())
    # Bootstrap of the reference's correctness at the current number of labels (capped like every sample).
    n = min(len(cur_lab), c.settings.sample_size)
    null = ref_correct[c.rng.integers(0, len(ref_correct), size=(c.settings.resamples, n))].mean(1)
    ref_acc = float(ref_correct.mean())
    threshold = _accuracy_threshold(c, null, ref_acc)
    value = summary["accuracy"]
    details = {
        "direction": "below",
        "n_labelled": len(cur_lab),
        "reference_accuracy": ref_acc,
        "reference_labelled": len(ref_correct),
        "tolerance": c.settings.accuracy_tolerance,
        "p_value": ds.exceedance(value, null, upper=False),
        **summary,
    }
    return c.result(value, threshold, value < threshold, details)


def fit_confidence_calibration(confidence: np.ndarray, correct: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Isotonic map confidence -> probability that the prediction is correct (monotone, in [0, 1])."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float))
    return lambda conf: iso.predict(np.asarray(conf, dtype=float))


def _check_estimated(c: _Check) -> CheckResult:
    """CBPE-style: calibrate confidence on the reference's labels, average the calibrated confidence now.

    Valid while P(correct | confidence) stays as in the reference (covariate shift, harder or easier
    inputs); it cannot see a model that is confidently wrong on a new kind of input, which is what
    the embedding check and labelled accuracy are for.
    """
    conf, label, truth = c.spec.columns
    if conf not in c.cur.columns or conf not in c.ref.columns:
        raise Skip(f"no {conf} column")
    ref_lab = _reference_labelled(c, label, truth)
    ref_conf = pd.to_numeric(ref_lab[conf], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(ref_conf)
    if ok.sum() < c.settings.min_labels:
        raise Skip(f"reference labelled rows lack {conf}")
    correct = _correct(ref_lab, label, truth)[ok]
    calibrate = fit_confidence_calibration(ref_conf[ok], correct)
    cur_conf = _finite(c.cur, conf)
    if len(cur_conf) == 0:
        raise Skip(f"current has no {conf} values")
    value = float(calibrate(cur_conf).mean())
    # Spread of the estimate over reference windows of the current size (capped at sample_size).
    ref_p = calibrate(_finite(c.ref, conf))
    n = min(len(cur_conf), c.settings.sample_size)
    null = ref_p[c.rng.integers(0, len(ref_p), size=(c.settings.resamples, n))].mean(1)
    ref_acc = float(correct.mean())
    threshold = _accuracy_threshold(c, null, ref_acc)
    details: dict[str, Any] = {
        "method": "isotonic_confidence_calibration",
        "direction": "below",
        "n_current": len(cur_conf),
        "reference_accuracy": ref_acc,
        "reference_estimated_accuracy": float(ref_p.mean()),
        "calibration_rows": int(ok.sum()),
        "tolerance": c.settings.accuracy_tolerance,
        "p_value": ds.exceedance(value, null, upper=False),
    }
    cur_lab = _labelled(c.cur, label, truth)
    if len(cur_lab):  # lets the dashboard show estimated next to actual where feedback exists
        details["labelled_accuracy"] = float(_correct(cur_lab, label, truth).mean())
        details["n_labelled"] = len(cur_lab)
    return c.result(value, threshold, value < threshold, details)


_RUNNERS: dict[str, Callable[[_Check], CheckResult]] = {
    "embedding": _check_embedding,
    "categorical": _check_categorical,
    "numeric": _check_numeric,
    "descriptor": _check_descriptor,
    "labelled_accuracy": _check_labelled,
    "estimated_accuracy": _check_estimated,
}
