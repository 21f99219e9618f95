"""Evidently HTML report for one drift check: Evidently's own drift views plus tuneloop's verdicts.

The report is for people: Evidently's ``ValueDrift`` on the predicted label and the confidence and
its ``DataDriftPreset`` over the text descriptors (``TextLength`` computed by Evidently, OOV and
non-ASCII shares by :mod:`tuneloop.monitor.drift.stats`), preceded by a small table of the results
:func:`tuneloop.monitor.drift.run_checks` recorded (those are the verdicts alerts are based on;
Evidently's default thresholds may disagree with them) and the current texts farthest from the
reference. At most :data:`REPORT_ROWS` rows per side are drawn (fixed seed), so rendering stays
around a second whatever the window size.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tuneloop.monitor.drift import stats as ds
from tuneloop.monitor.drift.checks import CheckResult

REPORT_ROWS = 2000
"""Rows per side shown in the report (a fixed-seed sample of larger windows)."""


def _sample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Sampled rows and the positions of the rows not sampled."""
    perm = rng.permutation(len(frame))
    return frame.iloc[np.sort(perm[:n])], perm[n:]


def _table(reference: pd.DataFrame, current: pd.DataFrame, vocab: frozenset[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    def one(frame: pd.DataFrame) -> pd.DataFrame:
        texts = frame["text"].fillna("").astype(str).tolist() if "text" in frame else []
        out = pd.DataFrame(index=range(len(frame)))
        if "label" in frame:
            out["label"] = frame["label"].astype(str).to_numpy()
        if "confidence" in frame:
            out["confidence"] = pd.to_numeric(frame["confidence"], errors="coerce").to_numpy()
        if texts:
            out["text"] = texts
            out["oov_share"] = ds.oov_share(texts, vocab) if vocab else 0.0
            out["non_ascii_share"] = ds.non_ascii_share(texts)
        return out

    return one(reference), one(current)


def _summary_html(results: Sequence[CheckResult], current: pd.DataFrame) -> str:
    rows = []
    for r in results:
        verdict = "DRIFT" if r.drifted else "ok"
        colour = "#c62828" if r.drifted else "#2e7d32"
        side = "below" if r.details.get("direction") == "below" else "above"
        p = r.details.get("p_value")
        rows.append(
            f"<tr><td>{html.escape(r.metric)}</td><td>{r.value:.6g}</td><td>{side} {r.threshold:.6g}</td>"
            f"<td style='color:{colour};font-weight:bold'>{verdict}</td>"
            f"<td>{'' if p is None else f'{p:.3f}'}</td></tr>"
        )
    far = ""
    emb = next((r for r in results if r.details.get("farthest_rows")), None)
    if emb is not None and "text" in current:
        texts = current["text"].astype(str).to_numpy()
        items = [f"<li>{html.escape(texts[i][:200])}</li>" for i in emb.details["farthest_rows"] if 0 <= i < len(texts)]
        far = f"<h3>Current texts farthest from the reference</h3><ol>{''.join(items)}</ol>"
    return (
        "<section id='tuneloop-summary' style='font-family:sans-serif;margin:16px 24px'>"
        "<h2>tuneloop drift checks</h2>"
        "<p>Each threshold is the larger of an exact permutation test over the compared samples and the "
        "spread of contiguous time blocks of the reference, at the compared sample sizes; these verdicts "
        "drive alerts. The Evidently views below use Evidently's default tests.</p>"
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>"
        "<tr><th>check</th><th>value</th><th>drift when</th><th>verdict</th><th>p-value</th></tr>"
        f"{''.join(rows)}</table>{far}</section>"
    )


def render_report(reference: pd.DataFrame, current: pd.DataFrame, results: Sequence[CheckResult], path: Path) -> Path:
    """Write an Evidently HTML report comparing ``current`` with ``reference`` to ``path`` (atomically).

    ``results`` are the :class:`CheckResult` of the same check (shown first, with the farthest
    examples when the embedding check ran). Returns ``path``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.descriptors import TextLength
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    path = Path(path)
    rng = np.random.default_rng(0)
    ref_s, ref_rest = _sample(reference, REPORT_ROWS, rng)
    cur_s, _ = _sample(current, REPORT_ROWS, rng)
    # The OOV vocabulary comes from reference rows outside the shown sample (else the reference has no OOV words).
    vocab_rows = ref_rest if len(ref_rest) >= 50 else np.arange(len(reference))[: len(reference) // 2]
    vocab = (
        ds.build_vocabulary(reference["text"].fillna("").astype(str).to_numpy()[vocab_rows[:20_000]])
        if "text" in reference
        else frozenset()
    )
    ref_t, cur_t = _table(ref_s, cur_s, vocab)

    metrics: list = []
    numeric, categorical, descriptors, drift_columns = [], [], [], []
    if "label" in ref_t and "label" in cur_t:
        categorical.append("label")
        metrics.append(ValueDrift(column="label"))
    if "confidence" in ref_t and "confidence" in cur_t:
        numeric.append("confidence")
        metrics.append(ValueDrift(column="confidence"))
    if "text" in ref_t and "text" in cur_t:
        numeric += ["oov_share", "non_ascii_share"]
        descriptors.append(TextLength("text", alias="text_length"))
        drift_columns = ["text_length", "oov_share", "non_ascii_share"]
        metrics.append(DataDriftPreset(columns=drift_columns))
    if not metrics:
        raise ValueError("nothing to report: neither label, confidence nor text columns are present")

    dd = DataDefinition(
        numerical_columns=numeric, categorical_columns=categorical, text_columns=["text"] if descriptors else []
    )
    snapshot = Report(metrics).run(
        Dataset.from_pandas(cur_t, dd, descriptors=descriptors or None),
        Dataset.from_pandas(ref_t, dd, descriptors=descriptors or None),
    )
    page = snapshot.get_html_str(as_iframe=False)
    summary = _summary_html(results, current)
    at = page.find("<body")
    at = page.find(">", at) + 1 if at >= 0 else 0
    page = page[:at] + summary + page[at:]

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
