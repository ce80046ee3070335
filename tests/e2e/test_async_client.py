"""`orchestrator.client.AsyncClient` and `AsyncAdminClient` against a real server, each
test one coroutine driven by `asyncio.run` (no asyncio plugin for pytest here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from orchestrator.client import ApiError, AsyncAdminClient, AsyncClient
from tests import REAL_SECRET
from tests.e2e.client_server import GATEWAY_SECRET, Served, gateway_stand_in, serving

INSPECTION = {"analysisMode": "QUICK", "roomIds": ["r1"]}
UNKNOWN_JOB = "job_" + "0" * 28


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("async-client")) as served:
        yield served


def test_send_wait_cancel_retry(server: Served, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, api_key=server.api_key("tnt_async")) as client:
            job = await client.send_job("ANALYZE_INSPECTION", INSPECTION, idempotency_key="k1")
            again = await client.send_job("ANALYZE_INSPECTION", INSPECTION, idempotency_key="k1")
            assert again["id"] == job["id"]
            done = await client.wait_for_job(job["id"], timeout=30, poll=0.05)
            assert {s["status"] for s in done["pipeline"]["steps"]} == {"succeeded"}
            assert (await client.job_events(job["id"], limit=1))[0]["toStatus"] == "queued"

            gate = tmp_path / "gate"
            failed = await client.send_job("TEST_GATED", {"gateFile": str(gate)})
            assert (await client.get_job(failed["id"]))["status"] == "failed"
            gate.touch()
            assert (await client.retry_job(failed["id"]))["status"] == "succeeded"
            later = await client.schedule_job("TEST_FLAKY", delay=timedelta(minutes=1))
            assert (await client.cancel_job(later["id"]))["status"] == "cancelled"
            retried = await client.retry_job(later["id"], run_now=True)
            assert retried["status"] == "succeeded"
            assert await client.retry_failed_jobs(type="TEST_GATED", limit=5) == []
            figures = await client.stats(window_seconds=600)
            assert figures["byStatus"]["succeeded"] >= 3
            with pytest.raises(TimeoutError):
                parked = await client.schedule_job("TEST_FLAKY", delay=60)
                await client.wait_for_job(parked["id"], timeout=0.1, poll=0.05)
        assert client.http.is_closed

    asyncio.run(scenario())


def test_listings_are_async_iterators_over_every_page(server: Served) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, api_key=server.api_key("tnt_apages")) as client:
            at = datetime.now(UTC) + timedelta(hours=1)
            made = await client.send_jobs(
                [{"type": "TEST_ECHO_UPSTREAM", "run_at": at} for _ in range(3)],
                idempotency_key="b1",
            )
            assert [j["id"] async for j in client.list_jobs(limit=2)] == [
                j["id"] for j in reversed(made)
            ]
            assert [j async for j in client.list_jobs(status="failed", limit=1)] == []
            fan = await client.send_job("TEST_FAN_OUT", {"items": ["a", "b", "c"]})
            join = fan["pipeline"]["steps"][1]["id"]
            children = [c["result"]["item"] async for c in client.job_children(join, limit=1)]
            assert children == ["A", "B", "C"]

    asyncio.run(scenario())


def test_errors_are_api_errors(server: Served) -> None:
    async def scenario() -> None:
        theirs = AsyncClient(server.url, api_key=server.api_key("tnt_theirs"))
        job = await theirs.send_job("TEST_ECHO_UPSTREAM")
        await theirs.aclose()
        async with AsyncClient(server.url, api_key=server.api_key("tnt_mine")) as client:
            with pytest.raises(ApiError) as invalid:
                await client.send_job("ANALYZE_INSPECTION", {"analysisMode": "FAST"})
            assert invalid.value.status == 422
            assert {e["field"] for e in invalid.value.errors} >= {"input.analysisMode"}
            with pytest.raises(ApiError) as elsewhere:
                await client.get_job(job["id"])
            assert elsewhere.value.status == 404
            with pytest.raises(ApiError) as missing:
                await client.cancel_job(UNKNOWN_JOB)
            assert missing.value.status == 404
        with gateway_stand_in() as url, pytest.raises(ApiError) as bad_gateway:
            async with AsyncClient(url, tenant="tnt_a") as client:
                await client.readiness()  # only the API's 503 is an answer, not a gateway's 502
        assert bad_gateway.value.status == 502

    asyncio.run(scenario())


def test_own_http_client_with_a_gateway_secret(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        http = httpx.AsyncClient(headers={"X-Gateway-Secret": GATEWAY_SECRET}, timeout=10)
        async with AsyncClient(url, tenant="tnt_gw", user="usr_2", http=http) as client:
            job = await client.send_job("TEST_ECHO_UPSTREAM")
            assert job["createdBy"] == "usr_2"
        assert not http.is_closed  # the caller's to close
        await http.aclose()

    with serving(tmp_path, auth_mode="trusted-headers", gateway_secret=GATEWAY_SECRET) as gated:
        asyncio.run(scenario(gated.url))


def test_admin_client_runs_the_operators_routes(server: Served) -> None:
    async def scenario() -> None:
        async with AsyncAdminClient(server.url, service_secret=REAL_SECRET) as admin:
            assert await admin.health() == {"status": "ok"}
            assert (await admin.readiness())["status"] == "ready"
            started = await admin.archive()
            assert started["jobId"] in {run["jobId"] for run in await admin.maintenance_runs()}
            assert "system" in {t["tenantId"] for t in await admin.tenant_stats()}
            assert set(await admin.sweep()) == {"sent", "missing"}
            assert await admin.reap() == 0
            assert await admin.cron_tick()  # the built-in crons, the first time
            assert await admin.cron_tick() == []
        with pytest.raises(ApiError) as refused:
            async with AsyncAdminClient(server.url, service_secret="not-it") as admin:
                await admin.reap()
        assert refused.value.status == 401

    asyncio.run(scenario())
