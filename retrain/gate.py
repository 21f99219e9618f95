"""The promotion gate: does the challenger replace the champion?

Both models are scored on the same rows (see :mod:`tuneloop.retrain.job`); the gate reads
``{"holdout": metrics, "golden": metrics | None}`` for each, where a metrics dict is what
:func:`tuneloop.retrain.evaluate.classification_metrics` returns with ``rows`` (per-row ``id``,
``label`` and ``correct``). The challenger is promoted only if every check passes:

1. the holdout has at least ``min_holdout`` rows;
2. the gain is real: the one-sided (1 - ``alpha``) lower confidence bound of challenger - champion
   accuracy on the same holdout rows is above ``min_gain`` (exact McNemar test, see
   :mod:`tuneloop.retrain.paired` for why);
3. golden set: not worse by more than ``golden_tolerance`` *with evidence*: rejected when the upper
   confidence bound of the paired difference is below ``-golden_tolerance``;
4. per class: the same test on each class's holdout rows (recall) with ``recall_tolerance``.

Checks 3 and 4 reject on evidence of harm, not on a dip of a point estimate from a handful of rows.
Each statistical check records its test, n, estimate, interval, p-value, and the smallest gain this
holdout could detect at ``power`` (the planner), so a rejection says whether the holdout was too
small to tell. Without a champion, the challenger is compared with the logged model's own holdout
predictions (same paired test) or, given only a number, with ``baseline_accuracy`` (exact binomial).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scipy.stats import binomtest

from tuneloop.retrain.paired import TEST_NAME, PairedResult, detectable_gain, one_sample_lower, paired_difference
from tuneloop.retrain.settings import RetrainSettings


@dataclass
class Check:
    name: str
    passed: bool
    message: str
    value: float | None = None
    threshold: float | None = None
    stats: dict[str, Any] | None = None  # test, n, estimate, lower, upper, p_value, detectable_gain

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message, "value": self.value,
                "threshold": self.threshold, "stats": self.stats}


@dataclass
class Decision:
    promote: bool
    reasons: list[str]  # the failed checks when rejected; every check when promoted
    summary: str
    checks: list[Check] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, Any] | None:
        """The holdout comparison's statistics (what the run record and the CLI show)."""
        return next((c.stats for c in self.checks if c.name == "holdout_gain"), None)

    @property
    def headline(self) -> str:
        """One plain sentence: the verdict, the gain with its bound and test, and what this n could detect."""
        st = self.stats
        verdict = "promote" if self.promote else "reject"
        if not st or st.get("test") != TEST_NAME:
            return self.summary
        conf = 100 * (1 - st["alpha"])
        return (f"{verdict}: gain {pts(st['estimate'])} ({conf:.0f}% lower bound {pts(st['lower'])}; "
                f"{st['test']}, p = {st['p_value']:.3g}); {detectable_phrase(st['n'], st['detectable_gain'])}")

    def as_json(self) -> dict[str, Any]:
        return {"promote": self.promote, "headline": self.headline, "reasons": self.reasons, "summary": self.summary,
                "stats": self.stats, "checks": [c.as_json() for c in self.checks]}


def pts(x: float | None) -> str:
    """A difference in accuracy as signed percentage points."""
    return "-" if x is None else f"{100 * x:+.1f} pts"


def detectable_phrase(n: int, gain: float | None) -> str:
    """"holdout of 90 rows: can only detect gains >= 9 pts" (the planner's verdict in words)."""
    if gain is None:
        return f"holdout of {n} rows: too small to detect any gain"
    return f"holdout of {n} rows: can only detect gains ≥ {100 * gain:.0f} pts"


def _rows(metrics: dict[str, Any] | None, part: str) -> dict[str, list[Any]] | None:
    m = (metrics or {}).get(part) or {}
    rows = m.get("rows")
    return rows if rows and "correct" in rows else None


def _stats(r: PairedResult, p: float, s: RetrainSettings) -> dict[str, Any]:
    """The record of one paired test. The detectable gain uses the planning discordance, or the observed
    one when larger: a handful of discordant rows would otherwise claim a precision the holdout lacks."""
    d = max(r.discordance, s.planning_discordance)
    return {"test": TEST_NAME, "n": r.n, "estimate": r.estimate, "lower": r.lower, "upper": r.upper,
            "p_value": p, "alpha": s.alpha, "power": s.power, "wins": r.wins, "losses": r.losses,
            "detectable_gain": detectable_gain(r.n, d, s.alpha, s.power)}


def _paired(ch: dict[str, list[Any]], ref: dict[str, list[Any]], s: RetrainSettings,
            keep: list[bool] | None = None) -> PairedResult:
    if ch.get("id") is not None and ref.get("id") is not None and list(ch["id"]) != list(ref["id"]):
        raise ValueError("challenger and reference were not scored on the same rows")
    a, b = ch["correct"], ref["correct"]
    if keep is not None:
        a, b = [x for x, k in zip(a, keep, strict=True) if k], [x for x, k in zip(b, keep, strict=True) if k]
    return paired_difference(a, b, s.alpha)


def gain_check(ch: dict[str, list[Any]], ref: dict[str, list[Any]], who: str, s: RetrainSettings) -> Check:
    """Promote only when the lower bound of the paired gain clears ``min_gain``."""
    r = _paired(ch, ref, s)
    p = r.p_greater(s.min_gain)
    st = _stats(r, p, s)
    ok = p < s.alpha
    verdict = "a real gain" if ok else "not a demonstrated gain"
    msg = (f"{detectable_phrase(r.n, st['detectable_gain'])}; challenger vs {who} {pts(r.estimate)} "
           f"({100 * (1 - s.alpha):.0f}% lower bound {pts(r.lower)}, needs > {pts(s.min_gain)}; "
           f"{r.wins} rows only the challenger got right, {r.losses} only the {who}; p = {p:.3g}): {verdict}")
    return Check("holdout_gain", ok, msg, r.lower, s.min_gain, st)


