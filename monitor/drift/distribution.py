"""Checks of one column's distribution: predicted labels (Jensen-Shannon), numbers and text
descriptors (Wasserstein)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd

from tuneloop.monitor.drift import stats as ds
from tuneloop.monitor.drift.checks import CheckResult, Skip
from tuneloop.monitor.drift.context import CheckContext, finite_values, sample_sizes


def check_categorical(c: CheckContext) -> CheckResult:
    c.need_columns()
    col = c.spec.columns[0]
    cats = np.asarray(c.labels + ["(other)"])
    ref_codes = ds.label_codes(c.ref[col].tolist(), c.labels)
    cur_codes = ds.label_codes(c.cur[col].tolist(), c.labels)

    def fit(plan: ds.SamplePlan) -> tuple[np.ndarray, np.ndarray | None]:
        ref_s = ref_codes[plan.ref]
        if not plan.has_blocks:
            return ref_s, None
        return ref_s, ds.js_blocks(ref_s, ref_codes[plan.blocks], len(cats), c.blocks(len(plan.blocks), plan.n_cur))

    plan, (ref_s, block_null) = c.fitted(len(ref_codes), len(cur_codes), fit)
    cur_s = cur_codes[c.current_rows(len(cur_codes))]
    a = np.bincount(ref_s, minlength=len(cats))
    b = np.bincount(cur_s, minlength=len(cats))
    value = float(ds.js_distance(a, b))
    null = ds.js_null(np.concatenate([ref_s, cur_s]), len(cats), c.permutations(len(ref_s), len(cur_s)))
    threshold, decision = c.decide(value, null, block_null)
    details: dict[str, Any] = {
        "method": "jensen_shannon",
        "direction": "above",
        **sample_sizes(plan, len(ref_codes), len(cur_codes)),
        **decision,
        "reference_shares": dict(zip(cats.tolist(), (a / a.sum()).tolist(), strict=True)),
        "current_shares": dict(zip(cats.tolist(), (b / b.sum()).tolist(), strict=True)),
    }
    if c.param("evidently", False):
        details["evidently_value_drift"] = evidently_value_drift(
            pd.Series(cats[ref_s]), pd.Series(cats[cur_s]), "categorical"
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


Values = Callable[[np.ndarray], np.ndarray]
"""Per-row values of the rows at the given positions (so a descriptor is computed on sampled rows only)."""


def _numeric_distance(
    c: CheckContext,
    n_ref_rows: int,
    n_cur_rows: int,
    fit_values: Callable[[ds.SamplePlan], tuple[Values, Any, dict[str, Any]]],
    cur_values: Callable[[Any, np.ndarray], np.ndarray],
) -> CheckResult:
    """Normalised Wasserstein-1 (Evidently's "Wasserstein distance (normed)") with a calibrated threshold.

    ``fit_values(plan)`` returns the value function of the reference rows, what it learnt from the
    plan's fit rows (e.g. a vocabulary; cached with the reference side) and details to report;
    ``cur_values(learnt, positions)`` the values of current rows.
    """

    def fit(plan: ds.SamplePlan) -> tuple[np.ndarray, float, Any, np.ndarray | None, dict[str, Any]]:
        ref_values, learnt, extra = fit_values(plan)
        ref = ref_values(plan.ref)
        scale = max(float(np.std(ref)), 1e-3)
        block_null = None
        if plan.has_blocks:
            block_null = ds.wasserstein_blocks(ref, ref_values(plan.blocks), c.blocks(len(plan.blocks), plan.n_cur))
            block_null = block_null / scale
        return ref, scale, learnt, block_null, extra

    plan, (ref, scale, learnt, block_null, extra) = c.fitted(n_ref_rows, n_cur_rows, fit)
    cur_s = cur_values(learnt, c.current_rows(n_cur_rows))
    value = ds.wasserstein_1d(ref, cur_s) / scale
    null = ds.wasserstein_null(np.concatenate([ref, cur_s]), c.permutations(len(ref), len(cur_s))) / scale
    threshold, decision = c.decide(value, null, block_null)
    details = {
        "method": "wasserstein_normed",
        "direction": "above",
        **sample_sizes(plan, n_ref_rows, n_cur_rows),
        **decision,
        "scale": scale,
        "reference_mean": float(np.mean(ref)),
        "current_mean": float(np.mean(cur_s)),
        **extra,
    }
    return c.result(value, threshold, value > threshold, details)


def check_numeric(c: CheckContext) -> CheckResult:
    c.need_columns()
    ref_v, cur_v = finite_values(c.ref, c.spec.columns[0]), finite_values(c.cur, c.spec.columns[0])
    return _numeric_distance(c, len(ref_v), len(cur_v), lambda plan: (lambda pos: ref_v[pos], None, {}),
                             lambda _learnt, pos: cur_v[pos])


def _texts(frame: pd.DataFrame, col: str) -> np.ndarray:
    return frame[col].fillna("").astype(str).to_numpy()


def check_descriptor(c: CheckContext) -> CheckResult:
    c.need_columns()
    name = c.spec.params["descriptor"]
    ref_t, cur_t = _texts(c.ref, c.spec.columns[0]), _texts(c.cur, c.spec.columns[0])
    fn = ds.DESCRIPTORS.get(name)

    def fit_values(plan: ds.SamplePlan) -> tuple[Values, Any, dict[str, Any]]:
        extra: dict[str, Any] = {"descriptor": name}
        if name == "oov_share":
            vocab = ds.build_vocabulary(ref_t[plan.fit[: int(c.param("vocab_rows", 20_000))]])
            if not vocab:
                raise Skip("no reference words outside the compared sample")
            extra["vocabulary_size"] = len(vocab)
            return lambda pos: ds.oov_share(list(ref_t[pos]), vocab), vocab, extra
        return lambda pos: fn(list(ref_t[pos])), None, extra

    def cur_values(vocab: Any, pos: np.ndarray) -> np.ndarray:
        return ds.oov_share(list(cur_t[pos]), vocab) if name == "oov_share" else fn(list(cur_t[pos]))

    return _numeric_distance(c, len(ref_t), len(cur_t), fit_values, cur_values)
