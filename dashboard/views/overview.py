"""Overview: champion, traffic, accuracy (labelled and estimated), drift, open alerts — one screen.

Every chart marks promotions (purple dashed lines), so a change can be read against the model
that caused it. The body refreshes itself every ``dashboard.refresh_seconds``.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tuneloop.dashboard import charts, ui
from tuneloop.dashboard.data import AUTO, RANGE_CHOICES, Estimate, OverviewData, load_overview


def headline(data: OverviewData, range_name: str) -> None:
    champion = data.champion
    stats = data.stats
    c1, c2, c3, c4, c5 = st.columns(5)
    if champion:
        since = champion.get("promoted_at") or champion.get("created_at")
        c1.metric("Champion", champion["version"], f"since {ui.ago(since)}", delta_color="off", delta_arrow="off",
                  help=f"Serving since {ui.fmt_ts(since)}.")
    else:
        c1.metric("Champion", "none", "no model promoted yet", delta_color="off", delta_arrow="off")
    total = int(stats["n"].sum()) if not stats.empty else 0
    c2.metric("Predictions", f"{total:,}", "all so far" if range_name == AUTO else f"last {range_name}",
               delta_color="off", delta_arrow="off")
    labelled = data.accuracy.dropna(subset=["accuracy"]) if not data.accuracy.empty else data.accuracy
    last = labelled.iloc[-1] if not labelled.empty else None
    c3.metric("Labelled accuracy", ui.pct(last["accuracy"] if last is not None else None),
              f"{int(last['n_labelled'])} labels, {ui.fmt_ts(last['bucket'])[:10]}" if last is not None
              else "no labels yet", delta_color="off", delta_arrow="off",
              help="Latest bucket with feedback, by time of prediction.")
    estimate_metric(c4, data.latest_estimate())
    n_open = len(data.open_alerts)
    c5.metric("Open alerts", n_open, "all clear" if n_open == 0 else "see Alerts", delta_arrow="off",
              delta_color="off" if n_open == 0 else "inverse")


def estimate_metric(column: st.delta_generator.DeltaGenerator, est: Estimate | None) -> None:
    """The label-free estimate, always with its 95 % interval, and as "unreliable" (value in small print,
    reasons on hover) when its assumption is broken: never a bare headline number."""
    about = "CBPE-style estimate: confidence calibrated on the reference's labelled rows, 95 % interval."
    if est is None:
        column.metric("Estimated accuracy", "—", "no estimate yet", delta_color="off", delta_arrow="off", help=about)
        return
    interval = f"{ui.pct(est.low)}–{ui.pct(est.high)}" if est.low is not None else "no interval"
    if est.reliable:
        column.metric("Estimated accuracy", interval, f"label-free, point {ui.pct(est.value)}", delta_color="off",
                      delta_arrow="off", help=about)
    else:
        column.metric("Estimated accuracy", "unreliable", f"{ui.pct(est.value)} ({interval}) not trusted",
                      delta_color="inverse", delta_arrow="off", help=about + " Not trusted: " + "; ".join(est.reasons))


def alerts_table(alerts: list[dict]) -> None:
    rows = pd.DataFrame([{
        "opened": ui.fmt_ts(a.get("ts")), "severity": a.get("severity"), "check": a.get("kind"),
        "message": a.get("message"), "acknowledged": a.get("acked_by") or "",
    } for a in alerts])
    st.dataframe(rows.style.map(ui.status_style, subset=["severity"]), hide_index=True, width="stretch")


def body(range_name: str) -> None:
    session = ui.current()
    data = ui.call(lambda: load_overview(session.api, range_name))
    if data is None:
        return
    for error in data.errors.values():
        ui.show_api_error(error, session)
    headline(data, range_name)
    if data.stats.empty or data.stats["n"].fillna(0).sum() == 0:
        st.info("No predictions in this time range yet. Log them with `POST /v1/predictions` (or serve with "
                "`POST /v1/predict`, or the Python SDK); they appear here within a refresh.",
                icon=":material/hourglass_empty:")
    x_range = charts.time_range(data.since, data.until, data.stats)
    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.traffic_figure(data.stats, data.promotions, data.bucket, x_range), key="ov_traffic")
    with right:
        st.plotly_chart(charts.accuracy_figure(data.accuracy, data.estimated_accuracy(), data.promotions, x_range,
                                               data.accuracy_bucket), key="ov_accuracy")
        if data.accuracy.empty or data.accuracy["n_labelled"].fillna(0).sum() == 0:
            st.caption("No labelled predictions in this range: label some on the **Label** page to see "
                       "measured accuracy next to the estimate.")
    if data.checks.empty:
        minutes = session.settings.drift.interval_seconds / 60
        st.info(f"No drift checks in this range yet — they run every {minutes:g} min once there is enough "
                "traffic; an admin can run one now on the **Drift** page (or `tuneloop check`).",
                icon=":material/ssid_chart:")
    else:
        st.plotly_chart(charts.drift_figure(data.checks, data.promotions, x_range), key="ov_drift")
    st.subheader("Open alerts")
    if not data.open_alerts:
        st.success("No open alerts.", icon=":material/check_circle:")
    else:
        alerts_table(data.open_alerts)
        st.page_link("views/alerts.py", label="Acknowledge them on the Alerts page", icon=":material/arrow_forward:")
    st.caption(f"Updated {ui.fmt_ts(pd.Timestamp.now(tz='UTC').tz_localize(None))}"
               + (f", every {ui.refresh_every(session):g} s" if ui.refresh_every(session) else "")
               + ". Purple dashed lines: promotions.")


def render() -> None:
    session = ui.current()
    st.title("Overview")
    range_name = st.segmented_control("Time range", list(RANGE_CHOICES), default=AUTO, key="ov_range",
                                      label_visibility="collapsed") or AUTO
    st.fragment(run_every=ui.refresh_every(session))(body)(range_name)


if __name__ == "__main__":
    render()
