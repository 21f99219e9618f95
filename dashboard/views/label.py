"""Label: work through the label queue one item at a time, by keyboard or buttons."""

from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from tuneloop.dashboard import ui
from tuneloop.dashboard.api import ApiError
from tuneloop.dashboard.keyboard import listen
from tuneloop.dashboard.labelling import LabelQueue

STRATEGIES = {
    "mix": "mix — uncertain and novel",
    "uncertainty": "uncertainty — least confident first",
    "novelty": "novelty — farthest from what the model saw",
    "cluster": "cluster — the most uncertain of each new region",
    "random": "random — unbiased sample",
}
QUEUE_KEY = "label_queue"


def queue(strategy: str, page_size: int, project: str) -> LabelQueue:
    """This browser session's queue; a new one when the strategy or the project changes."""
    q: LabelQueue | None = st.session_state.get(QUEUE_KEY)
    if q is None or q.strategy != strategy or q.project != project:
        q = LabelQueue(strategy=strategy, page_size=page_size, project=project)
        st.session_state[QUEUE_KEY] = q
    return q


def act(q: LabelQueue, action: str) -> None:
    """Apply one action ('label:<name>', 'skip', 'undo'); failures become a banner."""
    session = ui.current()
    try:
        if action == "skip" and q.current():
            q.skip()
        elif action == "undo":
            done = q.undo(session.api)
            if done is not None and done.label is not None:
                note = "feedback retracted" if done.retracted else "label it again to replace that label"
                st.toast(f"Undid '{done.label}' ({note}).", icon=":material/undo:")
        elif action.startswith("label:") and q.current():
            q.label(session.api, action.split(":", 1)[1], session.name)
    except ApiError as e:
        st.session_state["label_error"] = e


def on_key(q: LabelQueue, labels: list[str], press: dict) -> None:
    key, item = press.get("key"), press.get("item")
    current = q.current()
    if key == "u":
        act(q, "undo")
    elif current is None or item != current["prediction_id"]:
        return  # pressed while an older item was on screen: ignore rather than label the wrong text
    elif key == "s":
        act(q, "skip")
    elif key.isdigit() and 1 <= int(key) <= len(labels):
        act(q, f"label:{labels[int(key) - 1]}")


def show_item(q: LabelQueue, labels: list[str], can_label: bool, why: str | None) -> None:
    item = q.current()
    if item is None:
        return
    conf = item.get("confidence")
    with st.container(border=True):
        pid = html.escape(str(item["prediction_id"]), quote=True)
        st.container(key="label-text").markdown(
            f"<div data-prediction-id=\"{pid}\" style='font-size:1.35rem;line-height:1.5;padding:0.5rem 0'>"
            f"{html.escape(str(item['text']))}</div>",
            unsafe_allow_html=True,
        )
        c1, c2, c3 = st.columns([2, 3, 2])
        c1.markdown(f"Model says **{item.get('label', '?')}**")
        if conf is not None:
            c2.progress(float(conf), text=f"confidence {float(conf):.0%}")
        score = item.get("score")
        c3.caption(f"queue score {score:.3g}" if isinstance(score, int | float) else "")
    cols = st.columns(len(labels) + 2)
    for i, name in enumerate(labels):
        cols[i].button(f"{i + 1} · {name}", key=f"lab_{name}", width="stretch", disabled=not can_label, help=why,
                       type="primary" if name == item.get("label") else "secondary",
                       on_click=act, args=(q, f"label:{name}"))
    cols[-2].button("s · skip", key="lab_skip", width="stretch", on_click=act, args=(q, "skip"))
    cols[-1].button("u · undo", key="lab_undo", width="stretch", disabled=not q.history, on_click=act,
                    args=(q, "undo"))
    st.caption("Keyboard: " + ", ".join(f"**{i + 1}** {n}" for i, n in enumerate(labels))
               + ", **s** skip, **u** undo the last.")


def show_labels_saved(session: ui.Session) -> None:
    """The queue's worth, measured against the random evaluation slice (or why it is not measurable yet)."""
    try:
        saved = session.api.get("/v1/label-queue/savings")
    except ApiError:
        return
    value = "—" if saved.get("saved") is None else f"{saved['saved']:.0%}"
    st.metric("Labels saved vs random", value, help="Measured on the random evaluation slice: " + saved["message"])
    st.caption(saved["message"])


