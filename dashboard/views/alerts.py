"""Alerts: open and closed, with acknowledge (role label)."""

from __future__ import annotations

import streamlit as st

from tuneloop.dashboard import ui

SEVERITY_ICON = {"critical": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}
SEVERITY_COLOR = {"critical": "red", "warning": "orange", "info": "blue"}


def ack(alert_id: int) -> None:
    session = ui.current()
    if ui.call(lambda: session.api.ack_alert(alert_id), f"acknowledging alert {alert_id}") is not None:
        st.toast(f"Alert {alert_id} acknowledged.", icon=":material/done:")


def render() -> None:
    session = ui.current()
    st.title("Alerts")
    status = st.segmented_control("Show", ["open", "closed", "all"], default="open", key="alerts_status",
                                  label_visibility="collapsed") or "open"
    alerts = ui.call(lambda: session.api.alerts(status=None if status == "all" else status))
    if alerts is None:
        return
    if not alerts:
        if status == "open":
            st.success("No open alerts. An alert opens when a drift check breaches its threshold "
                       f"{session.settings.drift.open_after} times in a row, and closes after "
                       f"{session.settings.drift.close_after} clean checks.", icon=":material/check_circle:")
        else:
            st.info(f"No {status if status != 'all' else ''} alerts yet.".replace("  ", " "))
        return
    can_ack = session.allows("label")
    for a in alerts:
        severity = a.get("severity", "warning")
        with st.container(border=True):
            left, right = st.columns([5, 1])
            color = SEVERITY_COLOR.get(severity, "gray")
            left.markdown(f":{color}[{severity.upper()}] · **{a.get('kind')}** · #{a['id']} · "
                          f"{a.get('status')} · opened {ui.fmt_ts(a.get('ts'))} ({ui.ago(a.get('ts'))})")
            left.write(a.get("message", ""))
            if a.get("closed_at"):
                left.caption(f"closed {ui.fmt_ts(a['closed_at'])}")
            if a.get("acked_at"):
                right.caption(f":material/done: acked by {a.get('acked_by')}  \n{ui.ago(a['acked_at'])}")
            else:
                right.button("Acknowledge", key=f"ack_{a['id']}", icon=SEVERITY_ICON.get(severity),
                             width="stretch", disabled=not can_ack, help=session.why_not("label"),
                             on_click=ack, args=(int(a["id"]),))


if __name__ == "__main__":
    render()
