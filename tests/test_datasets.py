"""Datasets over HTTP on a real server: upload, quality report, fixes, training, evaluation, promotion.

Bad input gets a clear 4xx and leaves nothing behind.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from conftest import wait_run
from test_quality import flip

from tuneloop.retrain.tiny import keyword_sentiment

LABELS = ["negative", "neutral", "positive"]
UPLOAD_LIMIT = 64 * 1024


def csv_bytes(df: pd.DataFrame, **kw) -> bytes:  # type: ignore[no-untyped-def]
    return df.to_csv(index=False, **kw).encode("utf-8")


@pytest.fixture(scope="module")
def server(tmp_path_factory, sentiment_base):  # type: ignore[no-untyped-def]
    from conftest import start_server

    srv = start_server(
        tmp_path_factory.mktemp("datasets"),
        server={"max_body_bytes": UPLOAD_LIMIT},
        model={"base": str(sentiment_base), "learning_rate": 3e-3, "batch_size": 16, "max_length": 32, "threads": 1},
        embedder={"enabled": False, "base": str(sentiment_base)},
        retrain={"enabled": False, "auto_promote": True, "epochs": 6, "min_holdout": 5},
        search={"trials": 2},
    )
    yield srv
    srv.close()


def upload(api, data: bytes, filename: str = "data.csv", **params):  # type: ignore[no-untyped-def]
    return api.post("/v1/datasets", params={"filename": filename, **params}, content=data)


def dataset_dirs(server) -> list[str]:  # type: ignore[no-untyped-def]
    root = server.settings.data_dir / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_new_model_from_a_noisy_file_end_to_end(server) -> None:
    clean = keyword_sentiment(240, seed=5)
    noisy, flips = flip(clean, 0.15, seed=1)
    api = server.client("admin", timeout=120)

    shown = api.post("/v1/datasets/preview", params={"filename": "tickets.csv"},
                     content=csv_bytes(noisy.rename(columns={"text": "message", "label": "sentiment"})))
    assert shown.status_code == 200, shown.text
    assert (shown.json()["text_column"], shown.json()["label_column"]) == ("message", "sentiment")
    assert shown.json()["labels"] == LABELS and len(shown.json()["rows"]) == 10

    r = upload(api, csv_bytes(noisy), name="tickets")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["labels"] == LABELS and ds["versions"][0]["n_rows"] == 240

    report = api.get(f"/v1/datasets/{ds['id']}/quality").json()
    suspects = next(f for f in report["findings"] if f["check"] == "label_error")
    possible = next((f for f in report["findings"] if f["check"] == "possible_label_error"), {"rows": [], "fixes": []})
    hits = set(suspects["rows"]) & flips
    shown = (set(suspects["rows"]) | set(possible["rows"])) & flips
    # most flips are shown (both tiers); the "likely" tier, which the fixes act on, is mostly flips
    assert len(shown) >= 0.6 * len(flips) and len(hits) >= 0.5 * len(suspects["rows"]), (len(hits), len(shown))
    assert not set(possible["rows"]) & set(suspects["rows"])
    assert api.get(f"/v1/datasets/{ds['id']}/quality").json() == report  # cached per version

    fixes = report["suggested_fixes"]
    suspected = [f for f in fixes if f["check"] == "label_error"]
    # dropped by default (measured better than relabelling in bulk), the model's label kept for a relabel
    assert {f["action"] for f in suspected} == {"drop"} and all(f["label"] in LABELS for f in suspected)
    assert {f["row_id"] for f in suspected} == set(suspects["rows"])  # the "possible" tier is opt-in
    body = {"drop": [f["row_id"] for f in fixes if f["action"] == "drop"],
            "relabel": [{"row_id": f["row_id"], "label": f["label"]} for f in fixes if f["action"] == "relabel"]}
    r = api.post(f"/v1/datasets/{ds['id']}/fixes", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["latest_version"] == 2
    v2 = pd.DataFrame(api.get(f"/v1/datasets/{ds['id']}/rows", params={"limit": 5000}).json()["items"])
    still_wrong = (v2.set_index("row_id")["label"] != clean.set_index(clean.index + 1)["label"].loc[v2["row_id"]]).sum()
    assert still_wrong < len(flips)  # fewer wrong labels than in the upload
    assert len(v2) == 240 - len(body["drop"])
    v1 = api.get(f"/v1/datasets/{ds['id']}/rows", params={"version": 1, "limit": 5000}).json()
    assert v1["total"] == 240  # the upload itself is kept

    r = api.post(f"/v1/datasets/{ds['id']}/train", json={"project": "tickets", "create_project": True})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    assert r.json()["n_holdout"] >= 40
    run = wait_run(server.client("admin"), run_id, timeout=300, path="/v1/training/{run_id}")
    assert run["status"] == "passed", run
    progress = api.get(f"/v1/training/{run_id}").json()
    assert progress["epoch"] >= 1 and progress["loss"] is not None and progress["samples_per_s"] > 0

    card = api.get(f"/v1/models/{run['version']}/evaluation", params={"project": "tickets"})
    assert card.status_code == 200, card.text
    card = card.json()
    assert card["model"]["n"] == r.json()["n_holdout"]
    assert card["model"]["accuracy"] >= 0.5, card["model"]  # chance: 1/3; the holdout keeps some wrong labels
    assert card["baseline"]["accuracy"] is not None and "baseline" in card["verdict"]
    assert np.array(card["confusion"]["matrix"]).sum() == card["model"]["n"]
    assert set(card["per_class"]) == set(LABELS)
    assert len(card["confident_mistakes"]) <= 20
    assert card["status"] == "challenger"

    assert api.post("/v1/predict", json={"texts": ["love it"], "project": "tickets"}).status_code == 503
    r = api.post(f"/v1/models/{run['version']}/promote", params={"project": "tickets"})
    assert r.status_code == 200, r.text
    pred = api.post("/v1/predict", json={"texts": ["i love this wonderful day"], "project": "tickets"})
    assert pred.status_code == 200 and pred.json()["model_version"] == run["version"]


def test_every_format_reads_the_same_rows(server) -> None:
    df = keyword_sentiment(30, seed=2)
    api = server.client("admin")
    parquet = io.BytesIO()
    df.to_parquet(parquet, index=False)
    files = {"d.csv": csv_bytes(df), "d.tsv": csv_bytes(df, sep="\t"), "d.parquet": parquet.getvalue(),
             "d.jsonl": "\n".join(json.dumps(r) for r in df.to_dict("records")).encode()}
    for name, data in files.items():
        r = upload(api, data, filename=name)
        assert r.status_code == 201, (name, r.text)
        rows = api.get(f"/v1/datasets/{r.json()['id']}/rows", params={"limit": 100}).json()["items"]
        assert [(x["text"], x["label"]) for x in rows] == list(df.itertuples(index=False, name=None)), name


BAD = {
    "no text column": (b"label,comment_id\npositive,1\nnegative,2\n", {"text_column": "text"}, 422, "no text column"),
    "one label only": (b"text,label\ngood day,positive\nfine day,positive\n", {}, 422, "at least two labels"),
    "unreadable encoding": ("text,label\ncaf\u00e9 ok,positive\nbad,negative\n".encode("latin-1"), {}, 422,
                            "not valid utf-8"),
    "oversized file": (b"text,label\n" + b"a long line of text,positive\n" * 3000, {}, 413, "max_body_bytes"),
    "label outside the set": (b"text,label\ngood,positive\nbad,negative\nmeh,meh\n",
                              {"labels": ["negative", "positive"]}, 422, "row(s) have a bad label"),
    "empty label": (b"text,label\ngood,positive\nbad,\nok,negative\n", {}, 422, "bad label"),
    "unlabelled row without a text": (b"text,label\ngood,positive\n,\nok,negative\n", {"keep_unlabelled": True},
                                      422, "bad label"),
    "no labelled row": (b"text,label\ngood,\nbad,\n", {"keep_unlabelled": True}, 422, "no row has a label"),
    "unknown format": (b"text,label\n", {"filename": "data.xlsx"}, 415, "unsupported file format"),
    "broken parquet": (b"PAR1 not really", {"filename": "d.parquet"}, 422, "parquet"),
    "broken jsonl": (b'{"text": "a", "label": "x"}\nnot json\n', {"filename": "d.jsonl"}, 422, "not json"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_get_a_clear_4xx_and_import_nothing(server, case: str) -> None:
    data, params, status, message = BAD[case]
    api = server.client("admin")
    before = dataset_dirs(server)
    params = {"filename": "data.csv", **params}
    r = api.post("/v1/datasets", params=params, content=data)
    assert r.status_code == status, r.text
    assert message in r.text.lower() if message.islower() else message in r.text
    assert dataset_dirs(server) == before
    if case == "label outside the set":
        assert r.json()["errors"] == [{"row": 3, "error": "label 'meh' is not one of ['negative', 'positive']"}]
    if case == "unlabelled row without a text":
        assert r.json()["errors"] == [{"row": 2, "error": "empty text and label"}]
    if case == "unreadable encoding":
        assert r.json()["errors"][0]["line"] == 2
        fixed = api.post("/v1/datasets", params={**params, "encoding": "latin-1"}, content=data)
        assert fixed.status_code == 201 and dataset_dirs(server) != before


def test_unlabelled_rows_are_self_trained_on_and_a_dataset_can_search(server) -> None:
    labelled = keyword_sentiment(90, seed=11)
    pool = keyword_sentiment(150, seed=12).drop_duplicates("text")
    pool = pool[~pool["text"].isin(labelled["text"])]
    data = csv_bytes(pd.concat([labelled, pool.assign(label="")], ignore_index=True))
    api = server.client("admin", timeout=120)

    shown = api.post("/v1/datasets/preview", params={"filename": "d.csv"}, content=data).json()
    assert shown["n_unlabelled"] == len(pool)
    assert upload(api, data).status_code == 422  # refused unless asked for: a blank label may be a mistake
    r = upload(api, data, keep_unlabelled=True)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["n_unlabelled"] == len(pool) and ds["versions"][0]["n_rows"] == 90
    assert ds["versions"][0]["class_counts"] == labelled["label"].value_counts().sort_index().to_dict()
    rows = api.get(f"/v1/datasets/{ds['id']}/rows", params={"limit": 5000}).json()
    assert rows["total"] == 90 and "" not in {x["label"] for x in rows["items"]}

    r = api.post(f"/v1/datasets/{ds['id']}/train", json={"project": "pooled", "create_project": True})
    assert r.status_code == 202, r.text
    assert r.json()["n_unlabelled"] == len(pool) and r.json()["n_train"] + r.json()["n_holdout"] == 90
    run = wait_run(server.client("admin"), r.json()["run_id"], timeout=300, path="/v1/training/{run_id}")
    assert run["status"] == "passed", run
    metrics = json.loads((server.settings.models_dir / run["version"] / "metrics.json").read_text())
    facts = metrics["self_training"]
    assert facts["pool"] == len(pool) and facts["picked"] > 0, facts
    assert metrics["n_train"] == r.json()["n_train"] - metrics["n_val"] + facts["picked"]
    config = json.loads((server.settings.models_dir / run["version"] / "training_config.json").read_text())
    steps = config["settings"]["epochs"] * -(-metrics["n_train"] // 16)  # batch 16 on this server
    assert steps >= 150  # sized to model.min_steps as `tuneloop train` does, not the retrain's 6 epochs
    assert "search" not in metrics
    card = api.get(f"/v1/models/{run['version']}/evaluation", params={"project": "pooled"}).json()
    assert card["training"]["pseudo_labels"] == {"picked": facts["picked"], "offered": len(pool)}
    assert card["training"]["search"] is None and card["training"]["served"] == metrics["served"]

    # without the unlabelled rows, with the search (search.trials = 2 on this server)
    r = api.post(f"/v1/datasets/{ds['id']}/train", json={"project": "pooled", "self_training": False, "auto": True})
    assert r.status_code == 202 and r.json()["n_unlabelled"] == 0, r.text
    run = wait_run(server.client("admin"), r.json()["run_id"], timeout=300, path="/v1/training/{run_id}")
    assert run["status"] == "passed", run
    metrics = json.loads((server.settings.models_dir / run["version"] / "metrics.json").read_text())
    assert metrics.get("self_training") is None
    assert [t["trial"] for t in metrics["search"]["trials"]] == [0, 1]
    card = api.get(f"/v1/models/{run['version']}/evaluation", params={"project": "pooled"}).json()
    assert card["training"]["search"]["trials"] == 2 and card["training"]["pseudo_labels"] is None
    assert card["training"]["search"]["why"] == metrics["search"]["choice"]["words"]
    assert "validation rows" in card["training"]["search"]["why"]


def test_bad_fixes_change_nothing(server) -> None:
    api = server.client("admin")
    ds = upload(api, csv_bytes(keyword_sentiment(30, seed=4))).json()
    for body, what in (({"drop": [999]}, "no such row"), ({"relabel": [{"row_id": 1, "label": "meh"}]}, "not one of"),
                       ({"drop": [1], "relabel": [{"row_id": 1, "label": "neutral"}]}, "both dropped"),
                       ({}, "no fixes"), ({"drop": list(range(1, 31))}, "fewer than two labels")):
        r = api.post(f"/v1/datasets/{ds['id']}/fixes", json=body)
        assert r.status_code == 422 and what in r.text, (body, r.text)
    assert api.get(f"/v1/datasets/{ds['id']}").json()["latest_version"] == 1
    assert api.get("/v1/datasets/ds-000000000000").status_code == 404
    assert api.post(f"/v1/datasets/{ds['id']}/train", json={"project": "nope"}).status_code == 404
    assert server.client("label").get("/v1/datasets").status_code == 403


def test_feedback_quality_flags_mislabels_and_measures_annotator_agreement(server) -> None:
    from datetime import timedelta

    from tuneloop.monitor.storage import utcnow

    rng = np.random.default_rng(0)
    n, project = 150, "loop"
    api = server.client("admin")
    assert api.post("/v1/projects", json={"project": project, "labels": LABELS}).status_code == 201
    truth = [LABELS[i % 3] for i in range(n)]
    centres = rng.normal(size=(3, 16))
    emb = np.array([centres[LABELS.index(t)] + 0.4 * rng.normal(size=16) for t in truth], dtype=np.float32)
    t0 = utcnow() - timedelta(hours=1)
    server.store.append_predictions([{"id": f"p{i}", "ts": t0, "text": f"text {i}", "label": truth[i],
                                      "embedding": emb[i].tolist()} for i in range(n)], project)
    wrong = set(rng.choice(n, 15, replace=False).tolist()) - set(range(40))
    given = [LABELS[(LABELS.index(t) + 1) % 3] if i in wrong else t for i, t in enumerate(truth)]
    fb = [{"prediction_id": f"p{i}", "label": given[i], "source": "human", "annotator": "ann1",
           "ts": t0 + timedelta(minutes=1)} for i in range(n)]
    disagree = {3, 7, 11, 19}  # ann2 relabels 40 items and disagrees with ann1 on four of them
    fb += [{"prediction_id": f"p{i}", "label": LABELS[(LABELS.index(truth[i]) + 1) % 3] if i in disagree else truth[i],
            "source": "human", "annotator": "ann2", "ts": t0 + timedelta(minutes=2)} for i in range(40)]
    server.store.append_feedback(fb, project)

    out = server.client("label", timeout=300).get("/v1/feedback/quality", params={"project": project}).json()
    flagged = {int(x["prediction_id"][1:]) for x in out["suspected"]["items"]}
    assert out["suspected"]["n_checked"] == n
    assert out["excluded_from_retraining"] is False  # the default: flagged labels are only marked for review
    assert len(flagged & (wrong | disagree)) >= 0.8 * len(wrong | disagree)
    assert len(flagged) <= 2 * len(wrong | disagree)
    agreement = out["agreement"]
    assert (agreement["n_items"], agreement["n_pairs"]) == (40, 40)
    assert agreement["overall"]["agreement"] == pytest.approx(36 / 40)
    assert agreement["per_annotator"]["ann1"]["n_pairs"] == 40
    lo, hi = agreement["overall"]["ci95"]
    assert lo < 0.9 < hi


def test_data_check_command_prints_the_report_and_refuses_bad_files(tmp_path) -> None:
    from test_cli import tuneloop

    df = pd.DataFrame({"message": ["the same text", "the same text", "", "ok", "a normal sentence here"] * 2,
                       "sentiment": ["positive", "positive", "negative", "neutral", "negative"] * 2})
    df.to_csv(tmp_path / "data.csv", index=False)
    out = tuneloop("data", "check", "data.csv", "--no-embed", cwd=tmp_path).stdout
    assert "10 rows; per class: negative 4, neutral 2, positive 4" in out
    assert "empty text" in out and "rows 3, 8" in out
    assert "skipped (no encoder): near_duplicate, label_error" in out
    (tmp_path / "bad.csv").write_text("text,label\na,x\nb,x\n")
    bad = tuneloop("data", "check", "bad.csv", "--no-embed", cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "at least two labels" in bad.stderr