def harm_check(what: str, ch: dict[str, list[Any]], ref: dict[str, list[Any]], tolerance: float,
               who: str, s: RetrainSettings, keep: list[bool] | None = None) -> tuple[bool, str, dict[str, Any]]:
    """Non-inferiority: fail only when the upper bound of the paired difference is below ``-tolerance``."""
    r = _paired(ch, ref, s, keep)
    p = r.p_less(-tolerance)
    harmed = p < s.alpha
    msg = (f"{what}: {pts(r.estimate)} vs {who} on {r.n} rows ({100 * (1 - s.alpha):.0f}% upper bound "
           f"{pts(r.upper)}; {'worse' if harmed else 'no evidence of a loss'} beyond {pts(-tolerance)}, p = {p:.3g})")
    return not harmed, msg, _stats(r, p, s)


def _baseline_check(holdout: dict[str, Any], baseline: float, s: RetrainSettings) -> Check:
    n = int(holdout.get("n") or 0)
    k = round(float(holdout.get("accuracy") or 0.0) * n)
    target = min(baseline + s.min_gain, 1.0)
    p = float(binomtest(k, n, target, alternative="greater").pvalue) if n and target < 1 else 1.0
    lower = one_sample_lower(k, n, s.alpha)
    ok = p < s.alpha
    msg = (f"holdout accuracy {k}/{n} = {k / max(n, 1):.3f} vs baseline {baseline:.3f} "
           f"({100 * (1 - s.alpha):.0f}% lower bound {lower:.3f}, needs > {target:.3f}; exact binomial p = {p:.3g})")
    return Check("holdout_gain", ok, msg, lower, target,
                 {"test": "exact binomial (one-sided)", "n": n, "estimate": k / max(n, 1) - baseline,
                  "lower": lower - baseline, "upper": None, "p_value": p, "alpha": s.alpha, "power": s.power,
                  "detectable_gain": None})


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    settings: RetrainSettings,
    baseline_accuracy: float | None = None,
) -> Decision:
    """Apply the gate. ``champion`` None: compare against ``baseline_accuracy`` (holdout) instead.

    ``champion`` may also be the logged external model's metrics on the holdout (same shape).
    """
    s = settings
    checks: list[Check] = []
    who = "champion" if champion is not None else "baseline"
    holdout = challenger.get("holdout") or {}
    n = int(holdout.get("n") or 0)
    checks.append(Check("holdout_size", n >= s.min_holdout,
                        f"holdout has {n} labelled rows (needs at least {s.min_holdout})", n, s.min_holdout))

    ch_rows, ref_rows = _rows(challenger, "holdout"), _rows(champion, "holdout")
    if champion is not None:
        if ch_rows is None or ref_rows is None:
            checks.append(Check("holdout_gain", False, "no per-row holdout outcomes: the paired test cannot run"))
        elif n:
            checks.append(gain_check(ch_rows, ref_rows, who, s))
    elif baseline_accuracy is not None:
        checks.append(_baseline_check(holdout, baseline_accuracy, s))
    else:
        checks.append(Check("holdout_gain", True, f"challenger holdout accuracy {holdout.get('accuracy')}; "
                            "no champion or baseline to beat"))

    ch_gold, ref_gold = _rows(challenger, "golden"), _rows(champion, "golden")
    if ch_gold is not None and ref_gold is not None and ch_gold["correct"]:
        ok, msg, st = harm_check("golden set", ch_gold, ref_gold, s.golden_tolerance, who, s)
        checks.append(Check("golden_accuracy", ok, msg, st["upper"], -s.golden_tolerance, st))
    elif ch_gold is None and ((challenger.get("golden") or {}).get("n") or ref_gold):
        checks.append(Check("golden_accuracy", False, "the golden set was not evaluated for the challenger"))

    if ch_rows is not None and ref_rows is not None and n:
        checks.append(_class_check(ch_rows, ref_rows, who, s))

    failed = [c for c in checks if not c.passed]
    promote = not failed
    reasons = [c.message for c in (checks if promote else failed)]
    if promote:
        summary = f"promote: {checks[1].message}"
    else:
        summary = f"reject: {len(failed)} of {len(checks)} checks failed ({', '.join(c.name for c in failed)})"
    return Decision(promote, reasons, summary, checks)


def _class_check(ch: dict[str, list[Any]], ref: dict[str, list[Any]], who: str, s: RetrainSettings) -> Check:
    """Per-class recall as a paired non-inferiority test on the rows of each true class."""
    results = {}
    for label in sorted(set(map(str, ch["label"]))):
        keep = [str(y) == label for y in ch["label"]]
        results[label] = harm_check(f"recall of {label}", ch, ref, s.recall_tolerance, who, s, keep)
    harmed = [msg for ok, msg, _ in results.values() if not ok]
    worst = min(results, key=lambda k: results[k][2]["upper"])
    if harmed:
        msg = "; ".join(harmed)
    else:
        msg = f"per-class recall: no class worse beyond {pts(-s.recall_tolerance)} (closest: {results[worst][1]})"
    st = {k: v[2] for k, v in results.items()}
    return Check("class_recall", not harmed, msg, results[worst][2]["upper"], -s.recall_tolerance, st)
