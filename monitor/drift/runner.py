"""Drift checks: one runner over a list of declared checks, comparing a current window with a reference.

Inputs are two DataFrames with the columns ``text`` (str), ``label`` (predicted label), ``confidence``
(float), ``embedding`` (384 floats, may be missing) and optionally ``true_label`` (str or None) and
``id``. Storage, windows and scheduling live elsewhere; this module is pure computation.

Method, and why
---------------
*One statistic, one calibrated threshold per check.* Every check reduces the two windows to a
statistic (MMD for embeddings, Jensen-Shannon distance for labels, normalised Wasserstein for
numbers, accuracy for quality) and compares it with thresholds measured at exactly the sample
sizes of the real comparison, never a magic constant: (a) a permutation test over the compared
reference and current samples (``settings.resamples`` random splits of the two, fixed seed; the
critical value of the p-value ``(1 + #null >= value) / (1 + #null)`` at ``1 - settings.quantile``),
whose false-alarm rate is bounded by ``1 - quantile`` whatever the statistic's shape (a rare,
zero-inflated share such as non-ASCII characters at 50 rows per side included: a threshold taken
from reference-vs-reference splits alone depended on how many such rows the reference pool
happened to hold, and false-alarmed on 7 % of same-distribution windows); and (b) the spread of
contiguous *time blocks* of the reference against the same reference sample, so that a window
must differ more than a stretch of the reference differs from the rest of it (traffic comes in
bursts; shuffled splits cannot see that). The larger of the two, each widened by
``settings.threshold_margin`` times its distance from its null's median, is the threshold. The
seed is fixed rather than drawn per run: the same rows give the same verdict, and the permutation
bound holds for any fixed set of permutations. Everything learnt from the reference (samples,
projection, time-block null, calibration) is fitted once per reference and cached
(:data:`REFERENCE_CACHE`); a scheduled check computes only the current side.

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
not only of the mean). All permutations come from one kernel matrix over the two compared samples
and one matrix product (:func:`~tuneloop.monitor.drift_stats.mmd2_null`), the time blocks from a
summed-area table of the reference's kernel once per reference, so the cost does not grow with the
window (``bench/drift.py`` times it). For the dashboard's "examples farthest from reference"
the current rows with the largest MMD witness (similarity to the current sample minus similarity
to the reference sample) are reported: they sit where the current window has mass the reference
lacks, i.e. they explain the drift, whereas plain outliers of either side score about zero.

*Anything learnt from the reference is fitted on rows that are not compared.* The PCA basis, the
kernel bandwidth and the OOV vocabulary come from reference rows outside the compared sample
(:class:`~tuneloop.monitor.drift_stats.SamplePlan`); otherwise the reference would look "closer to
itself" than new data does and every window would drift.

*Model outputs against the same model.* Prediction, confidence and accuracy checks compare only
current rows served by the reference's model version, against reference rows that version was
not trained on (:func:`output_sides`); input checks see every row.

*Quality.* ``labelled_accuracy`` uses the current window's feedback; ``estimated_accuracy`` is a
CBPE-style label-free estimate: isotonic regression of correctness on confidence, fitted on the
reference's labelled rows, averaged over the current window, with a 95 % interval and a
``reliable`` flag (:func:`mark_reliability`). Both alarm when accuracy falls below
``min(reference accuracy - settings.accuracy_tolerance, bootstrap lower bound at the same n)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
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
    scope: Literal["input", "output"] = "input"
    """``output``: looks at the model's outputs, so compares only rows of the reference's model version."""


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
    CheckSpec("prediction_drift", "categorical", ("label",), {"evidently": True}, scope="output"),
    CheckSpec("confidence_drift", "numeric", ("confidence",), scope="output"),
    CheckSpec("text_length_drift", "descriptor", ("text",), {"descriptor": "text_length"}),
    CheckSpec("oov_rate_drift", "descriptor", ("text",), {"descriptor": "oov_share", "vocab_rows": 20_000}),
    CheckSpec("non_ascii_drift", "descriptor", ("text",), {"descriptor": "non_ascii_share"}),
    CheckSpec("labelled_accuracy", "labelled_accuracy", ("label", "true_label"), scope="output"),
    CheckSpec("estimated_accuracy", "estimated_accuracy", ("confidence", "label", "true_label"), scope="output"),
)
"""The checks tuneloop runs; ``settings.checks`` picks which of them by name."""


class Skip(Exception):
    """A check that cannot run on these windows (missing column, too few rows or labels)."""


# --------------------------------------------------------------------------- runner


class _ReferenceCache:
    """Reference sides of checks already fitted (samples, projection, time-block null), by reference content.

    Fit once, calculate many: a scheduled check against an unchanged reference only computes the
    current side. Keyed by a fingerprint of the reference rows, so a replaced reference is refitted.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_fit(self, key: tuple[Any, ...], fit: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = fit()
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


REFERENCE_CACHE = _ReferenceCache()


def reference_fingerprint(frame: pd.DataFrame) -> str:
    """Cheap content hash of a reference frame (every column in row order; a few of the embeddings), the cache's key."""
    cols = [c for c in frame.columns if c != "embedding"]
    h = hashlib.sha1(str((len(frame), cols)).encode())
    if cols:
        h.update(pd.util.hash_pandas_object(frame[cols].astype(str), index=False).to_numpy().tobytes())
    if "embedding" in frame.columns and len(frame):
        for i in {0, len(frame) // 2, len(frame) - 1}:
            v = frame["embedding"].iloc[i]
            if isinstance(v, np.ndarray | list | tuple):
                h.update(np.asarray(v, dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Check:
    """Everything one check computation needs."""

    spec: CheckSpec
    ref: pd.DataFrame
    cur: pd.DataFrame
    settings: DriftSettings
    labels: list[str]
    seed: int
    reference_key: str

    def param(self, name: str, default: Any) -> Any:
        return self.spec.params.get(name, default)

    def rng(self, part: str) -> np.random.Generator:
        """One independent, seeded stream per check and purpose: same inputs, same results."""
        return np.random.default_rng([self.seed, zlib.crc32(self.spec.name.encode()), zlib.crc32(part.encode())])

    def need_columns(self) -> None:
        for side, frame in (("reference", self.ref), ("current", self.cur)):
            missing = [c for c in self.spec.columns if c not in frame.columns]
            if missing:
                raise Skip(f"{side} has no column {missing}")

    def plan(self, n_ref: int, n_cur: int) -> ds.SamplePlan:
        try:
            return ds.plan_samples(n_ref, n_cur, self.settings.sample_size, self.rng("plan"))
        except ValueError as e:
            raise Skip(str(e)) from None

    def fitted(
        self, n_ref_rows: int, n_cur_rows: int, fit: Callable[[ds.SamplePlan], Any]
    ) -> tuple[ds.SamplePlan, Any]:
        """The reference side (plan + whatever ``fit`` learns from it), fitted once per reference and sample size."""
        plan = self.plan(n_ref_rows, n_cur_rows)
        key = (self.reference_key, self.spec.name, repr(sorted(self.spec.params.items())), n_ref_rows, plan.n_cur,
               self.settings.sample_size, self.settings.resamples, self.seed)
        return plan, REFERENCE_CACHE.get_or_fit(key, lambda: fit(plan))

    def current_rows(self, n_cur_rows: int) -> np.ndarray:
        return ds.sample_current(n_cur_rows, self.settings.sample_size, self.rng("current"))

    def permutations(self, n_ref: int, n_cur: int) -> np.ndarray:
        """Random splits of the two compared samples; enough of them for a p-value to reach 1 - quantile at all."""
        needed = math.ceil(1.0 / (1.0 - self.settings.quantile) - 1e-9) - 1
        n = max(self.settings.resamples, needed)
        return ds.split_indicators(n_ref + n_cur, n_ref, n, self.rng("permutations"))

    def block_starts(self, n_rows: int, block: int) -> np.ndarray:
        return ds.block_starts(n_rows, block, self.settings.resamples, self.rng("blocks"))

    def blocks(self, n_rows: int, block: int) -> np.ndarray:
        return ds.block_indicators(n_rows, block, self.block_starts(n_rows, block))

    def threshold(self, null: np.ndarray, upper: bool = True) -> float:
        t = ds.calibrated_threshold(null, self.settings.quantile, self.settings.threshold_margin, upper=upper)
        floor = self.spec.params.get("min_threshold")
        return max(t, float(floor)) if floor is not None and upper else t

    def decide(
        self, value: float, permutation_null: np.ndarray, block_null: np.ndarray | None
    ) -> tuple[float, dict[str, Any]]:
        """Threshold of a distance: above both the permutation critical value and the time-block threshold.

        The permutation part bounds false alarms by ``1 - quantile`` when the window is a random
        sample of the reference's distribution (widened by ``threshold_margin``, so in practice
        well below); the time-block part asks the window to differ more
        than a contiguous stretch of the reference differs from the rest (traffic drifts a little
        by itself: topics come in bursts).
        """
        median = float(np.median(permutation_null))
        t_perm = ds.permutation_threshold(permutation_null, 1.0 - self.settings.quantile)
        t_perm += self.settings.threshold_margin * max(t_perm - median, 0.0)  # margin: fewer alarms, still exact
        details: dict[str, Any] = {
            "p_value": ds.exceedance(value, permutation_null),
            "permutations": len(permutation_null),
            "permutation_threshold": t_perm,
            "null_median": median,
        }
        threshold = t_perm
        if block_null is not None:
            t_block = self.threshold(block_null)
            details.update(time_blocks=len(block_null), block_threshold=t_block,
                           block_p_value=ds.exceedance(value, block_null), block_median=float(np.median(block_null)))
            threshold = max(threshold, t_block)
        else:
            details["time_blocks"] = 0  # reference too short for distinct blocks: permutation test only
        floor = self.spec.params.get("min_threshold")
        return (max(threshold, float(floor)) if floor is not None else threshold), details

    def result(self, value: float, threshold: float, drifted: bool, details: dict[str, Any]) -> CheckResult:
        return CheckResult(self.spec.name, float(value), float(threshold), bool(drifted), _jsonable(details))


MIN_OUTPUT_ROWS = 20
"""Fewest rows on each side for a model-output check (after keeping only the reference's version)."""


def output_sides(
    reference: pd.DataFrame, current: pd.DataFrame, version: str | None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The rows a model-output check may compare, and how many were left out.

    Reference: rows the model was not trained on (``split`` other than "train"); in-sample
    predictions are more confident and more often right than anything live traffic gets. Current:
    rows served by ``version`` only, so a window that straddles a promotion does not mix two models.
    """
    note: dict[str, Any] = {}
    if "split" in reference.columns:
        held_out = reference[reference["split"].astype(str) != "train"]
        note["reference_training_rows_left_out"] = len(reference) - len(held_out)
        reference = held_out.reset_index(drop=True)
    if version is not None and "model_version" in current.columns:
        same = current[current["model_version"].astype(str) == version]
        note["current_other_version_rows_left_out"] = len(current) - len(same)
        note["model_version"] = version
        current = same.reset_index(drop=True)
    return reference, current, note


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
    results = []
    for spec in checks:
        ref, cur = (out_ref, out_cur) if spec.scope == "output" else (reference, current)
        try:
            if spec.scope == "output" and (len(ref) < MIN_OUTPUT_ROWS or len(cur) < MIN_OUTPUT_ROWS):
                raise Skip(f"model-output check needs {MIN_OUTPUT_ROWS} rows per side: {len(ref)} reference rows "
                           f"the model was not trained on, {len(cur)} current rows served by {version or 'it'}")
            r = _RUNNERS[spec.kind](_Check(spec, ref, cur, settings, list(labels), seed, keys[spec.scope]))
            if spec.scope == "output" and out_note:
                r = replace(r, details={**r.details, **_jsonable(out_note)})
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


@dataclass(frozen=True)
class _EmbeddingReference:
    """The fitted reference side of the embedding check."""

    mean: np.ndarray
    axes: np.ndarray
    gamma: float
    ref_z: np.ndarray
    k_ref: np.ndarray
    block_null: np.ndarray | None


def _check_embedding(c: _Check) -> CheckResult:
    c.need_columns()
    col = c.spec.columns[0]
    ref_vals, cur_vals = c.ref[col].to_numpy(), c.cur[col].to_numpy()
    ref_ok, dim = _embedding_rows(ref_vals)
    cur_ok, _ = _embedding_rows(cur_vals, dim or None)

    def fit(plan: ds.SamplePlan) -> _EmbeddingReference:
        # Projection and bandwidth are learnt from reference rows that are never compared.
        fit_x = _stack(ref_vals, ref_ok[plan.fit])
        if len(fit_x) < 3:
            raise Skip("reference too small to fit the projection")
        mean, axes = ds.pca_basis(fit_x, int(c.param("dims", 32)))
        gamma = ds.median_gamma(ds.project(fit_x, mean, axes), c.rng("bandwidth"))
        ref_z = ds.project(_stack(ref_vals, ref_ok[plan.ref]), mean, axes)
        k_ref = ds.rbf(ref_z, ref_z, gamma)
        block_null = None
        if plan.has_blocks:
            blocks_z = ds.project(_stack(ref_vals, ref_ok[plan.blocks]), mean, axes)
            block_null = ds.mmd2_blocks(ds.mean_offdiagonal(k_ref), ds.rbf(blocks_z, blocks_z, gamma),
                                        ds.rbf(ref_z, blocks_z, gamma), c.block_starts(len(blocks_z), plan.n_cur),
                                        plan.n_cur)
        return _EmbeddingReference(mean, axes, gamma, ref_z, k_ref, block_null)

    plan, f = c.fitted(len(ref_ok), len(cur_ok), fit)
    cur_pos = c.current_rows(len(cur_ok))
    cur_z = ds.project(_stack(cur_vals, cur_ok[cur_pos]), f.mean, f.axes)
    k_cur, k_cross = ds.rbf(cur_z, cur_z, f.gamma), ds.rbf(f.ref_z, cur_z, f.gamma)
    value = ds.mmd2_unbiased(f.k_ref, k_cur, k_cross)
    null = ds.mmd2_null(np.block([[f.k_ref, k_cross], [k_cross.T, k_cur]]), c.permutations(plan.n_ref, len(cur_pos)))
    del k_cur
    threshold, decision = c.decide(value, null, f.block_null)

    # Examples that most explain the difference, over the whole current window: the MMD witness
    # (mean similarity to the current sample minus mean similarity to the reference sample) is
    # highest where the current window has mass the reference lacks; outliers of both score ~0.
    n_anchor = int(c.param("witness_anchors", 500))
    pick = c.rng("witness").permutation(len(cur_pos))[:n_anchor]  # cur_pos is in row order: anchor a random part
    ref_anchor, cur_anchor = f.ref_z[:n_anchor], cur_z[pick]
    anchor_of = np.full(len(cur_ok), -1)
    anchor_of[cur_pos[pick]] = np.arange(len(pick))
    witness = np.empty(len(cur_ok))
    step = 20_000
    for i in range(0, len(cur_ok), step):
        chunk = ds.project(_stack(cur_vals, cur_ok[i : i + step]), f.mean, f.axes)
        own = ds.mean_similarity(chunk, cur_anchor, f.gamma)
        is_anchor = anchor_of[i : i + step] >= 0  # leave out each anchor's similarity to itself (1)
        own[is_anchor] = (own[is_anchor] * len(cur_anchor) - 1.0) / max(len(cur_anchor) - 1, 1)
        witness[i : i + step] = own - ds.mean_similarity(chunk, ref_anchor, f.gamma)
    order = np.argsort(-witness, kind="stable")[: int(c.param("farthest", 10))]
    far_rows = cur_ok[order]
    details: dict[str, Any] = {
        "method": f"pca{f.axes.shape[0]}_mmd_rbf",
        "direction": "above",
        **_sizes(plan, len(ref_ok), len(cur_ok)),
        "missing_reference": len(ref_vals) - len(ref_ok),
        "missing_current": len(cur_vals) - len(cur_ok),
        "dims": int(f.axes.shape[0]),
        "gamma": f.gamma,
        **decision,
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
        **_sizes(plan, len(ref_codes), len(cur_codes)),
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
    c: _Check,
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
        **_sizes(plan, n_ref_rows, n_cur_rows),
        **decision,
        "scale": scale,
        "reference_mean": float(np.mean(ref)),
        "current_mean": float(np.mean(cur_s)),
        **extra,
    }
    return c.result(value, threshold, value > threshold, details)


def _finite(frame: pd.DataFrame, col: str) -> np.ndarray:
    v = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
    return v[np.isfinite(v)]


def _check_numeric(c: _Check) -> CheckResult:
    c.need_columns()
    ref_v, cur_v = _finite(c.ref, c.spec.columns[0]), _finite(c.cur, c.spec.columns[0])
    return _numeric_distance(c, len(ref_v), len(cur_v), lambda plan: (lambda pos: ref_v[pos], None, {}),
                             lambda _learnt, pos: cur_v[pos])


def _texts(frame: pd.DataFrame, col: str) -> np.ndarray:
    return frame[col].fillna("").astype(str).to_numpy()


def _check_descriptor(c: _Check) -> CheckResult:
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
    null = ref_correct[c.rng("bootstrap").integers(0, len(ref_correct), size=(c.settings.resamples, n))].mean(1)
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


def _check_estimated(c: _Check) -> CheckResult:
    """CBPE-style: calibrate confidence on the reference's labels, average the calibrated confidence now.

    Valid while P(correct | confidence) stays as in the reference (covariate shift, harder or easier
    inputs); it cannot see a model that is confidently wrong on a new kind of input, which is what
    the embedding check and labelled accuracy are for, and why :func:`mark_reliability` flags it.
    The answer carries a 95 % interval of the window's accuracy (calibration and sampling error).
    """
    conf, label, truth = c.spec.columns
    if conf not in c.cur.columns or conf not in c.ref.columns:
        raise Skip(f"no {conf} column")
    cur_conf = _finite(c.cur, conf)
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
        return _Calibration(steps, replicates, np.interp(_finite(c.ref, conf), *steps), float(y.mean()), len(x))

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


_RUNNERS: dict[str, Callable[[_Check], CheckResult]] = {
    "embedding": _check_embedding,
    "categorical": _check_categorical,
    "numeric": _check_numeric,
    "descriptor": _check_descriptor,
    "labelled_accuracy": _check_labelled,
    "estimated_accuracy": _check_estimated,
}
