"""The retrain export: what counts as "new" has an upper bound, and the replay sample is stable."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from tuneloop.monitor.retraining import count_new_labels, export_frames
from tuneloop.monitor.storage import Store, utcnow

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "t.duckdb") as s:
        yield s


def test_labels_written_during_an_export_are_new_for_the_next_run_only(store):
    exported_at = utcnow()
    store.append_predictions([{"id": f"p{i}", "text": f"text {i}", "label": "neutral"} for i in range(4)])
    store.append_feedback([
        {"id": "before1", "prediction_id": "p0", "label": "positive", "ts": exported_at - timedelta(seconds=2)},
        {"id": "before2", "prediction_id": "p1", "label": "negative", "ts": exported_at},
        {"id": "during", "prediction_id": "p2", "label": "positive", "ts": exported_at + timedelta(seconds=1)},
    ])
    new, _ = export_frames(store, "default", None, LABELS, older_cap=100, until=exported_at)
    assert sorted(new["id"]) == ["p0", "p1"]
    # the next run's cutoff is this export's time: the label written during it is new then, and only it
    assert count_new_labels(store, "default", cutoff=exported_at) == 1


def _store_with_reference(path, rows):  # type: ignore[no-untyped-def]
    store = Store(path)
    store.execute("INSERT INTO model_versions (project, version, created_at, status, path) "
                  "VALUES ('default', 'v1', ?, 'champion', 'x')", [utcnow()])
    for text, label in rows:
        store.execute("INSERT INTO reference_rows (project, reference, text, true_label) "
                      "VALUES ('default', 'v1', ?, ?)", [text, label])
    return store


def test_the_replay_sample_does_not_depend_on_the_order_rows_were_stored(tmp_path):
    rows = [(f"reference text {i}", LABELS[i % 3]) for i in range(40)]
    samples = []
    for name, ordered in (("a", rows), ("b", rows[::-1])):
        with _store_with_reference(tmp_path / f"{name}.duckdb", ordered) as store:
            _, older = export_frames(store, "default", None, LABELS, older_cap=10, seed=3)
        samples.append(older.values.tolist())
    assert len(samples[0]) == 10
    assert samples[0] == samples[1]


def test_labels_flagged_as_likely_mislabelled_can_be_left_out_of_the_export(store):
    from tuneloop.monitor.feedback_quality import suspected_ids

    rng = np.random.default_rng(1)
    n = 120
    truth = [LABELS[i % 3] for i in range(n)]
    centres = rng.normal(size=(3, 16))
    store.append_predictions([{"id": f"p{i}", "text": f"text {i}", "label": truth[i],
                               "embedding": (centres[i % 3] + 0.4 * rng.normal(size=16)).tolist()} for i in range(n)])
    wrong = {int(i) for i in rng.choice(n, 12, replace=False)}
    store.append_feedback([{"prediction_id": f"p{i}", "source": "human", "annotator": "a",
                            "label": LABELS[(i + 1) % 3] if i in wrong else truth[i]} for i in range(n)])
    kept, _ = export_frames(store, "default", None, LABELS, older_cap=100)
    assert len(kept) == n  # off by default: every label is exported
    suspects = suspected_ids(store, "default", LABELS)
    assert len(suspects & {f"p{i}" for i in wrong}) >= 0.8 * len(wrong)
    new, older = export_frames(store, "default", None, LABELS, older_cap=100, exclude_suspected=True)
    assert set(new["id"]) == {f"p{i}" for i in range(n)} - suspects
    assert older.empty
