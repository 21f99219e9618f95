"""The input checks' reference (embedding, text descriptors) is made of rows that look like traffic.

A retrained version's reference rows hold its training rows: label-queue picks (uncertainty
sampling favours long, unusual texts) and replayed older rows. Those are not what traffic looks
like, so unless there is enough traffic from before the promotion, the input checks compare with
the rows the version was not trained on (its random evaluation slice, and later re-scored traffic),
as the model-output checks do. Real tweets, a real DuckDB store.
"""

import numpy as np
import pandas as pd
import pytest

from tuneloop.monitor import checks, registry
from tuneloop.monitor.config import load_settings
from tuneloop.monitor.demo import data as dd
from tuneloop.monitor.runtime import open_store

INPUT_CHECKS = ("text_length_drift", "oov_rate_drift", "non_ascii_drift")


@pytest.fixture
def store_and_settings(tmp_path):
    settings = load_settings(paths={"data_dir": tmp_path}, drift={"window_size": 200})
    store = open_store(settings)
    yield store, settings
    store.close()


def _rows(texts: pd.Series, prefix: str, rng: np.random.Generator) -> pd.DataFrame:
    """Rows with the reference/prediction columns; embeddings from one distribution for every side."""
    n = len(texts)
    return pd.DataFrame({
        "id": [f"{prefix}{i}" for i in range(n)], "text": texts.astype(str).to_numpy(),
        "label": "negative", "confidence": 0.8,
        "embedding": list(rng.standard_normal((n, 8), dtype=np.float32)),
    })


def test_queue_picked_training_rows_do_not_make_random_traffic_alarm(store_and_settings, tmp_path):
    store, settings = store_and_settings
    rng = np.random.default_rng(0)
    pool = dd.split_topics(seed=0)["airline"]["stream"]["text"].reset_index(drop=True)
    shuffled = pool.sample(frac=1.0, random_state=1).reset_index(drop=True)
    holdout, traffic, rest = shuffled.iloc[:200], shuffled.iloc[200:400], shuffled.iloc[400:]
    picks = rest.loc[rest.str.len().sort_values(ascending=False).index[:300]]  # what uncertainty sampling favours
    assert picks.str.len().median() > 1.3 * traffic.str.len().median()

    registry.register_version(store, "default", "v2", tmp_path / "models" / "v2", metrics={})
    reference = pd.concat([_rows(picks, "pick", rng).assign(split="train"),
                           _rows(holdout, "slice", rng).assign(split="holdout")], ignore_index=True)
    registry.load_reference(store, "default", "v2", reference)
    registry.promote(store, "default", "v2", "ops")  # no traffic before the promotion
    store.append_predictions(_rows(traffic, "live", rng).assign(model_version="v2", ts=pd.Timestamp.now()))

    run = checks.run_drift_checks(store, settings, "default", render=False)
    by_metric = {r["metric"]: r for r in run.results}
    assert set(INPUT_CHECKS) <= set(by_metric)
    assert not any(by_metric[m]["drifted"] for m in INPUT_CHECKS), {m: by_metric[m]["value"] for m in INPUT_CHECKS}
    ref = checks.reference_frames(store, settings, "default")
    assert set(ref.inputs["split"]) == {"holdout"} and len(ref.inputs) == 200
    assert ref.inputs_source == "200 reference rows v2 was not trained on"
    assert by_metric["text_length_drift"]["details"]["reference_inputs"] == ref.inputs_source
