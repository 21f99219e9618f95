"""New model (role admin): a labelled file in, a served model out, without code.

Upload -> map columns -> read the data-quality report and accept fixes -> train (live progress,
cancel) -> read the evaluation against a simple baseline -> promote. Each step is an API call.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from tuneloop.dashboard import ui

STATE = "new_model"
STEPS = ("Upload", "Check the data", "Train", "Evaluation", "Done")
SEVERITY_ICON = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}


def state() -> dict[str, Any]:
    return st.session_state.setdefault(STATE, {"step": 0})


def restart() -> None:
    st.session_state[STATE] = {"step": 0}


def steps_bar(step: int) -> None:
    st.caption("Steps: " + "  →  ".join(f"**{i + 1}. {name}**" if i == step else f"{i + 1}. {name}"
                            for i, name in enumerate(STEPS)))


# ---- 1. upload and map columns ------------------------------------------------------------------------


def upload_step(s: dict[str, Any]) -> None:
    session = ui.current()
    st.subheader("1. Upload a labelled file")
    st.write("CSV, TSV, Parquet or JSONL with one text and one label per row. Rows with an empty label can be "
             "kept as unlabelled texts, which training also learns from.")
    file = st.file_uploader("Labelled file", type=["csv", "tsv", "parquet", "jsonl", "json"], key="nm_file")
    if file is None:
        return
    data = file.getvalue()
    if s.get("file_key") != (file.name, len(data)):
        shown = ui.call(lambda: session.api.preview_dataset(data, file.name), f"reading {file.name}")
        if shown is None:
            return
        s.update(file_key=(file.name, len(data)), preview=shown)
    shown = s["preview"]
    blank = f" ({shown['n_unlabelled']} without a label)" if shown.get("n_unlabelled") else ""
    st.write(f"**{shown['n_rows']} rows**{blank}, columns: {', '.join(shown['columns'])}")
    st.dataframe(pd.DataFrame(shown["rows"]), hide_index=True, use_container_width=True)
    cols = shown["columns"]
    left, right = st.columns(2)
    text_col = left.selectbox("Text column", cols, index=cols.index(shown["text_column"])
                              if shown["text_column"] in cols else 0, key="nm_text_col")
    label_col = right.selectbox("Label column", cols, index=cols.index(shown["label_column"])
                                if shown["label_column"] in cols else min(1, len(cols) - 1), key="nm_label_col")
    labels = st.text_input("Labels (comma-separated; rows with another label are refused)",
                           ", ".join(shown["labels"]), key="nm_labels")
    keep_unlabelled = st.checkbox(
        "Keep rows without a label as unlabelled texts: training also learns from them (self-training)",
        value=True, key="nm_keep_unlabelled",
        help=f"{shown.get('n_unlabelled', 0)} row(s) have no label in the column {shown['label_column']!r}. "
             "Unticked, such rows are refused.")
    projects = [p["project"] for p in ui.call(session.api.projects) or []]
    mode = st.radio("Project", ["New project", "Existing project"], horizontal=True, key="nm_mode")
    if mode == "New project":
        project = st.text_input("Project name", "new-model", key="nm_project_new")
    else:
        project = st.selectbox("Project", projects or ["default"], key="nm_project_existing")
    if st.button("Import and check the data", type="primary", key="nm_import"):
        label_list = [x.strip() for x in labels.split(",") if x.strip()]
        ds = ui.call(lambda: session.api.upload_dataset(data, file.name, text_column=text_col,
                                                        label_column=label_col, labels=label_list, name=file.name,
                                                        keep_unlabelled=keep_unlabelled),
                     f"importing {file.name}")
        if ds is not None:
            s.update(step=1, dataset=ds, version=ds["latest_version"], project=project,
                     create_project=mode == "New project" and project not in projects)
            st.rerun()


# ---- 2. quality report and fixes ------------------------------------------------------------------------


def quality_step(s: dict[str, Any]) -> None:
    session = ui.current()
    ds, version = s["dataset"], s["version"]
    st.subheader(f"2. Check the data — {ds['name']} (version {version})")
    with st.spinner("Checking the data: duplicates, lengths, charset, and suspected label errors "
                    "(cross-validated on the encoder's embeddings)…"):
        report = ui.call(lambda: session.api.dataset_quality(ds["id"], version), "computing the quality report")
    if report is None:
        return
    counts = pd.DataFrame({"label": list(report["class_counts"]), "rows": list(report["class_counts"].values())})
    left, right = st.columns([1, 2])
    left.metric("Rows", report["n_rows"])
    if ds.get("n_unlabelled"):
        left.caption(f"and {ds['n_unlabelled']} rows without a label, kept as unlabelled texts for self-training")
    left.dataframe(counts, hide_index=True)
    right.bar_chart(counts.set_index("label"), height=220)
    if not report["findings"]:
        st.success("No problems found.", icon=":material/check_circle:")
    rows = pd.DataFrame(session.api.dataset_rows(ds["id"], version)).set_index("row_id")
    for f in report["findings"]:
        with st.expander(f"{f['message']}", icon=SEVERITY_ICON[f["severity"]], expanded=f["check"] == "label_error"):
            if f["rows"]:
                listed = rows.loc[[r for r in f["rows"] if r in rows.index]].reset_index()
                st.dataframe(listed, hide_index=True, use_container_width=True, height=min(35 * len(listed) + 38, 300))
            if f["count"] > len(f["rows"]):
                st.caption(f"{len(f['rows'])} of {f['count']} rows shown")
    fixes = report["suggested_fixes"]
    optional = [{**fix, "check": f["check"]} for f in report["findings"] if f["check"] == "possible_label_error"
                for fix in f["fixes"]]
    st.markdown(f"#### Suggested fixes ({len(fixes)})")
    if any(f["check"] == "label_error" for f in fixes):
        st.caption("Likely label errors are dropped by default: that recovers more accuracy than relabelling "
                   "them all, since some were right. Set the action to relabel for rows you have checked.")
    if optional:
        st.caption(f"The {len(optional)} possible label errors below them are listed unticked: tick those you "
                   "checked and found wrong.")
    fixes = fixes + optional
    if fixes:
        table = pd.DataFrame([{
            "apply": f["check"] != "possible_label_error", "row_id": f["row_id"],
            "text": rows.loc[f["row_id"], "text"] if f["row_id"] in rows.index else "",
            "label now": rows.loc[f["row_id"], "label"] if f["row_id"] in rows.index else "",
            "action": f["action"], "new label": f.get("label") or "", "why": f["why"]} for f in fixes])
        edited = st.data_editor(
            table, hide_index=True, use_container_width=True, key=f"nm_fixes_{version}",
            disabled=["row_id", "text", "label now", "why"],
            column_config={"action": st.column_config.SelectboxColumn(options=["relabel", "drop"]),
                           "new label": st.column_config.SelectboxColumn(options=report["labels"])})
        chosen = edited[edited["apply"]]
        a, b = st.columns(2)
        if a.button(f"Apply {len(chosen)} fix(es) as a new version", type="primary", key="nm_apply",
                    disabled=chosen.empty):
            drop = [int(r) for r in chosen.loc[chosen["action"] == "drop", "row_id"]]
            relabel = [{"row_id": int(r), "label": lab} for r, lab in
                       zip(chosen.loc[chosen["action"] == "relabel", "row_id"],
                           chosen.loc[chosen["action"] == "relabel", "new label"], strict=True)]
            out = ui.call(lambda: session.api.fix_dataset(ds["id"], version, drop, relabel), "applying the fixes")
            if out is not None:
                s.update(dataset=out, version=out["latest_version"], fixed=len(chosen), step=2)
                st.rerun()
        if b.button("Keep the data as it is and train", key="nm_skip"):
            s.update(step=2)
            st.rerun()
    else:
        if st.button("Train on this version", type="primary", key="nm_to_train"):
            s.update(step=2)
            st.rerun()


# ---- 3. train -----------------------------------------------------------------------------------------------


def train_step(s: dict[str, Any]) -> None:
    session = ui.current()
    ds, version = s["dataset"], s["version"]
    st.subheader(f"3. Train — project {s['project']}")
    if s.get("fixed"):
        st.success(f"{s['fixed']} fix(es) applied and kept as version {version} of the dataset (the upload is "
                   "version 1).", icon=":material/check_circle:")
    if "run_id" not in s:
        st.write(f"Fine-tunes the base model on version {version} of {ds['name']}; a random 20 % of the rows "
                 "is held out for the evaluation.")
        n_unlabelled = ds.get("n_unlabelled") or 0
        self_training = n_unlabelled > 0 and st.checkbox(
            f"Also learn from the {n_unlabelled} unlabelled rows (self-training)", value=True, key="nm_self_training",
            help="Rows that a TF-IDF model and a model on the base's embeddings both label with confidence join the "
                 "training rows, in the labelled rows' class proportions. The evaluation uses labelled rows only.")
        auto = st.checkbox(
            "Search for better training settings (slower)", value=False, key="nm_auto",
            help="Tries a few configurations (search.trials, 4 by default: step size, steps, LoRA rank, a "
                 "contrastive loss), the defaults first, and keeps the one that validates best; another one "
                 "replaces the defaults only when it is clearly better. Takes about that many times as long.")
        if st.button("Start training", type="primary", key="nm_train"):
            out = ui.call(lambda: session.api.train_dataset(ds["id"], version, s["project"], s["create_project"],
                                                            self_training=self_training, auto=auto),
                          "starting the training")
            if out is not None:
                s.update(run_id=out["run_id"], n_train=out["n_train"], n_holdout=out["n_holdout"],
                         n_unlabelled=out.get("n_unlabelled", 0))
                st.rerun()
        return
    st.fragment(run_every=1.0)(training_progress)(s)


def training_progress(s: dict[str, Any]) -> None:
    """The running training's progress, polled every second as a fragment: the page around it is drawn
    once, so nothing of the step before (the Start button) lingers while it runs."""
    session = ui.current()
    run = ui.call(lambda: session.api.training(s["run_id"]), "reading the training run")
    if run is None:
        return
    progress = run.get("progress") or {}
    st.progress(min(1.0, float(progress.get("fraction") or 0.0)), text=progress.get("message") or run["status"])
    a, b, c, d = st.columns(4)
    a.metric("Epoch", run.get("epoch") or "–")
    b.metric("Loss", f"{run['loss']:.3f}" if run.get("loss") is not None else "–")
    c.metric("Samples/s", f"{run['samples_per_s']:.1f}" if run.get("samples_per_s") else "–")
    d.metric("ETA", f"{run['eta_seconds']:.0f} s" if run.get("eta_seconds") is not None else "–")
    st.caption(f"Run {s['run_id']}: {run['status']} — {s['n_train']} training rows, {s['n_holdout']} held out"
               + (f", {s['n_unlabelled']} unlabelled rows for self-training" if s.get("n_unlabelled") else ""))
    if run["status"] in ("queued", "running"):
        if st.button("Cancel training", key="nm_cancel"):
            ui.call(lambda: session.api.cancel_run(s["run_id"]), "cancelling")
    elif run["status"] in ("passed", "promoted"):
        s.update(step=3, model_version=run["version"])
        st.rerun(scope="app")
    else:
        st.error(f"Training {run['status']}: {'; '.join(map(str, run.get('reasons') or []))}")
        if st.button("Try again", key="nm_retry"):
            s.pop("run_id")
            st.rerun(scope="app")


# ---- 4. evaluation and promotion ----------------------------------------------------------------------------


def evaluation_step(s: dict[str, Any]) -> None:
    session = ui.current()
    version, project = s["model_version"], s["project"]
    st.subheader(f"4. Evaluation — {version}")
    with st.spinner("Scoring the model and a simple baseline on the held-out rows…"):
        card = ui.call(lambda: session.api.evaluation(version, project), "reading the evaluation")
    if card is None:
        return
    st.info(card["verdict"][:1].upper() + card["verdict"][1:], icon=":material/lightbulb:")
    model, base = card["model"], card["baseline"]
    a, b, c, d = st.columns(4)
    a.metric("Accuracy", ui.pct(model["accuracy"]), delta=f"{100 * (model['accuracy'] - base['accuracy']):+.1f} pts "
             "vs baseline" if base.get("accuracy") is not None else None)
    b.metric("Macro-F1", f"{model['macro_f1']:.3f}")
    c.metric("Baseline accuracy", ui.pct(base.get("accuracy")), help=base.get("source"))
    d.metric("Held-out rows", model["n"])
    how = card.get("training") or {}
    said = [f"serves {how['served']}"] if how.get("served") else []
    if how.get("pseudo_labels"):
        said.append(f"learnt from {how['pseudo_labels']['picked']} pseudo-labels of "
                    f"{how['pseudo_labels']['offered']} unlabelled rows")
    if how.get("search"):
        kept = how["search"]["kept_trial"]
        said.append(f"the search kept {'the defaults' if kept == 0 else f'trial {kept + 1}'} of "
                    f"{how['search']['trials']} tried")
    if said:
        st.caption("Trained: " + "; ".join(said) + ".")
    if how.get("search") and how["search"].get("why"):
        st.caption(f"Search: {how['search']['why']}.")
    if model.get("accuracy_ci95"):
        lo, hi = model["accuracy_ci95"]
        st.caption(f"Accuracy 95 % interval: {lo:.1%} – {hi:.1%} ({model['n']} held-out rows).")
    left, right = st.columns(2)
    labels = card["confusion"]["labels"]
    left.markdown("**Confusion matrix** (rows: true label, columns: predicted)")
    left.dataframe(pd.DataFrame(card["confusion"]["matrix"], index=labels, columns=labels))
    right.markdown("**Per class**")
    right.dataframe(pd.DataFrame(card["per_class"]).T[["precision", "recall", "f1", "support"]])
    st.markdown(f"**The {len(card['confident_mistakes'])} most confident mistakes**")
    st.dataframe(pd.DataFrame(card["confident_mistakes"]), hide_index=True, use_container_width=True)
    if st.button(f"Promote {version}: serve it in project {project}", type="primary", key="nm_promote"):
        out = ui.call(lambda: session.api.request("POST", f"/v1/models/{version}/promote", project=False,
                                                  params={"project": project},
                                                  json={"reason": "new model from the dashboard"}).json(),
                      f"promoting {version}")
        if out is not None:
            s.update(step=4)
            st.rerun()


def done_step(s: dict[str, Any]) -> None:
    st.subheader("5. Done")
    st.success(f"{s['model_version']} is the champion of project {s['project']} and is being served.",
               icon=":material/emoji_events:")
    st.code(f"curl -X POST $TUNELOOP/v1/predict -H 'Authorization: Bearer $TOKEN' "
            f"-d '{{\"project\": \"{s['project']}\", \"texts\": [\"...\"]}}'", language="bash")
    st.button("Start another model", on_click=restart, key="nm_restart")


def render() -> None:
    session = ui.current()
    st.title("New model")
    if not session.allows("admin"):
        st.warning(session.why_not("admin"), icon=":material/lock:")
        return
    s = state()
    steps_bar(s["step"])
    [upload_step, quality_step, train_step, evaluation_step, done_step][s["step"]](s)
    if 0 < s["step"] < 4:
        st.button("Start over", on_click=restart, key="nm_over")


if __name__ == "__main__":
    render()
