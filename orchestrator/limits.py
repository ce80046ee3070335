"""Limits that keep one request or one tenant from hurting the rest.

- `input_problems`: a job input's size, nesting depth, string lengths and list sizes.
- `CreationRateLimiter`: a token bucket per tenant in Redis, so every web process shares it.
  If Redis cannot be reached the limiter lets the request through: creating a job must
  keep working when the broker is down (the outbox holds it), and a missed limit is the
  smaller harm.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import redis

from orchestrator.errors import FieldError
from orchestrator.settings import Settings
from orchestrator.text import text_problem

log = logging.getLogger("orchestrator.limits")


def input_problems(data: object, settings: Settings) -> list[FieldError]:
    """Why `data` is too big or too deep for a job input; empty when it is fine."""
    size = len(json.dumps(data, separators=(",", ":"), default=str))
    if size > settings.max_input_bytes:
        return [FieldError("input", f"is {size} bytes; the limit is {settings.max_input_bytes}")]
    problems: list[FieldError] = []
    stack: list[tuple[object, str, int]] = [(data, "input", 1)]
    while stack and len(problems) < 10:
        value, path, depth = stack.pop()
        if problem := _problem_of(value, depth, settings):
            problems.append(FieldError(path, problem))
        elif isinstance(value, dict):
            stack.extend((item, f"{path}.{key}", depth + 1) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}", depth + 1) for i, item in enumerate(value))
    return problems


def _problem_of(value: object, depth: int, settings: Settings) -> str | None:
    """What is wrong with one value of an input, its items aside."""
    if isinstance(value, str):
        if len(value) > settings.max_string_length:
            return f"is longer than {settings.max_string_length}"
        return text_problem(value)
    if isinstance(value, dict | list):
        return _container_problem(value, depth, settings)
    if isinstance(value, float) and not math.isfinite(value):
        # Python's JSON reads NaN and Infinity; JSON has no such numbers, nor has jsonb.
        return "is not a finite number"
    return None


def _container_problem(
    value: dict[str, object] | list[object], depth: int, settings: Settings
) -> str | None:
    if depth > settings.max_input_depth:
        return f"nests deeper than {settings.max_input_depth}"
    if len(value) > settings.max_list_items:
        return f"has more than {settings.max_list_items} items"
    if isinstance(value, dict):
        for key in value:
            if problem := text_problem(key):
                return f"has a key that {problem}"
    return None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


# KEYS[1] bucket; ARGV rate per second, burst, now (seconds), cost. Tokens refill
# continuously. A request costing more than the burst (a batch of 1,000 against a burst of
# 100) could never be let through by a bucket that holds at most `burst`: it goes when the
# bucket is full and leaves it in debt, so later requests wait until the rate has paid for
# it and the tenant's average rate still holds.
_BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate)
local allowed = 0
if tokens >= math.min(cost, burst) then tokens = tokens - cost; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1)
return {allowed, tostring(tokens)}
"""


class CreationRateLimiter:
    def __init__(self, redis_url: str, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        self._script = self._redis.register_script(_BUCKET)

    @classmethod
    def from_settings(cls, settings: Settings) -> CreationRateLimiter | None:
        if settings.tenant_create_rate <= 0:
            return None
        return cls(settings.redis_url, settings.tenant_create_rate, settings.tenant_create_burst)

    def check(self, tenant_id: str, cost: int = 1) -> Verdict:
        try:
            allowed, tokens = self._script(
                keys=[f"orchestrator:rate:{tenant_id}"],
                args=[self.rate, self.burst, time.time(), cost],
            )
        except redis.RedisError as exc:
            log.warning(
                "rate limiter unavailable, letting the request through: %s",
                exc,
                extra={"tenant_id": tenant_id, "action": "rate_limit_skipped"},
            )
            return Verdict(True)
        if int(allowed):
            return Verdict(True)
        missing = min(cost, self.burst) - float(tokens)
        return Verdict(False, retry_after=max(1, math.ceil(missing / self.rate)))
