"""bench/choice_rules.py: the replacement and harm counts it reports, and its run on a recorded search."""

import json

import numpy as np

from bench import choice_rules as cr

LABELS = ["negative", "neutral", "positive"]


def _probs(y: np.ndarray, right: float, rng: np.random.Generator) -> np.ndarray:
    """Sure probabilities, on the true class with probability ``right``."""
    pred = np.where(rng.random(len(y)) < right, y, (y + 1 + rng.integers(0, 2, len(y))) % 3)
    return np.eye(3)[pred] * 0.9 + 0.1 / 3


def test_a_rule_that_always_replaces_by_a_worse_candidate_is_harmful_every_time():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    good, bad = _probs(y, 0.8, rng).argmax(1), _probs(y, 0.4, rng).argmax(1)
    always = cr.simulate(lambda yy, preds, k: 1, [good, bad], y, 45, 3, draws=20, seed=0)
    assert always["replaced"] == always["harmful"] == 20 and always["gain"] < -0.2 and always["best"] == 0
    never = cr.simulate(cr.RULES["default always"], [good, bad], y, 45, 3, draws=20, seed=0)
    assert never["replaced"] == never["harmful"] == 0 and never["gain"] == 0
    paired = cr.simulate(cr.RULES["paired a=0.10"], [good, bad], y, 45, 3, draws=20, seed=0)
    assert paired["harmful"] == 0  # a worse candidate is never better by the test


def test_the_report_runs_on_a_recorded_search(tmp_path, capsys):
    rng = np.random.default_rng(1)
    y_val, y_test = rng.integers(0, 3, 45), rng.integers(0, 3, 400)

    def rows(y: np.ndarray, right: float) -> list[list[float]]:
        return _probs(y, right, rng).tolist()

    cell = {"rows": {"labels": LABELS,
                     "val": {"y": [LABELS[i] for i in y_val], "tfidf": rows(y_val, 0.6)},
                     "test": {"y": [LABELS[i] for i in y_test], "tfidf": rows(y_test, 0.6)}},
            "search": {"rows": [{"val_encoder": rows(y_val, r), "test_encoder": rows(y_test, r), "blend_tfidf": 0.5}
                                for r in (0.6, 0.9)]}}
    path = tmp_path / "finetune-trials-x.json"
    path.write_text(json.dumps({"x|300|0|new:auto=2": cell}))
    cr.main(["--files", str(path), "--draws", "10"])
    out = capsys.readouterr().out
    assert "1 searched cells; 10 draws each" in out and "| paired a=0.10 |" in out
    assert "45 validation rows:" in out and "150 validation rows:" in out
    # the trial whose encoder is right 90 % of the time against 60 %: the test finds it on most 45-row draws
    table = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| ")}
    replaced, harmful = (int(table["paired a=0.10"][i].split()[0]) for i in (2, 3))
    assert replaced >= 8 and harmful == 0
    assert int(table["default always"][2].split()[0]) == 0
