"""Per-tenant fairness on the running system, with real workers and the dispatcher: a
flood that holds back neither another tenant nor its own tenant's urgent job, a
running-jobs limit that holds, and a creation rate limit counted in Redis (so it holds
across web processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator import migrate
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.models import Job
from tests.integration.stack import Stack, stack_settings


def _stack(
    redis_server: EmbeddedRedis, folder: Path, redis_db: int, **settings: Any
) -> Iterator[Stack]:
    database_url = f"sqlite:///{folder / 'jobs.db'}"
    migrate.upgrade(database_url)
    redis_url = f"{redis_server.url.rsplit('/', 1)[0]}/{redis_db}"
    stack = Stack.build(stack_settings(database_url, redis_url, **settings), folder)
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def limited(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # A slow refill (one token per 10 s), so no token comes back while the test runs.
    yield from _stack(
        redis_server,
        tmp_path_factory.mktemp("fair"),
        11,
        tenant_max_running=1,
        tenant_create_rate=0.1,
        tenant_create_burst=10,
    )


@pytest.fixture(scope="module")
def open_stack(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """No limit of any kind: fairness by default."""
    yield from _stack(redis_server, tmp_path_factory.mktemp("open"), 12)


def _wait_to_start(job: dict[str, object]) -> float:
    started = datetime.fromisoformat(str(job["startedAt"]))
    return (started - datetime.fromisoformat(str(job["createdAt"]))).total_seconds()


def test_a_flood_holds_back_neither_another_tenant_nor_its_own_urgent_job(
    open_stack: Stack,
) -> None:
    """Tenant A sends 400 jobs of 50 ms (10 s of work for the two worker processes); then
    tenant B sends three, and A one of priority 10. Each starts within a window's worth
    of A's jobs, long before A's backlog is done: no limit is configured."""
    flood = [{"type": "TEST_SLEEP", "input": {"seconds": 0.05}} for _ in range(400)]
    answer = open_stack.post("tnt_flood", "/v1/jobs:batch", {"jobs": flood})
    assert answer.status_code == 201, answer.text
    flood_ids = [job["id"] for job in answer.json()["jobs"]]
    time.sleep(1.0)  # the flood is under way: its jobs fill the window
    others = [open_stack.create("tnt_other", {"type": "TEST_SLEEP"}) for _ in range(3)]
    urgent = open_stack.create(
        "tnt_flood", {"type": "TEST_SLEEP", "input": {"seconds": 0.05}, "priority": 10}
    )
    waits = [
        _wait_to_start(open_stack.wait_for("tnt_other", job["id"], timeout=30)) for job in others
    ]
    urgent_wait = _wait_to_start(open_stack.wait_for("tnt_flood", urgent["id"], timeout=30))
    flood_left = sum(
        open_stack.get("tnt_flood", f"/v1/jobs/{job_id}").json()["status"] != "succeeded"
        for job_id in flood_ids[-100:]
    )
    assert flood_left > 0, "the flood was done before the test could tell"
    assert max(waits) < 2.0, waits  # behind the flood: 10 s
    assert urgent_wait < 2.0, urgent_wait


def _running(stack: Stack, tenant: str) -> int:
    with stack.runtime.database.session() as session:
        return session.query(Job).filter(Job.tenant_id == tenant, Job.status == "running").count()


def test_a_tenant_never_runs_more_than_its_limit_and_another_is_not_starved(
    limited: Stack, tmp_path: Path
) -> None:
    body = {"type": "TEST_LOOP", "input": {"effectFile": str(tmp_path / "a"), "seconds": 0.6}}
    flood = [limited.create("tnt_a", body)["id"] for _ in range(4)]
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _running(limited, "tnt_a"))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        other = limited.create("tnt_b", {"type": "TEST_FLAKY"})
        b_job = limited.wait_for("tnt_b", other["id"], timeout=20)
        b_wait = time.monotonic() - started
        for job_id in flood:
            assert limited.wait_for("tnt_a", job_id, timeout=60)["status"] == "succeeded"
    finally:
        stop.set()
        watcher.join()
    assert peak[0] == 1
    assert b_job["status"] == "succeeded"
    assert b_wait < 5  # not behind tenant A's backlog (4 jobs x 0.6 s, run one at a time)


def test_creation_over_the_rate_is_429_with_retry_after(limited: Stack) -> None:
    answers = [limited.post("tnt_rate", "/v1/jobs", {"type": "TEST_FLAKY"}) for _ in range(15)]
    codes = [answer.status_code for answer in answers]
    assert codes[:10] == [201] * 10  # the burst
    throttled = [a for a in answers if a.status_code == 429]
    assert throttled, codes
    assert int(throttled[0].headers["Retry-After"]) >= 1
    assert throttled[0].headers["Content-Type"] == "application/problem+json"
    # Another tenant has its own bucket.
    assert limited.post("tnt_other", "/v1/jobs", {"type": "TEST_FLAKY"}).status_code == 201
    # And a second web process shares the count through Redis.
    assert (
        requests.post(
            f"{limited.base_url}/v1/jobs",
            json={"type": "TEST_FLAKY"},
            headers={"X-Tenant-ID": "tnt_rate"},
            timeout=10,
        ).status_code
        == 429
    )
