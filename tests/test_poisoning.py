"""Poisoned feedback never reaches production: 20 seeded challengers trained on bad labels, 0 promotions.

Each challenger continues the champion's adapter (as a retrain does) on feedback an attacker
controls: labels flipped to the next class, positive/negative swapped, uniformly random, all one
class, or one class relabelled as another (a targeted attack). Real (tiny, single-threaded, so
deterministic) training, then the promotion gate on the same rows for both models, then the
registry, where every rejection is recorded with its reasons.

Two threat models: the attacker controls the training feedback but the holdout is the operator's
trusted random-slice labels (the paired holdout test rejects), or the whole stream including the
holdout is poisoned (the pinned golden set rejects what such a holdout lets through). Clean
challengers trained the same way are promoted, so the gate is not simply refusing everything.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest

from tuneloop.monitor import registry
from tuneloop.monitor.config import RetrainSettings
from tuneloop.monitor.storage import Store
from tuneloop.retrain import gate
from tuneloop.retrain.evaluate import evaluate
from tuneloop.retrain.tiny import keyword_sentiment
from tuneloop.retrain.trainer import train
from tuneloop.retrain.versions import write_version

LABELS = ["negative", "neutral", "positive"]
GATE = RetrainSettings()
"""The shipped gate: exact paired test at alpha 0.05 on the holdout, golden and recall non-inferiority."""
N_TRAIN, N_HOLDOUT, EPOCHS = 150, 120, 4
CHAMPION_ROWS, CHAMPION_EPOCHS = 240, 7
POISONS = ["flip", "swap", "random", "constant", "targeted"]


def poison(labels: list[str], kind: str, rng: random.Random) -> list[str]:
    if kind == "flip":
        return [LABELS[(LABELS.index(y) + 1) % 3] for y in labels]
    if kind == "swap":
        return [{"negative": "positive", "positive": "negative"}.get(y, y) for y in labels]
    if kind == "random":
        return [rng.choice(LABELS) for _ in labels]
    if kind == "constant":
        return ["positive"] * len(labels)
    if kind == "targeted":  # every negative text taught as positive
        return ["positive" if y == "negative" else y for y in labels]
    raise ValueError(kind)


@pytest.fixture(scope="module")
def setting(tmp_path_factory, sentiment_base, sentiment_settings):
    """A champion that is good but not perfect (so honest feedback can improve it), trained here, one thread."""
    root = tmp_path_factory.mktemp("poison")
    store = Store(root / "t.duckdb")
    models = root / "models"
    # No TF-IDF blend and no head warm-started from a frozen fit: on this keyword data either alone makes the
    # champion near-perfect, and the control below needs a champion that honest feedback can still improve.
    model_settings = sentiment_settings.model_copy(update={"threads": 1, "patience": 8, "blend_tfidf": 0.0,
                                                           "warm_start_head": False})
    first = train(keyword_sentiment(CHAMPION_ROWS, seed=42), LABELS, model_settings, epochs=CHAMPION_EPOCHS,
                  progress=False)
    champion_dir = write_version(models, "v0", first.classifier, first.metrics, first.manifest)
    registry.register_dir(store, "default", models, "v0")
    registry.promote(store, "default", "v0", "test")
    golden = keyword_sentiment(60, seed=999)
    yield {"store": store, "models": models, "champion_dir": champion_dir, "settings": model_settings,
           "golden": golden, "champion_golden": evaluate(first.classifier, golden, rows=True),
           "champion": first.classifier}
    store.close()


def challenge(s: dict, seed: int, kind: str | None, poisoned_holdout: bool) -> tuple[str, gate.Decision]:
    """Train a challenger on (possibly poisoned) feedback, gate it against the champion, record the verdict."""
    rng = random.Random(seed)
    data = keyword_sentiment(N_TRAIN + N_HOLDOUT, seed=1000 + seed)
    fit, holdout = data.iloc[:N_TRAIN].reset_index(drop=True), data.iloc[N_TRAIN:].reset_index(drop=True)
    if kind is not None:
        fit = fit.assign(label=poison(fit["label"].tolist(), kind, rng))
        if poisoned_holdout:
            holdout = holdout.assign(label=poison(holdout["label"].tolist(), kind, rng))
    result = train(fit, None, s["settings"], init_from=s["champion_dir"], epochs=EPOCHS, progress=False)
    challenger = {"holdout": evaluate(result.classifier, holdout, rows=True),
                  "golden": evaluate(result.classifier, s["golden"], rows=True)}
    champion = {"holdout": evaluate(s["champion"], holdout, rows=True), "golden": s["champion_golden"]}
    decision = gate.decide(challenger, champion, GATE)
    version = f"c{seed}-{kind or 'clean'}"
    write_version(s["models"], version, result.classifier, {**result.metrics, **challenger, "champion": champion},
                  {"n_rows": len(fit), "poison": kind}, parent="v0")
    registry.register_dir(s["store"], "default", s["models"], version)
    if decision.promote:
        registry.promote(s["store"], "default", version, "gate", decision.summary)
    else:
        registry.reject(s["store"], "default", version, decision.reasons)
    return version, decision


@pytest.mark.slow
def test_poisoned_challengers_are_never_promoted(setting, figure):
    verdicts = []
    for seed in range(20):
        kind = POISONS[seed % len(POISONS)]
        poisoned_holdout = seed >= 15  # the last five: the whole stream is poisoned, only the golden set is clean
        version, decision = challenge(setting, seed, kind, poisoned_holdout)
        verdicts.append((version, decision))
        failed = {c.name for c in decision.checks if not c.passed}
        assert not decision.promote, (version, decision.summary, decision.reasons)
        if poisoned_holdout and "holdout_gain" not in failed:
            # the attacker also wrote the holdout and won it: the pinned golden set must catch the challenger
            assert "golden_accuracy" in failed, (version, decision.reasons)
        else:  # a trusted holdout catches the poison itself (as does a poisoned one that shows no gain)
            assert failed & {"holdout_gain", "class_recall"}, (version, decision.reasons)
    store = setting["store"]
    assert registry.champion(store, "default")["version"] == "v0"
    rows = {r["version"]: r for r in registry.list_versions(store, "default")}
    for version, decision in verdicts:
        assert rows[version]["status"] == "rejected" and rows[version]["reasons"] == decision.reasons
        assert rows[version]["reasons"], version
    with pytest.raises(registry.PromotionRefused, match="was rejected"):
        registry.promote(store, "default", verdicts[0][0], "someone")
    by_check: dict[str, int] = {}
    for _, d in verdicts:
        for c in d.checks:
            if not c.passed:
                by_check[c.name] = by_check.get(c.name, 0) + 1
    figure("poisoning: promotions of poisoned challengers", f"0 of {len(verdicts)} (failed checks: {by_check})")


@pytest.mark.slow
def test_clean_challengers_trained_the_same_way_are_promoted(setting):
    """The control: the same recipe on honest feedback beats the champion, so rejections above mean something."""
    promoted = []
    for seed in (100, 101):
        version, decision = challenge(setting, seed, None, False)
        promoted.append(decision.promote)
        assert decision.promote, (version, decision.reasons)
        assert registry.champion(setting["store"], "default")["version"] == version
    assert all(promoted)


def test_poison_kinds_change_the_labels():
    rng = random.Random(0)
    labels = keyword_sentiment(30)["label"].tolist()
    for kind in POISONS:
        changed = sum(a != b for a, b in zip(labels, poison(labels, kind, rng), strict=True))
        assert changed >= (5 if kind in ("random", "targeted") else 10), kind
    assert pd.Series(poison(labels, "constant", rng)).nunique() == 1