def render() -> None:
    session = ui.current()
    st.title("Label")
    labels_default = list(session.settings.project.labels)
    top1, top2 = st.columns([3, 2])
    names = list(STRATEGIES)
    default = session.settings.label_queue.strategy
    strategy = top1.selectbox("Queue strategy", names, index=names.index(default) if default in names else 0,
                              format_func=STRATEGIES.get, key="label_strategy")
    q = queue(strategy, session.settings.label_queue.page_size, session.api.project)
    can_label = session.allows("label")
    why = session.why_not("label")

    if not q.current():
        try:
            q.refill(session.api)
        except ApiError as e:
            ui.show_api_error(e, session)
            return
    labels = q.labels or labels_default
    if error := st.session_state.pop("label_error", None):
        ui.show_api_error(error, session)

    m1, m2, m3 = top2.columns(3)
    m1.metric("Labelled here", q.labelled_here)
    m2.metric("Labelled today", "—" if q.labelled_today is None else q.labelled_today)
    m3.metric("In queue", "—" if q.queue_size is None else f"{q.queue_size:,}")
    if why:
        st.warning(why, icon=":material/lock:")

    if q.current() is None:
        st.success("The label queue is empty — nothing waits for a label right now. New predictions enter it as "
                   "they are logged; try another strategy or come back later.", icon=":material/task_alt:")
        if q.skipped and st.button("Bring back the items I skipped"):
            q.skipped.clear()
            st.rerun()
        if q.history:
            st.button("u · undo the last", key="lab_undo_empty", on_click=act, args=(q, "undo"))
            if can_label:
                listen(["u"], None, lambda press: on_key(q, labels, press))
        label_quality(session)
        return
    show_item(q, labels, can_label, why)
    if can_label:  # key presses are applied (in a callback) before the next run draws the page
        keys = [str(i + 1) for i in range(len(labels))] + ["s", "u"]
        listen(keys, q.current()["prediction_id"], lambda press: on_key(q, labels, press))
    show_labels_saved(session)
    recent = [d for d in reversed(q.history) if d.label is not None][:5]
    if recent:
        st.subheader("Just labelled")
        for d in recent:
            st.markdown(f"- **{d.label}** ← {html.escape(str(d.item['text'])[:140])}")
    label_quality(session)


def label_quality(session: ui.Session) -> None:
    """On request (it cross-validates a classifier): labels that look wrong, and annotator agreement."""
    if not st.toggle("Check label quality", key="label_quality_on",
                     help="Flags given labels that a cross-validated classifier on the embeddings confidently "
                          "disagrees with, and shows how often annotators agree on the same item."):
        return
    out = ui.call(lambda: session.api.request("GET", "/v1/feedback/quality", timeout=300).json(),
                  "checking label quality")
    if out is None:
        return
    suspected, agreement = out["suspected"], out["agreement"]
    st.markdown(f"**{len(suspected['items'])} label(s) to review** (of the {suspected['n_checked']} latest)")
    if suspected["items"]:
        st.dataframe(pd.DataFrame(suspected["items"])[["text", "label", "suggested", "confidence", "annotator"]],
                     hide_index=True, use_container_width=True)
        st.caption("Retraining leaves these labels out (retrain.exclude_suspected_labels); a new label given "
                   "here is checked anew." if out.get("excluded_from_retraining") else
                   "Retraining uses these labels as they are; relabel them here, or set "
                   "retrain.exclude_suspected_labels to leave flagged labels out.")
    if agreement["n_pairs"]:
        st.markdown(f"**Annotator agreement**: {ui.pct(agreement['overall']['agreement'])} on "
                    f"{agreement['n_items']} item(s) labelled by two or more people")
        left, right = st.columns(2)
        left.dataframe(pd.DataFrame(agreement["per_annotator"]).T[["agreement", "n_pairs"]])
        right.dataframe(pd.DataFrame(agreement["per_class"]).T[["agreement", "n_pairs"]])


if __name__ == "__main__":
    render()
