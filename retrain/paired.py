"""Paired comparison of two classifiers scored on the same rows, and the sample-size planner.

Why the exact conditional (McNemar) test: both models answer the same rows, so only the rows where
exactly one of them is right (the discordant pairs) carry information about the difference, and given
their number ``m`` the challenger's wins are Binomial(m, pi). A one-sided exact binomial test on them
(:func:`scipy.stats.binomtest`) has a false-promotion rate of at most alpha at every n, including the
30-row holdouts where Wald intervals undercover and a bootstrap is too coarse; it needs no random
resampling (same inputs, same decision). The difference in accuracy is ``delta = d * (2 pi - 1)``
with ``d = m / n`` the discordance rate, so its confidence bounds are the exact (Clopper-Pearson)
bounds of ``pi`` mapped through that line with ``d`` at its observed value. The test against a
margin ``g`` is the same binomial test at ``pi0 = (1 + g / d) / 2``, so the p-value and the interval
always agree.

The planner uses the normal approximation of that test (Connor 1987): detecting a gain ``delta``
with discordance ``d`` at one-sided level alpha and the given power needs
``n = (z_a sqrt(d) + z_b sqrt(d - delta^2))^2 / delta^2`` rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import binomtest, norm

TEST_NAME = "exact McNemar (paired, one-sided)"


@dataclass(frozen=True)
class PairedResult:
    """challenger - reference accuracy on the same ``n`` rows, with one-sided bounds at level alpha."""

    n: int
    wins: int  # rows only the challenger gets right
    losses: int  # rows only the reference gets right
    estimate: float
    lower: float  # one-sided (1 - alpha) lower bound
    upper: float  # one-sided (1 - alpha) upper bound
    alpha: float

    @property
    def discordance(self) -> float:
        return (self.wins + self.losses) / self.n if self.n else 0.0

    def p_greater(self, margin: float = 0.0) -> float:
        """p-value of H0: delta <= margin (small: the challenger is better by more than ``margin``)."""
        m = self.wins + self.losses
        if m == 0:
            return 1.0
        pi0 = (1 + margin / self.discordance) / 2
        if pi0 >= 1:
            return 1.0
        if pi0 <= 0:
            return 0.0
        return float(binomtest(self.wins, m, pi0, alternative="greater").pvalue)

    def p_less(self, margin: float = 0.0) -> float:
        """p-value of H0: delta >= margin (small: the challenger is worse than ``margin``)."""
        m = self.wins + self.losses
        if m == 0:
            return 1.0
        pi0 = (1 + margin / self.discordance) / 2
        if pi0 <= 0:
            return 1.0
        if pi0 >= 1:
            return 0.0
        return float(binomtest(self.wins, m, pi0, alternative="less").pvalue)


def paired_difference(challenger_correct: Sequence[int], reference_correct: Sequence[int],
                      alpha: float = 0.05) -> PairedResult:
    """Exact paired comparison of per-row correctness (1 right, 0 wrong), same rows in the same order."""
    if len(challenger_correct) != len(reference_correct):
        raise ValueError(f"paired outcomes differ in length: {len(challenger_correct)} vs {len(reference_correct)}")
    n = len(challenger_correct)
    wins = sum(1 for c, r in zip(challenger_correct, reference_correct, strict=True) if c and not r)
    losses = sum(1 for c, r in zip(challenger_correct, reference_correct, strict=True) if r and not c)
    m = wins + losses
    if m == 0:
        return PairedResult(n, 0, 0, 0.0, 0.0, 0.0, alpha)
    d = m / n
    lo = binomtest(wins, m, 0.5, alternative="greater").proportion_ci(1 - alpha, method="exact").low
    hi = binomtest(wins, m, 0.5, alternative="less").proportion_ci(1 - alpha, method="exact").high
    return PairedResult(n, wins, losses, (wins - losses) / n, d * (2 * lo - 1), d * (2 * hi - 1), alpha)


def rows_needed(gain: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Rows the paired test needs to detect ``gain`` with this ``power`` (discordance >= gain)."""
    if gain <= 0:
        raise ValueError("the gain to detect must be positive")
    d = max(discordance, gain)
    za, zb = norm.ppf(1 - alpha), norm.ppf(power)
    return math.ceil((za * math.sqrt(d) + zb * math.sqrt(max(d - gain * gain, 0.0))) ** 2 / gain ** 2)


def detectable_gain(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest gain ``n`` paired rows detect with this ``power``; None when not even ``discordance``.

    A gain cannot exceed the discordance (every discordant row would be a win), so the search runs
    over (0, discordance].
    """
    d = min(max(discordance, 1e-6), 1.0)
    za, zb = norm.ppf(1 - alpha), norm.ppf(power)

    def excess(gain: float) -> float:
        return (za * math.sqrt(d) + zb * math.sqrt(max(d - gain * gain, 0.0))) ** 2 / gain ** 2 - n

    if n <= 0 or excess(d) > 0:
        return None
    return float(brentq(excess, 1e-9, d, xtol=1e-6))


def one_sample_lower(correct: int, n: int, alpha: float = 0.05) -> float:
    """Exact one-sided (1 - alpha) lower bound of an accuracy from ``correct`` of ``n`` rows."""
    if n == 0:
        return 0.0
    return float(binomtest(correct, n, 0.5, alternative="greater").proportion_ci(1 - alpha, method="exact").low)
