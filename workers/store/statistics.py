"""The statistics of an experiment report: pure functions over counts and scores.

One function, ``decide``, makes the call the report shows (and the tests simulate), so
what is tested is what operators read. The best variant is tested against the
runner-up, two-sided: a two-proportion z-test for success rates, Welch's t-test for
scores. When the difference is not significant the report says how many outcomes per
variant would detect the observed difference at 80% power, so "no winner" comes with
"keep going for about n more".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats  # type: ignore[import-untyped]

__all__ = ["Arm", "decide", "figure", "sample_size", "verdict", "wilson_interval"]

#: Power at which ``sample_size`` asks to detect the observed difference.
POWER = 0.8


@dataclass(frozen=True)
class Arm:
    """One variant's outcomes: how many, how many succeeded, their scores."""

    name: str
    n: int
    successes: int = 0
    scores: Sequence[float] = field(default_factory=tuple)

    @property
    def rate(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def mean_score(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval (95% by default): sound near 0 and 1 and for small n,
    where the textbook p ± z·se interval leaves [0, 1] or collapses to a point."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _rates_p(a: Arm, b: Arm) -> float | None:
    """Two-sided p of the pooled two-proportion z-test."""
    if a.n == 0 or b.n == 0:
        return None
    pooled = (a.successes + b.successes) / (a.n + b.n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.n + 1 / b.n))
    if se == 0:
        return 1.0
    z = (a.successes / a.n - b.successes / b.n) / se
    return float(2 * stats.norm.sf(abs(z)))


def _scores_p(a: Arm, b: Arm) -> float | None:
    """Two-sided p of Welch's t-test (unequal variances)."""
    if len(a.scores) < 2 or len(b.scores) < 2:
        return None
    result = stats.ttest_ind(list(a.scores), list(b.scores), equal_var=False)
    p = float(result.pvalue)
    return 1.0 if math.isnan(p) else p


def sample_size(metric: str, a: Arm, b: Arm, alpha: float, power: float = POWER) -> int | None:
    """Outcomes per variant needed to detect the observed difference; None when there
    is no difference to detect (or nothing observed yet)."""
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    if metric == "success_rate":
        if a.rate is None or b.rate is None or a.rate == b.rate:
            return None
        spread = a.rate * (1 - a.rate) + b.rate * (1 - b.rate)
        return math.ceil(z * z * spread / (a.rate - b.rate) ** 2)
    ma, mb = a.mean_score, b.mean_score
    if ma is None or mb is None or ma == mb or len(a.scores) < 2 or len(b.scores) < 2:
        return None
    spread = stats.tvar(list(a.scores)) + stats.tvar(list(b.scores))
    return math.ceil(z * z * float(spread) / (ma - mb) ** 2)


def decide(arms: Sequence[Arm], metric: str, alpha: float) -> dict[str, Any]:
    """Best against runner-up on ``metric``: p_value, significant, winner (when p <
    alpha), and the sample size needed per variant when not significant."""
    def value(arm: Arm) -> float:
        measured = arm.rate if metric == "success_rate" else arm.mean_score
        return -math.inf if measured is None else measured

    ranked = sorted(arms, key=value, reverse=True)
    if len(ranked) < 2:
        return {"metric": metric, "p_value": None, "significant": False, "winner": None,
                "needed_per_variant": None}
    best, runner_up = ranked[0], ranked[1]
    test = _rates_p if metric == "success_rate" else _scores_p
    p_value = test(best, runner_up)
    significant = p_value is not None and p_value < alpha and value(best) > value(runner_up)
    return {
        "metric": metric, "compared": [best.name, runner_up.name], "p_value": p_value,
        "significant": significant, "winner": best.name if significant else None,
        "needed_per_variant": None if significant else sample_size(metric, best, runner_up,
                                                                   alpha),
    }


def figure(value: Any, fmt: str = "{:.3f}") -> str:
    """A report's number as text; "-" where there is none yet."""
    return "-" if value is None else fmt.format(value)


def verdict(rep: dict[str, Any]) -> str:
    """What a report's test concluded, in words."""
    if rep["winner"]:
        return f"winner: {rep['winner']}"
    if rep["needed_per_variant"]:
        return (f"no winner yet: about {rep['needed_per_variant']} outcomes per variant "
                "would detect the observed difference")
    return "no winner yet"
