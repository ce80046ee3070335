"""RetryPolicy: base delays per backoff, the cap, jitter bounds, and invalid policies."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from orchestrator.errors import JobDefinitionError
from orchestrator.retry import RetryPolicy


class FixedDraw(random.Random):
    """A random source whose every draw is `value`: pins jitter to one end of its range."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


# The largest float below 1.0: `random.random()` never returns 1.0 itself.
LARGEST_DRAW = math.nextafter(1.0, 0.0)


def test_defaults_are_a_valid_exponential_policy() -> None:
    policy = RetryPolicy()
    assert policy.backoff == "exponential"
    assert policy.max_attempts >= 1
    assert 0 <= policy.initial_delay <= policy.max_delay
    assert policy.jitter == 0.5


def test_exponential_doubles_from_the_initial_delay() -> None:
    policy = RetryPolicy(backoff="exponential", initial_delay=1.5, max_delay=10_000)
    assert [policy.base_delay(n) for n in range(1, 7)] == [1.5, 3.0, 6.0, 12.0, 24.0, 48.0]


def test_linear_grows_by_the_initial_delay() -> None:
    policy = RetryPolicy(backoff="linear", initial_delay=2.5, max_delay=10_000)
    assert [policy.base_delay(n) for n in range(1, 6)] == [2.5, 5.0, 7.5, 10.0, 12.5]


def test_fixed_never_changes() -> None:
    policy = RetryPolicy(backoff="fixed", initial_delay=4, max_delay=10)
    assert {policy.base_delay(n) for n in range(1, 50)} == {4}


@pytest.mark.parametrize("backoff", ["exponential", "linear"])
def test_base_delay_is_capped_at_max_delay(backoff: str) -> None:
    policy = RetryPolicy(backoff=backoff, initial_delay=3, max_delay=20)  # type: ignore[arg-type]
    delays = [policy.base_delay(n) for n in range(1, 40)]
    assert max(delays) == 20
    assert all(d <= 20 for d in delays)
    # Once the cap is reached it stays there.
    first_capped = delays.index(20)
    assert set(delays[first_capped:]) == {20}
    # And before it, the delays grow.
    assert delays[:first_capped] == sorted(set(delays[:first_capped]))


def test_attempt_zero_or_below_is_treated_as_the_first() -> None:
    policy = RetryPolicy(initial_delay=2, max_delay=100)
    assert policy.base_delay(0) == policy.base_delay(1) == 2
    assert policy.base_delay(-3) == 2


def test_cap_holds_for_a_policy_with_very_many_attempts() -> None:
    # "Retry for a long time, at most once a minute" is a reasonable policy.
    policy = RetryPolicy(max_attempts=10_000, initial_delay=1, max_delay=60)
    assert policy.base_delay(2_000) == 60
    assert policy.delay(2_000, random.Random(1)) <= 60


@pytest.mark.parametrize("backoff", ["exponential", "linear", "fixed"])
@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.5, 1.0])
def test_jittered_delay_stays_within_bounds(backoff: str, jitter: float) -> None:
    policy = RetryPolicy(backoff=backoff, initial_delay=1, max_delay=50, jitter=jitter)  # type: ignore[arg-type]
    for seed in range(200):
        rng = random.Random(seed)
        for attempt in range(1, 10):
            base = policy.base_delay(attempt)
            delay = policy.delay(attempt, rng)
            assert base * (1 - jitter) <= delay <= base


@pytest.mark.parametrize("jitter", [0.0, 0.3, 0.5, 1.0])
def test_jitter_extremes(jitter: float) -> None:
    policy = RetryPolicy(initial_delay=8, max_delay=100, jitter=jitter)
    # A draw of 0 takes nothing off.
    assert policy.delay(2, FixedDraw(0.0)) == 16
    # The largest draw takes (almost exactly) the jitter fraction off.
    assert policy.delay(2, FixedDraw(LARGEST_DRAW)) == pytest.approx(16 * (1 - jitter))


