"""Drift: the check runs, each metric against its threshold, examples, and the Evidently report."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from tuneloop.dashboard import charts, ui
from tuneloop.dashboard.data import check_runs, checks_frame, example_texts, promotions_from

EXAMPLE_KEYS = ("farthest_ids", "farthest_rows", "farthest_scores", "farthest_texts", "examples")


def examples_of(details: Any, texts: dict[str, str] | None = None) -> pd.DataFrame:
    """The current-window rows a check found farthest from the reference: text (when known), distance, id."""
    if not isinstance(details, dict):
        return pd.DataFrame()
    if isinstance(details.get("examples"), list) and details["examples"]:
        return pd.DataFrame([r if isinstance(r, dict) else {"text": r} for r in details["examples"]])
    ids = details.get("farthest_ids") or []
    scores = details.get("farthest_scores") or []
    given = details.get("farthest_texts") or []
    if not ids and not given:
        return pd.DataFrame()
    n = max(len(ids), len(given))
    rows = []
    for i in range(n):
        pid = str(ids[i]) if i < len(ids) else None
        text = given[i] if i < len(given) else (texts or {}).get(pid or "")
        rows.append({"text": text, "distance": scores[i] if i < len(scores) else None, "prediction id": pid})
    return pd.DataFrame(rows)


def scalar_details(details: Any) -> dict[str, Any]:
    if not isinstance(details, dict):
        return {}
    return {k: v for k, v in details.items() if k not in EXAMPLE_KEYS and not isinstance(v, dict | list)}


def run_now() -> None:
    """Button callback: run the checks on the server, then show the new check."""
    session = ui.current()
    with st.spinner("Running the drift checks…"):
        out = ui.call(session.api.run_checks, "running the checks")
    if out is not None:
        n = sum(bool(r.get("drifted")) for r in out.get("results", []))
        st.session_state["drift_check"] = out.get("check_id")
        st.toast(f"Check {out.get('check_id')} done: {n} of {len(out.get('results', []))} metrics drifted.",
                 icon=":material/ssid_chart:")


def metric_table(run: pd.DataFrame) -> None:
    """The run's metrics, drifted first: value, threshold, and which side of it is drift."""
    rows = []
    for r in sorted(run.itertuples(), key=lambda r: (not r.drifted, r.metric)):
        details = r.details if isinstance(r.details, dict) else {}
        direction = details.get("direction", "above")
        rows.append({
            "status": "drifted" if r.drifted else "ok", "metric": r.metric, "value": r.value,
            "threshold": r.threshold, "drift when": f"value {'>' if direction == 'above' else '<'} threshold",
            "p-value": details.get("p_value"),
        })
    table = pd.DataFrame(rows).style.map(ui.status_style, subset=["status"])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "value": st.column_config.NumberColumn(format="%.4g"),
        "threshold": st.column_config.NumberColumn(format="%.4g"),
        "p-value": st.column_config.NumberColumn(format="%.3f"),
    })


def render() -> None:
    session = ui.current()
    st.title("Drift")
    head, button = st.columns([4, 1])
    head.caption(f"Each check compares the current window with the reference ({session.settings.drift.reference} "
                 f"data); a metric drifts when it exceeds a threshold calibrated on the reference's own spread. "
                 f"Checks run every {session.settings.drift.interval_seconds / 60:g} min.")
    button.button("Run checks now", key="drift_run", icon=":material/play_arrow:", width="stretch",
                  disabled=not session.allows("admin"), help=session.why_not("admin"), on_click=run_now)

    items = ui.call(lambda: session.api.checks(limit=2000))
    if items is None:
        return
    checks = checks_frame(items)
    runs = check_runs(checks)
    if runs.empty:
        st.info(f"No checks yet — they run every {session.settings.drift.interval_seconds / 60:g} min once the "
                "current window and the reference each hold enough rows; run one now with the button above "
                "(role admin) or `tuneloop check`.", icon=":material/ssid_chart:")
        return
    models = ui.call(session.api.models) or {}
    promotions = promotions_from(models)

    labels = {int(r.id): f"#{int(r.id)} · {ui.fmt_ts(r.ts)} · {int(r.drifted)}/{int(r.metrics)} drifted"
              for r in runs.itertuples()}
    ids = list(labels)
    if st.session_state.get("drift_check") not in ids:
        st.session_state.pop("drift_check", None)
    check_id = st.selectbox("Check", ids, format_func=labels.get, key="drift_check")
    run = checks[checks["id"] == check_id].sort_values("metric")
    meta = run.iloc[0]
    st.caption(f"Reference **{meta.get('reference', '?')}** · current window "
               f"{ui.fmt_ts(meta.get('window_start'))} → {ui.fmt_ts(meta.get('window_end'))}")
    metric_table(run)

    tab_trend, tab_examples, tab_report = st.tabs(["Trend", "Examples & details", "Evidently report"])
    with tab_trend:
        st.plotly_chart(charts.drift_figure(checks, promotions), key="drift_trend")
        st.caption("Purple dashed lines mark promotions; a new champion brings a new reference.")
    with tab_examples:
        for r in run.itertuples():
            details = r.details if isinstance(r.details, dict) else {}
            st.markdown(f"**{r.metric}**")
            ex = examples_of(details, example_texts(session.api, details, meta.get("window_start"),
                                                    meta.get("window_end")))
            if not ex.empty:
                st.caption("Texts in the current window farthest from the reference (distance = 1 - mean "
                           "similarity to the reference sample):")
                st.dataframe(ex, hide_index=True, width="stretch",
                             column_config={"distance": st.column_config.NumberColumn(format="%.3f")})
            scalars = scalar_details(details)
            if scalars:
                st.dataframe(pd.DataFrame([scalars]), hide_index=True, width="stretch")
            nested = {k: v for k, v in details.items() if k not in EXAMPLE_KEYS and isinstance(v, dict | list)}
            if nested:
                with st.expander(f"{r.metric}: all details"):
                    st.json(nested, expanded=False)
            if ex.empty and not scalars and not nested:
                st.caption("no details recorded")
    with tab_report:
        if not bool(meta.get("has_report", False)):
            st.info("This check has no rendered report (rendering failed or was turned off).")
        else:
            report = ui.call(lambda: session.api.check_report(check_id), "loading the report")
            if report:
                st.iframe(report.strip(), height=900)


if __name__ == "__main__":
    render()
