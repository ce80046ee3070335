"""The creation rate limiter's bucket, on a real Redis."""

from __future__ import annotations

import uuid

import pytest

from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.limits import CreationRateLimiter

RATE, BURST = 0.1, 10  # one token per 10 s: none comes back while a test runs


@pytest.fixture
def limiter(redis_server: EmbeddedRedis) -> CreationRateLimiter:
    return CreationRateLimiter(redis_server.url, RATE, BURST)


def test_the_burst_goes_at_once_and_the_next_request_waits_for_a_token(
    limiter: CreationRateLimiter,
) -> None:
    tenant = f"t_{uuid.uuid4().hex[:8]}"
    assert all(limiter.check(tenant).allowed for _ in range(BURST))
    refused = limiter.check(tenant)
    assert not refused.allowed
    assert 1 <= refused.retry_after <= 1 / RATE


def test_a_batch_bigger_than_the_burst_goes_when_the_bucket_is_full_and_is_paid_for_after(
    limiter: CreationRateLimiter,
) -> None:
    tenant = f"t_{uuid.uuid4().hex[:8]}"
    assert limiter.check(tenant, cost=3 * BURST).allowed
    # The bucket is 20 tokens in debt: one more creation waits until it holds one again.
    refused = limiter.check(tenant)
    assert not refused.allowed
    assert 20 / RATE < refused.retry_after <= 21 / RATE + 1


def test_a_batch_bigger_than_the_burst_waits_for_a_full_bucket_not_forever(
    limiter: CreationRateLimiter,
) -> None:
    tenant = f"t_{uuid.uuid4().hex[:8]}"
    assert limiter.check(tenant, cost=BURST // 2).allowed
    refused = limiter.check(tenant, cost=3 * BURST)
    assert not refused.allowed
    # What is missing is the half of the bucket spent, not the batch's size.
    assert refused.retry_after == pytest.approx((BURST - BURST // 2) / RATE, abs=2)
