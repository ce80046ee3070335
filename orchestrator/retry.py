"""Retry policies: how many attempts a job gets and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from orchestrator.errors import JobDefinitionError

Backoff = Literal["exponential", "linear", "fixed"]


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts the first run; delays are in seconds.

    `jitter` is the fraction of each delay that may be taken off at random (0 = none,
    1 = "full jitter"). The default 0.5 spreads retries of a failed batch apart while keeping
    every exponential delay longer than the one before it.
    """

    max_attempts: int = 3
    backoff: Backoff = "exponential"
    initial_delay: float = 1.0
    max_delay: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise JobDefinitionError("max_attempts must be at least 1")
        if self.backoff not in ("exponential", "linear", "fixed"):
            raise JobDefinitionError(f"unknown backoff {self.backoff!r}")
        if not 0 <= self.initial_delay <= self.max_delay:
            raise JobDefinitionError("need 0 <= initial_delay <= max_delay")
        if not 0 <= self.jitter <= 1:
            raise JobDefinitionError("jitter must be between 0 and 1")

    def base_delay(self, failed_attempt: int) -> float:
        """The delay after attempt `failed_attempt` (1-based), before jitter, capped."""
        steps = max(failed_attempt, 1)
        if self.backoff == "exponential":
            # Capped exponent: past ~60 doublings every delay is max_delay anyway.
            raw = self.initial_delay * 2.0 ** min(steps - 1, 64)
        elif self.backoff == "linear":
            raw = self.initial_delay * steps
        else:
            raw = self.initial_delay
        return min(raw, self.max_delay)

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        base = self.base_delay(failed_attempt)
        draw: float = (rng or random).random()
        return base * (1 - self.jitter * draw)

    def allows_another(self, attempt: int) -> bool:
        return attempt < self.max_attempts
