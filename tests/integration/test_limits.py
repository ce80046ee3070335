"""The creation rate limiter's bucket, on a real Redis."""

from __future__ import annotations

import uuid

import pytest

import api
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.limits import CreationRateLimiter
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings

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


def test_repeating_a_keyed_batch_costs_no_tokens(
    redis_server: EmbeddedRedis, sqlite_url: str
) -> None:
    """A client that timed out sends its batch again: nothing is created, nothing is
    charged (the first send may have emptied the bucket)."""
    settings = load_settings(
        env="development",
        database_url=sqlite_url,
        dispatch_mode="inline",
        job_modules="tests.jobtypes",
        redis_url=redis_server.url,
        tenant_create_rate=RATE,
        tenant_create_burst=BURST,
    )
    runtime = Runtime.build(settings)
    client = api.create_app(runtime=runtime).test_client()
    headers = {"X-Tenant-ID": f"t_{uuid.uuid4().hex[:8]}", "Idempotency-Key": "import-7"}
    body = {"jobs": [{"type": "TEST_FLAKY"}] * BURST}
    assert client.post("/v1/jobs:batch", json=body, headers=headers).status_code == 201
    assert client.post("/v1/jobs:batch", json=body, headers=headers).status_code == 200
    other = {**headers, "Idempotency-Key": "import-8"}
    assert client.post("/v1/jobs:batch", json=body, headers=other).status_code == 429
    runtime.database.dispose()