def test_zero_jitter_is_exactly_the_base_delay() -> None:
    policy = RetryPolicy(initial_delay=1, max_delay=100, jitter=0)
    rng = random.Random(7)
    assert [policy.delay(n, rng) for n in range(1, 8)] == [
        policy.base_delay(n) for n in range(1, 8)
    ]


def test_full_jitter_is_never_negative_and_spreads_widely() -> None:
    policy = RetryPolicy(initial_delay=10, max_delay=10, backoff="fixed", jitter=1)
    rng = random.Random(3)
    delays = [policy.delay(1, rng) for _ in range(2_000)]
    assert all(0 < d <= 10 for d in delays)
    assert min(delays) < 1
    assert max(delays) > 9


def test_same_seed_same_delays_different_seed_different_delays() -> None:
    policy = RetryPolicy(initial_delay=1, max_delay=100)
    first = [policy.delay(n, random.Random(42)) for n in range(1, 6)]
    again = [policy.delay(n, random.Random(42)) for n in range(1, 6)]
    other = [policy.delay(n, random.Random(43)) for n in range(1, 6)]
    assert first == again
    assert first != other


def test_default_jitter_spreads_a_batch_of_retries_apart() -> None:
    policy = RetryPolicy(initial_delay=4, max_delay=100)
    delays = {policy.delay(3, random.Random(seed)) for seed in range(100)}
    assert len(delays) == 100
    assert max(delays) - min(delays) > 0.25 * policy.base_delay(3)


def test_delay_without_an_rng_uses_module_randomness_within_bounds() -> None:
    policy = RetryPolicy(initial_delay=2, max_delay=100)
    for attempt in range(1, 6):
        base = policy.base_delay(attempt)
        assert base * 0.5 <= policy.delay(attempt) <= base


@pytest.mark.parametrize("initial_delay", [0.01, 0.5, 1.0, 2.0, 7.0])
def test_exponential_delays_strictly_grow_with_default_jitter(initial_delay: float) -> None:
    """Whatever the draws, each delay before the cap is longer than the one before it."""
    policy = RetryPolicy(initial_delay=initial_delay, max_delay=1e9, max_attempts=20)
    assert policy.jitter == 0.5
    for seed in range(500):
        rng = random.Random(seed)
        delays = [policy.delay(n, rng) for n in range(1, 20)]
        assert all(b > a for a, b in itertools.pairwise(delays)), (seed, delays)


def test_exponential_growth_holds_even_at_the_worst_draws() -> None:
    policy = RetryPolicy(initial_delay=1, max_delay=1e9)
    for n in range(1, 30):
        longest_now = policy.delay(n, FixedDraw(0.0))
        # The very largest draw rounds to exactly half of the next delay in floating point:
        # the two meet there, and any draw below it keeps the next delay strictly longer.
        assert policy.delay(n + 1, FixedDraw(LARGEST_DRAW)) >= longest_now
        assert policy.delay(n + 1, FixedDraw(0.999_999)) > longest_now


def test_allows_another_counts_the_first_run() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.allows_another(a) for a in (1, 2, 3, 4)] == [True, True, False, False]
    assert not RetryPolicy(max_attempts=1).allows_another(1)


@pytest.mark.parametrize(
    "options",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"backoff": "quadratic"},
        {"initial_delay": -1},
        {"initial_delay": 10, "max_delay": 5},
        {"max_delay": -1, "initial_delay": 0},
        {"initial_delay": math.nan},
        {"max_delay": math.nan},
        {"jitter": -0.1},
        {"jitter": 1.01},
        {"jitter": math.nan},
    ],
)
def test_invalid_policies_raise_job_definition_error(options: dict[str, object]) -> None:
    with pytest.raises(JobDefinitionError):
        RetryPolicy(**options)  # type: ignore[arg-type]


def test_boundary_policies_are_valid() -> None:
    RetryPolicy(max_attempts=1)
    RetryPolicy(initial_delay=0, max_delay=0)
    RetryPolicy(initial_delay=5, max_delay=5)
    RetryPolicy(jitter=0)
    RetryPolicy(jitter=1)


def test_policy_is_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 10  # type: ignore[misc]
