"""The promotion gate: does the challenger replace the champion?

Both models are scored on the same rows (see :mod:`tuneloop.retrain.job`); the gate reads
``{"holdout": metrics, "golden": metrics | None}`` for each, where a metrics dict is what
:func:`tuneloop.retrain.evaluate.classification_metrics` returns. The challenger is promoted only
if every check passes:

1. the holdout has at least ``min_holdout`` rows (a smaller one cannot tell models apart);
2. holdout accuracy >= champion's + ``gate_margin`` (a real improvement, not noise);
3. golden-set accuracy >= champion's - ``golden_tolerance`` (no regression on what must keep working);
4. no class's holdout recall falls by more than ``recall_tolerance`` (no class sacrificed for the mean).

Without a champion (a project whose predictions come from an external model), the challenger is
compared against a baseline: the logged model's own metrics on the holdout, or a given accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneloop.monitor.config import RetrainSettings

EPS = 1e-9  # float noise must not flip a tie


@dataclass
class Check:
    name: str
    passed: bool
    message: str
    value: float | None = None
    threshold: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message, "value": self.value,
                "threshold": self.threshold}


@dataclass
class Decision:
    promote: bool
    reasons: list[str]  # the failed checks when rejected; every check when promoted
    summary: str
    checks: list[Check] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": self.reasons, "summary": self.summary,
                "checks": [c.as_json() for c in self.checks]}


def _acc(metrics: dict[str, Any] | None, part: str) -> float | None:
    m = (metrics or {}).get(part) or {}
    v = m.get("accuracy")
    return None if v is None else float(v)


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    settings: RetrainSettings,
    baseline_accuracy: float | None = None,
) -> Decision:
    """Apply the gate. ``champion`` None: compare against ``baseline_accuracy`` (holdout) instead.

    ``champion`` may also be the logged external model's metrics on the holdout (same shape); then
    the recall check applies to it as well.
    """
    checks: list[Check] = []
    who = "champion" if champion is not None else "baseline"
    holdout = challenger.get("holdout") or {}
    n = int(holdout.get("n") or 0)

    # 1. enough holdout rows
    checks.append(Check(
        "holdout_size", n >= settings.min_holdout,
        f"holdout has {n} labelled rows (needs at least {settings.min_holdout})", n, settings.min_holdout))

    # 2. holdout accuracy beats the champion by the margin
    ch_acc = _acc(challenger, "holdout")
    ref_acc = _acc(champion, "holdout") if champion is not None else baseline_accuracy
    if ch_acc is None:
        checks.append(Check("holdout_accuracy", False, "challenger has no holdout accuracy"))
    elif ref_acc is None:
        checks.append(Check("holdout_accuracy", True,
                            f"challenger holdout accuracy {ch_acc:.3f}; no champion or baseline to beat",
                            ch_acc, None))
    else:
        need = ref_acc + settings.gate_margin
        checks.append(Check(
            "holdout_accuracy", ch_acc + EPS >= need,
            f"holdout accuracy {ch_acc:.3f} vs {who} {ref_acc:.3f} ({ch_acc - ref_acc:+.3f}; "
            f"needs {settings.gate_margin:+.3f})", ch_acc, need))

    # 3. golden set: no loss beyond the tolerance
    ch_gold, ref_gold = _acc(challenger, "golden"), _acc(champion, "golden")
    if ch_gold is not None and ref_gold is not None:
        floor = ref_gold - settings.golden_tolerance
        n_gold = int((challenger.get("golden") or {}).get("n") or 0)
        checks.append(Check(
            "golden_accuracy", ch_gold + EPS >= floor,
            f"golden-set accuracy {ch_gold:.3f} vs {who} {ref_gold:.3f} ({ch_gold - ref_gold:+.3f}; "
            f"may lose at most {settings.golden_tolerance:.3f}; {n_gold} rows)", ch_gold, floor))
    elif ch_gold is None and (challenger.get("golden") or (champion or {}).get("golden")):
        checks.append(Check("golden_accuracy", False, "the golden set was not evaluated for the challenger"))

    # 4. per-class recall on the holdout
    ch_rec = holdout.get("per_class_recall") or {}
    ref_rec = ((champion or {}).get("holdout") or {}).get("per_class_recall") or {}
    support = holdout.get("support") or {}
    drops = {c: ref_rec[c] - ch_rec[c] for c in sorted(set(ch_rec) & set(ref_rec))}
    worst = [c for c, d in drops.items() if d > settings.recall_tolerance + EPS]
    if drops:
        if worst:
            detail = "; ".join(f"{c} {ref_rec[c]:.3f} -> {ch_rec[c]:.3f} ({-drops[c]:+.3f}, {support.get(c, '?')} rows)"
                               for c in worst)
            msg = f"recall fell by more than {settings.recall_tolerance:.3f} for {detail}"
        else:
            c = max(drops, key=lambda k: drops[k])
            msg = (f"per-class recall within tolerance {settings.recall_tolerance:.3f} "
                   f"(largest change: {c} {ref_rec[c]:.3f} -> {ch_rec[c]:.3f})")
        checks.append(Check("class_recall", not worst, msg, max(drops.values()), settings.recall_tolerance))

    failed = [c for c in checks if not c.passed]
    promote = not failed
    reasons = [c.message for c in (checks if promote else failed)]
    if promote:
        summary = (f"promote: challenger {ch_acc:.3f} on {n} holdout rows"
                   + (f" vs {who} {ref_acc:.3f}" if ref_acc is not None else ""))
    else:
        summary = f"reject: {len(failed)} of {len(checks)} checks failed ({', '.join(c.name for c in failed)})"
    return Decision(promote, reasons, summary, checks)
