"""The statistics an experiment's report calls, on simulated outcomes: real differences
found, equal variants rarely called, Welch for scores, Wilson intervals in bounds."""

from __future__ import annotations

import random

from workers.store.statistics import Arm, decide, wilson_interval

# -- statistics (the function the report calls) ------------------------------


def simulate(rng: random.Random, name: str, n: int, rate: float) -> Arm:
    return Arm(name, n, sum(rng.random() < rate for _ in range(n)))


def test_a_real_difference_in_rates_is_found() -> None:
    # Given 2,000 outcomes each at 60% and 50% success
    rng = random.Random(7)
    arms = [simulate(rng, "control", 2000, 0.50), simulate(rng, "better", 2000, 0.60)]
    # When the report's decision is made
    decision = decide(arms, "success_rate", alpha=0.05)
    # Then it is significant and names the better variant
    assert decision["significant"] and decision["winner"] == "better"
    assert decision["p_value"] < 1e-6 and decision["needed_per_variant"] is None


def test_equal_variants_rarely_get_a_winner() -> None:
    # Given 200 simulated experiments whose two variants are the same (55%)
    rng = random.Random(11)
    winners = 0
    for _ in range(200):
        arms = [simulate(rng, "a", 500, 0.55), simulate(rng, "b", 500, 0.55)]
        # When each is decided at alpha 0.05
        winners += decide(arms, "success_rate", alpha=0.05)["winner"] is not None
    # Then a winner is called in at most 10% of them (about 5% expected)
    assert winners <= 20, winners


def test_scores_use_welch_and_say_how_many_more_are_needed() -> None:
    # Given clearly different scores, and barely different ones
    rng = random.Random(3)
    far = [Arm("low", 0, scores=[rng.gauss(0.5, 0.2) for _ in range(300)]),
           Arm("high", 0, scores=[rng.gauss(0.6, 0.3) for _ in range(300)])]
    near = [Arm("x", 0, scores=[rng.gauss(0.50, 0.2) for _ in range(30)]),
            Arm("y", 0, scores=[rng.gauss(0.52, 0.2) for _ in range(30)])]
    # When decided
    found, unclear = decide(far, "score", 0.05), decide(near, "score", 0.05)
    # Then the first names its winner, the second asks for more outcomes
    assert found["winner"] == "high"
    assert unclear["winner"] is None and unclear["needed_per_variant"] > 30


def test_the_wilson_interval_stays_inside_zero_and_one() -> None:
    low, high = wilson_interval(0, 10) or (None, None)
    assert low == 0.0 and 0.2 < high < 0.35
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(500, 1000) or (0, 0)
    assert 0.46 < low < 0.5 < high < 0.54


