"""Models & retraining: versions side by side, gate reasons, retrain runs with their log; retrain,
promote and roll back (role admin, each confirmed first)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from tuneloop.dashboard import charts, ui
from tuneloop.dashboard.data import flat_metrics, metrics_table

CONFIRM = "models_confirm"
HEADLINE_METRICS = ("holdout.accuracy", "golden.accuracy", "val_accuracy", "accuracy", "holdout.macro_f1",
                    "val_macro_f1", "macro_f1")
ACTIVE = ("queued", "running")


def reasons_text(reasons: Any) -> str:
    if not reasons:
        return ""
    if isinstance(reasons, dict):
        return "; ".join(f"{k}: {v}" for k, v in reasons.items())
    if isinstance(reasons, list):
        return "; ".join(str(r) for r in reasons)
    return str(reasons)


def ask(action: str, target: str | None = None) -> None:
    st.session_state[CONFIRM] = (action, target)


def do(action: str, target: str | None) -> None:
    """Run a confirmed admin action and say what happened."""
    session = ui.current()
    st.session_state.pop(CONFIRM, None)
    if action == "retrain":
        out = ui.call(lambda: session.api.retrain("started from the dashboard"), "starting a retrain")
        if out is not None:
            st.session_state["models_run_pick"] = out.get("run_id")  # show the new run
            st.toast(f"Retrain run {out.get('run_id')} started.", icon=":material/model_training:")
    elif action == "promote" and target:
        out = ui.call(lambda: session.api.promote(target, "promoted from the dashboard"), f"promoting {target}")
        if out is not None:
            st.toast(f"{target} is now the champion.", icon=":material/emoji_events:")
    elif action == "rollback":
        out = ui.call(lambda: session.api.rollback("rolled back from the dashboard"), "rolling back")
        if out is not None:
            champion = out.get("champion") or {}
            st.toast(f"Rolled back: {champion.get('version', '?')} is the champion.", icon=":material/undo:")
    elif action == "cancel" and target and ui.call(lambda: session.api.cancel_run(int(target)),
                                                   f"cancelling run {target}") is not None:
        st.toast(f"Run {target} cancelled.", icon=":material/cancel:")


def confirm_box() -> None:
    pending = st.session_state.get(CONFIRM)
    if not pending:
        return
    action, target = pending
    text = {
        "retrain": "Start a retrain now? It trains a challenger on the new feedback plus a replay buffer; the gate "
                   "decides whether it is promoted.",
        "promote": f"Promote **{target}** to champion? Serving hot-swaps to it at once.",
        "rollback": "Roll back to the previous champion? Serving hot-swaps to it at once.",
        "cancel": f"Cancel retrain run **{target}**? The job is stopped and nothing is promoted.",
    }[action]
    with st.container(border=True):
        st.warning(text, icon=":material/help:")
        yes, no, _ = st.columns([1, 1, 4])
        yes.button("Yes, " + action, key="confirm_yes", type="primary", on_click=do, args=(action, target))
        no.button("Cancel", key="confirm_no", on_click=lambda: st.session_state.pop(CONFIRM, None))


def versions_section(versions: list[dict[str, Any]], admin: bool, why: str | None) -> None:
    st.subheader("Versions")
    if not versions:
        st.info("No model versions yet. Train the first one with `tuneloop train` (or the demo), or log "
                "predictions from an external model — tuneloop monitors it all the same.",
                icon=":material/model_training:")
        return
    rows = []
    for v in versions:
        m = flat_metrics(v.get("metrics") or {})
        headline = next((k for k in HEADLINE_METRICS if k in m), None)
        rows.append({
            "version": v["version"], "status": v.get("status"),
            "created": ui.fmt_ts(v.get("created_at")), "promoted": ui.fmt_ts(v.get("promoted_at")),
            "parent": v.get("parent") or "", "accuracy": m.get(headline) if headline else None,
            "accuracy on": headline.rsplit("_", 1)[0].split(".")[0] if headline else "",
            "gate / reasons": reasons_text(v.get("reasons") or (v.get("metrics") or {}).get("reasons")),
        })
    st.dataframe(pd.DataFrame(rows).style.map(ui.status_style, subset=["status"]).format(
        {"accuracy": "{:.1%}"}, na_rep="—"), hide_index=True, width="stretch")

    champion = next((v["version"] for v in versions if v.get("status") == "champion"), None)
    # Promotion candidates: waiting challengers first (newest first), then archived versions.
    rank = {"passed": 0, "challenger": 0, "archived": 1}
    newest_first = sorted((v for v in versions if v["version"] != champion and v.get("status") in rank),
                          key=lambda v: str(v.get("created_at") or ""), reverse=True)
    others = [v["version"] for v in sorted(newest_first, key=lambda v: rank[v["status"]])]  # stable sort
    c1, c2, c3 = st.columns([2, 1, 1])
    target = c1.selectbox("Version to promote", others or ["—"], key="models_target", disabled=not others,
                          help="A challenger waiting for promotion, or an archived version")
    c2.button("Promote…", key="models_promote", icon=":material/emoji_events:", width="stretch",
              disabled=not (admin and others), help=why or ("no other version to promote" if not others else None),
              on_click=ask, args=("promote", target))
    c3.button("Roll back…", key="models_rollback", icon=":material/undo:", width="stretch", disabled=not admin,
              help=why or "Re-promote the previous champion", on_click=ask, args=("rollback", None))


def metrics_section(versions: list[dict[str, Any]]) -> None:
    shown = [v for v in versions if v.get("status") in ("champion", "challenger", "passed", "rejected")]
    head, toggle = st.columns([3, 1])
    head.subheader("Metrics side by side")
    if toggle.toggle("Include archived", key="models_archived"):
        shown = versions
    table = metrics_table(shown)
    if table.empty:
        st.caption("No metrics recorded yet.")
        return
    st.dataframe(table.style.format("{:.4g}", na_rep="—"), width="stretch")
    wanted = [k for k in HEADLINE_METRICS if k in table.index][:3]
    if wanted:
        st.plotly_chart(charts.version_metrics_figure(table, wanted), key="models_bars")


def runs_section(session: ui.Session, runs: list[dict[str, Any]]) -> None:
    st.subheader("Retrain runs")
    if not runs:
        st.info("No retrain runs yet. The policy starts one when enough new labels arrive (or a drift alert is "
                "open with some labels); an admin can start one now with *Retrain now*.",
                icon=":material/hourglass_empty:")
        return
    table = pd.DataFrame([{
        "run": r.get("id"), "status": r.get("status"),
        "trigger": r.get("trigger"), "started": ui.fmt_ts(r.get("started")), "finished": ui.fmt_ts(r.get("finished")),
        "examples": r.get("n_examples"), "version": r.get("version") or "",
        "reasons": reasons_text(r.get("reasons")),
    } for r in runs])
    st.dataframe(table.style.map(ui.status_style, subset=["status"]), hide_index=True, width="stretch")
    ids = [int(r["id"]) for r in runs]
    if st.session_state.get("models_run_pick") not in ids:
        st.session_state.pop("models_run_pick", None)
    run_id = st.selectbox("Run", ids, key="models_run_pick", format_func=lambda i: f"run {i}")
    active = any(r.get("status") in ACTIVE for r in runs)
    every = 2.0 if active else ui.refresh_every(session)
    st.fragment(run_every=every)(run_detail)(run_id)


def run_detail(run_id: int) -> None:
    session = ui.current()
    run = ui.call(lambda: session.api.retrain_run(run_id), f"loading run {run_id}")
    if run is None:
        return
    status = run.get("status", "?")
    head, cancel = st.columns([5, 1])
    head.markdown(f"**Run {run_id}** — {status} · trigger {run.get('trigger', '?')} · "
                  f"started {ui.fmt_ts(run.get('started'))} ({ui.ago(run.get('started'))})"
                  + (f" · version {run['version']}" if run.get("version") else ""))
    if status in ACTIVE:
        cancel.button("Cancel…", key=f"cancel_{run_id}", disabled=not session.allows("admin"),
                      help=session.why_not("admin"), on_click=ask, args=("cancel", str(run_id)))
    progress = run.get("progress")
    if isinstance(progress, dict):
        frac = progress.get("fraction")
        text = progress.get("message") or progress.get("stage") or ""
        if frac is not None:
            st.progress(min(max(float(frac), 0.0), 1.0), text=text)
        elif text:
            st.caption(text)
    elif isinstance(progress, int | float):
        st.progress(min(max(float(progress), 0.0), 1.0))
    headline = ((run.get("metrics") or {}).get("gate") or {}).get("headline")
    if headline:
        st.markdown(f"**Gate:** {headline}")
    if run.get("reasons"):
        st.markdown(f"{'Why' if status == 'deferred' else 'Checks'}: {reasons_text(run.get('reasons'))}")
    metrics = flat_metrics(run.get("metrics") or {})
    if metrics:
        st.dataframe(pd.DataFrame([metrics]), hide_index=True, width="stretch")
    log = run.get("log") or run.get("log_tail")
    if log:
        st.code(log if isinstance(log, str) else "\n".join(log), language="log", height=300)
    else:
        st.caption("no log yet")


def render() -> None:
    session = ui.current()
    admin = session.allows("admin")
    why = session.why_not("admin")
    head, button = st.columns([4, 1])
    head.title("Models & retraining")
    button.button("Retrain now…", key="models_retrain", icon=":material/model_training:", width="stretch",
                  disabled=not admin, help=why, on_click=ask, args=("retrain", None))
    if why:
        st.caption(f":lock: {why}")
    confirm_box()
    models = ui.call(session.api.models)
    runs = ui.call(session.api.retrain_runs)
    if models is None or runs is None:
        return
    versions = list(models.get("items", []))
    versions_section(versions, admin, why)
    runs_section(session, runs)
    if versions:
        metrics_section(versions)


if __name__ == "__main__":
    render()
