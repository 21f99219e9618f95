"""Drift checks: one runner over a list of declared checks, comparing a current window with a reference.

Inputs are two DataFrames with the columns ``text`` (str), ``label`` (predicted label), ``confidence``
(float), ``embedding`` (384 floats, may be missing) and optionally ``true_label`` (str or None) and
``id``. Storage, windows and scheduling live elsewhere; this package is pure computation.

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
and one matrix product (:func:`~tuneloop.monitor.drift.stats.mmd2_null`), the time blocks from a
summed-area table of the reference's kernel once per reference, so the cost does not grow with the
window (``bench/drift.py`` times it). For the dashboard's "examples farthest from reference"
the current rows with the largest MMD witness (similarity to the current sample minus similarity
to the reference sample) are reported: they sit where the current window has mass the reference
lacks, i.e. they explain the drift, whereas plain outliers of either side score about zero.

*Anything learnt from the reference is fitted on rows that are not compared.* The PCA basis, the
kernel bandwidth and the OOV vocabulary come from reference rows outside the compared sample
(:class:`~tuneloop.monitor.drift.stats.SamplePlan`); otherwise the reference would look "closer to
itself" than new data does and every window would drift.

*Model outputs against the same model.* Prediction, confidence and accuracy checks compare only
current rows served by the reference's model version, against reference rows that version was
not trained on (:func:`output_sides`): held-out rows and earlier traffic the version re-scored after
its promotion, counted per source in ``reference_rows_by_source``; input checks see every row.

*Quality.* ``labelled_accuracy`` uses the current window's feedback; ``estimated_accuracy`` is a
CBPE-style label-free estimate: isotonic regression of correctness on confidence, fitted on the
reference's labelled rows, averaged over the current window, with a 95 % interval and a
``reliable`` flag (:func:`mark_reliability`). Both alarm only when accuracy falls more than
``settings.accuracy_tolerance`` below the reference's, and significantly so: labelled accuracy by
an exact one-sided test of the per-row outcomes (Fisher's, the complete permutation test, so no
resampling error), the estimate below its bootstrap lower bound at the same n.
"""

from tuneloop.monitor.drift.checks import DEFAULT_CHECKS, CheckKind, CheckResult, CheckSpec, Skip
from tuneloop.monitor.drift.context import REFERENCE_CACHE, reference_fingerprint
from tuneloop.monitor.drift.quality import classification_summary, fit_confidence_calibration
from tuneloop.monitor.drift.report import render_report
from tuneloop.monitor.drift.runner import MIN_OUTPUT_ROWS, mark_reliability, output_sides, rows_by_source, run_checks

__all__ = [
    "DEFAULT_CHECKS",
    "MIN_OUTPUT_ROWS",
    "REFERENCE_CACHE",
    "CheckKind",
    "CheckResult",
    "CheckSpec",
    "Skip",
    "classification_summary",
    "fit_confidence_calibration",
    "mark_reliability",
    "output_sides",
    "reference_fingerprint",
    "render_report",
    "rows_by_source",
    "run_checks",
]
