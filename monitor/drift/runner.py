"""The runner: runs the declared checks of a current window against a reference, one result per check.

Storage, windows and scheduling live elsewhere; this is pure computation (see :mod:`tuneloop.monitor.drift`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd

from tuneloop.monitor.config import DriftSettings
from tuneloop.monitor.drift.checks import DEFAULT_CHECKS, CheckResult, CheckSpec, Skip
from tuneloop.monitor.drift.context import CheckContext, jsonable, reference_fingerprint
from tuneloop.monitor.drift.distribution import check_categorical, check_descriptor, check_numeric
from tuneloop.monitor.drift.embedding import check_embedding
from tuneloop.monitor.drift.quality import check_estimated, check_labelled
from tuneloop.retrain.reference import not_trained_on

log = logging.getLogger(__name__)


CALCULATORS: dict[str, Callable[[CheckContext], CheckResult]] = {
    "embedding": check_embedding,
    "categorical": check_categorical,
    "numeric": check_numeric,
    "descriptor": check_descriptor,
    "labelled_accuracy": check_labelled,
    "estimated_accuracy": check_estimated,
}


MIN_OUTPUT_ROWS = 20
"""Fewest rows on each side for a model-output check (after keeping only the reference's version)."""


def output_sides(
    reference: pd.DataFrame, current: pd.DataFrame, version: str | None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The rows a model-output check may compare, and how many were left out.

    Reference: rows the model was not trained on (``split`` other than "train"); in-sample
    predictions are more confident and more often right than anything live traffic gets. Those are
    held-out rows and, once the server has re-scored it, earlier traffic as ``version`` sees it
    (split "rescored"): every reference row is then an output of ``version`` itself. Current: rows
    served by ``version`` only, so a window that straddles a promotion does not mix two models. Like
    is compared with like: a difference in confidence or predicted labels is the traffic's doing,
    never the difference between two models. ``reference_rows_by_source`` says which rows were used.
    """
    note: dict[str, Any] = {}
    if "split" in reference.columns:
        held_out = not_trained_on(reference)
        note["reference_training_rows_left_out"] = len(reference) - len(held_out)
        note["reference_rows_by_source"] = rows_by_source(held_out)
        reference = held_out
    if version is not None and "model_version" in current.columns:
        same = current[current["model_version"].astype(str) == version]
        note["current_other_version_rows_left_out"] = len(current) - len(same)
        note["model_version"] = version
        current = same.reset_index(drop=True)
    return reference, current, note


def rows_by_source(reference: pd.DataFrame) -> dict[str, int]:
    """Reference rows per ``split`` (val, holdout, rescored...; "unspecified" when a row has none)."""
    counts = reference["split"].astype(object).where(reference["split"].notna(), "unspecified").astype(str)
    return {str(k): int(v) for k, v in counts.value_counts().sort_index().items()}


def run_checks(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    settings: DriftSettings,
    labels: Sequence[str],
    seed: int = 0,
    checks: Sequence[CheckSpec] | None = None,
    version: str | None = None,
    output_reference: pd.DataFrame | None = None,
) -> list[CheckResult]:
    """Run the declared checks of ``current`` against ``reference``; one result per check that could run.

    ``checks`` defaults to the :data:`DEFAULT_CHECKS` named in ``settings.checks``. Input checks
    (embedding, text descriptors) compare all rows; model-output checks (prediction, confidence,
    accuracies) compare ``output_reference`` (default: ``reference``) without its training rows
    against the current rows served by ``version`` (see :func:`output_sides`). A check that cannot
    run (column absent, fewer than ``settings.min_labels`` labels, too few rows) is left out of the
    answer and logged, and so is one that fails unexpectedly (with its traceback), so the others are
    still recorded. ``seed`` fixes every random draw: same inputs, same results.
    """
    if checks is None:
        unknown = set(settings.checks) - {c.name for c in DEFAULT_CHECKS}
        if unknown:
            raise ValueError(f"unknown drift checks in settings.checks: {sorted(unknown)}")
        checks = [c for c in DEFAULT_CHECKS if c.name in settings.checks]
    out_ref, out_cur, out_note = output_sides(reference if output_reference is None else output_reference,
                                              current, version)
    keys = {"input": reference_fingerprint(reference), "output": reference_fingerprint(out_ref)}
    notes = {"output": jsonable(out_note),
             "input": {"reference_rows_by_source": rows_by_source(reference)} if "split" in reference.columns else {}}
    results = []
    for spec in checks:
        ref, cur = (out_ref, out_cur) if spec.scope == "output" else (reference, current)
        try:
            if spec.scope == "output" and (len(ref) < MIN_OUTPUT_ROWS or len(cur) < MIN_OUTPUT_ROWS):
                raise Skip(f"model-output check needs {MIN_OUTPUT_ROWS} rows per side: {len(ref)} reference rows "
                           f"the model was not trained on, {len(cur)} current rows served by {version or 'it'}")
            r = CALCULATORS[spec.kind](CheckContext(spec, ref, cur, settings, list(labels), seed, keys[spec.scope]))
            if notes[spec.scope]:
                r = replace(r, details={**r.details, **notes[spec.scope]})
            results.append(r)
        except Skip as why:
            log.info("drift check %s skipped: %s", spec.name, why)
        except Exception:  # one broken check must not silence the others
            log.exception("drift check %s failed", spec.name)
    return mark_reliability(results)


def mark_reliability(results: list[CheckResult]) -> list[CheckResult]:
    """Flag the label-free estimate ``reliable: false`` (with the reason) when its assumption is broken.

    The estimate assumes P(correct | confidence) is what it was on the calibration rows. That
    cannot be trusted once the inputs themselves moved away from them (the embedding check
    drifted), nor when it was not checked at all (no embedding check ran), nor when this window's
    own feedback contradicts it.
    """
    reasons = []
    embedding = [r for r in results if r.details.get("method", "").startswith("pca")]
    if not embedding:
        reasons.append("input drift unknown: no embedding check ran on this window")
    for r in embedding:
        if r.drifted:
            reasons.append(f"inputs left the calibration data ({r.metric} {r.value:.3g} > threshold {r.threshold:.3g})")
    out = []
    for r in results:
        if r.details.get("method") == "isotonic_confidence_calibration":
            own = r.details.get("unreliable_reasons") or []
            why = reasons + own
            r = replace(r, details={**r.details, "reliable": not why, "unreliable_reasons": why})
        out.append(r)
    return out
