"""`orchestrator.client.Client` and `AdminClient` against a real server (HTTP on
loopback): every method, the pages, the errors, and the first names' warnings."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import api
from orchestrator.client import (
    AdminClient,
    ApiError,
    AsyncAdminClient,
    AsyncClient,
    Call,
    Client,
    JobSpec,
    routes,
)
from tests import REAL_SECRET
from tests.e2e.client_server import GATEWAY_SECRET, Served, gateway_stand_in, serving

INSPECTION = {"analysisMode": "QUICK", "roomIds": ["r1"]}
UNKNOWN_JOB = "job_" + "0" * 28


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("client")) as served:
        yield served


@pytest.fixture
def client(server: Served) -> Iterator[Client]:
    with Client(server.url, api_key=server.api_key("py")) as tenant_client:
        yield tenant_client


def test_send_wait_list_cancel_retry(client: Client, tmp_path: Path) -> None:
    job = client.send_job("ANALYZE_INSPECTION", INSPECTION, subject="i1", idempotency_key="k1")
    again = client.send_job("ANALYZE_INSPECTION", INSPECTION, subject="i1", idempotency_key="k1")
    assert again["id"] == job["id"]
    done = client.wait_for_job(job["id"], timeout=30)
    assert done["status"] == "succeeded"
    assert {s["status"] for s in done["pipeline"]["steps"]} == {"succeeded"}
    assert next(iter(client.job_events(job["id"])))["toStatus"] == "queued"
    later = client.job_events(job["id"], after=client.job_events(job["id"])[0]["id"], limit=1)
    assert len(later) == 1 and later[0]["toStatus"] != "queued"

    gate = tmp_path / "gate"
    failed = client.send_job("TEST_GATED", {"gateFile": str(gate)})
    assert client.get_job(failed["id"])["status"] == "failed"
    gate.touch()
    assert client.retry_job(failed["id"])["status"] == "succeeded"
    delayed = client.schedule_job("TEST_FLAKY", delay=timedelta(minutes=1), priority=8)
    assert delayed["status"] == "queued" and delayed["priority"] == 8
    assert client.cancel_job(delayed["id"])["status"] == "cancelled"
    assert client.retry_failed_jobs(type="TEST_GATED") == []
    stats = client.stats(window_seconds=600)
    assert stats["window"]["seconds"] == 600
    assert stats["byStatus"]["succeeded"] >= 3 and stats["byStatus"]["cancelled"] >= 1


def test_listings_follow_every_page(server: Served) -> None:
    with Client(server.url, api_key=server.api_key("tnt_pages")) as client:
        made = client.send_jobs(
            [{"type": "TEST_ECHO_UPSTREAM", "subject": f"p{n}"} for n in range(5)]
        )
        newest_first = [job["id"] for job in reversed(made)]
        assert [job["id"] for job in client.list_jobs(limit=2)] == newest_first
        assert [j["id"] for j in client.list_jobs(type="TEST_ECHO_UPSTREAM", limit=1)][:2] == (
            newest_first[:2]
        )
        assert list(client.list_jobs(status="failed")) == []
        fan = client.send_job("TEST_FAN_OUT", {"items": ["a", "b", "c"]})
        join = fan["pipeline"]["steps"][1]["id"]
        assert [c["result"]["item"] for c in client.job_children(join, limit=2)] == ["A", "B", "C"]


def test_retry_failed_jobs_retries_the_dead_letters(server: Served, tmp_path: Path) -> None:
    with Client(server.url, api_key=server.api_key("tnt_dead")) as client:
        failed = client.send_job("TEST_GATED", {"gateFile": str(tmp_path / "gate")})
        assert client.get_job(failed["id"])["status"] == "failed"
        (tmp_path / "gate").touch()
        assert client.retry_failed_jobs(limit=10) == [failed["id"]]
        assert client.get_job(failed["id"])["status"] == "succeeded"


def test_batches_run_at_and_retry_now(server: Served) -> None:
    client = Client(server.url, api_key=server.api_key("tnt_batch"))
    at = datetime.now(UTC) + timedelta(hours=1)
    batch: list[JobSpec] = [
        {"type": "TEST_ECHO_UPSTREAM", "subject": "b1", "priority": 9},
        {"type": "TEST_ECHO_UPSTREAM", "run_at": at},
    ]
    made = client.send_jobs(batch, idempotency_key="batch-1")
    assert [job["subject"] for job in made] == ["b1", None]
    assert made[0]["priority"] == 9 and made[1]["status"] == "queued"
    assert datetime.fromisoformat(made[1]["runAt"]) == at
    again = client.send_jobs(batch, idempotency_key="batch-1")
    assert [job["id"] for job in again] == [job["id"] for job in made]
    later = made[1]["id"]
    assert client.cancel_job(later)["status"] == "cancelled"
    assert client.retry_job(later)["status"] == "queued"  # keeps its time
    client.cancel_job(later)
    assert client.retry_job(later, run_now=True)["status"] == "succeeded"  # inline: runs now
    scheduled = client.schedule_job("TEST_ECHO_UPSTREAM", at=at, idempotency_key="s1")
    assert datetime.fromisoformat(scheduled["runAt"]) == at
    client.close()
    assert client.http.is_closed


def test_errors_are_api_errors_with_the_problem(server: Served, client: Client) -> None:
    with pytest.raises(ApiError) as invalid:
        client.send_job("ANALYZE_INSPECTION", {"analysisMode": "FAST"})
    assert invalid.value.status == 422
    assert {e["field"] for e in invalid.value.errors} >= {"input.analysisMode"}
    with pytest.raises(ApiError) as missing:
        client.get_job(UNKNOWN_JOB)
    assert missing.value.status == 404 and missing.value.title
    theirs = Client(server.url, api_key=server.api_key("tnt_other")).send_job("TEST_ECHO_UPSTREAM")
    for look in (client.get_job, client.cancel_job, client.retry_job, client.job_events):
        with pytest.raises(ApiError) as elsewhere:
            look(theirs["id"])
        assert elsewhere.value.status == 404, look
    with pytest.raises(ApiError) as unauthorised:
        Client(server.url, api_key="ork_wrong").get_job(UNKNOWN_JOB)
    assert unauthorised.value.status == 401


def test_wrong_arguments_fail_before_sending(client: Client) -> None:
    with pytest.raises(TypeError, match="either at= or delay="):
        client.schedule_job("TEST_ECHO_UPSTREAM")
    with pytest.raises(TypeError, match="unknown job keys: delay_minutes"):
        client.send_jobs([{"type": "TEST_ECHO_UPSTREAM", "delay_minutes": 1}])  # type: ignore[typeddict-unknown-key]
    with pytest.raises(TimeoutError, match="still queued"):
        client.wait_for_job(client.schedule_job("TEST_FLAKY", delay=60)["id"], timeout=0.2)


def test_what_a_gateway_answers_is_an_api_error_too() -> None:
    with gateway_stand_in() as url:
        with pytest.raises(ApiError) as bad_gateway, Client(url, tenant="tnt_a") as client:
            client.get_job(UNKNOWN_JOB)
        assert bad_gateway.value.status == 502
        assert bad_gateway.value.title.lower() == "bad gateway"  # the reason phrase
        assert "Bad gateway" in str(bad_gateway.value.problem["detail"])
        with pytest.raises(httpx.TimeoutException), Client(f"{url}/slow", timeout=0.2) as slow:
            slow.health()


def test_own_http_client_carries_the_gateway_secret(tmp_path: Path) -> None:
    with serving(tmp_path, auth_mode="trusted-headers", gateway_secret=GATEWAY_SECRET) as gated:
        http = httpx.Client(headers={"X-Gateway-Secret": GATEWAY_SECRET}, timeout=10)
        with Client(gated.url, tenant="tnt_gw", user="usr_1", http=http) as client:
            job = client.send_job("TEST_ECHO_UPSTREAM")
            assert job["tenantId"] == "tnt_gw" and job["createdBy"] == "usr_1"
        assert not http.is_closed  # the caller's to close
        with pytest.raises(ApiError) as refused:
            Client(gated.url, tenant="tnt_gw").get_job(job["id"])
        assert refused.value.status == 401
        http.close()


def test_first_names_warn_and_still_work(client: Client) -> None:
    with pytest.warns(DeprecationWarning, match=r"Client\.send is deprecated: use send_job"):
        job = client.send("TEST_FLAKY", delay_seconds=60)
    assert job["runAt"] is not None
    with pytest.warns(DeprecationWarning, match="Client.get is"):
        assert client.get(job["id"])["id"] == job["id"]
    with pytest.warns(DeprecationWarning, match="Client.list is"):
        assert job["id"] in {j["id"] for j in client.list(job_type="TEST_FLAKY", limit=1)}
    with pytest.warns(DeprecationWarning, match="Client.events is"):
        assert client.events(job["id"])[0]["toStatus"] == "queued"
    with pytest.warns(DeprecationWarning, match="Client.cancel is"):
        assert client.cancel(job["id"])["status"] == "cancelled"
    with pytest.warns(DeprecationWarning, match="Client.retry is"):
        assert client.retry(job["id"], run_now=True)["status"] == "succeeded"
    with pytest.warns(DeprecationWarning, match="Client.wait is"):
        assert client.wait(job["id"], timeout=10)["status"] == "succeeded"
    with pytest.warns(DeprecationWarning, match="Client.retry_failed is"):
        assert client.retry_failed(job_type="TEST_FLAKY") == []
    with pytest.warns(DeprecationWarning, match="Client.children is"):
        assert list(client.children(job["id"])) == []
    with pytest.warns(DeprecationWarning) as warned:
        made = client.send_batch([{"type": "TEST_FLAKY", "delay_seconds": 60}])
    assert {str(w.message) for w in warned} == {
        "Client.send_batch is deprecated: use send_jobs",
        "a job's delay_seconds is now delay",
    }
    assert made[0]["runAt"] is not None


def test_admin_client_runs_the_operators_routes(server: Served) -> None:
    with AdminClient(server.url, service_secret=REAL_SECRET) as admin:
        assert admin.health() == {"status": "ok"}
        assert admin.readiness() == {"status": "ready", "checks": {"database": "ok"}}
        started = admin.archive(dry_run=True)
        assert started["tenantId"] == server.runtime.settings.system_tenant
        assert started["jobId"] in {run["jobId"] for run in admin.maintenance_runs()}
        archival = admin.maintenance_job(started["jobId"])
        assert archival["status"] == "succeeded" and archival["result"]["dryRun"] is True
        tenant = Client(server.url, api_key=server.api_key("tnt_admin"))
        tenant.schedule_job("TEST_ECHO_UPSTREAM", delay=600)
        standing = {t["tenantId"]: t for t in admin.tenant_stats()}["tnt_admin"]
        assert standing["scheduled"] == 1 and standing["backlog"] == 0
        assert set(admin.sweep()) == {"sent", "missing"}
        assert admin.reap() == 0
        fired = admin.cron_tick()  # the built-in crons' latest occurrences, once
        assert fired and all(set(each) == {"cron", "occurrence"} for each in fired)
        assert admin.cron_tick() == []
    with pytest.raises(ApiError) as refused:
        AdminClient(server.url, service_secret="not-it").sweep()
    assert refused.value.status == 401


def test_the_clients_cover_every_route_of_the_api_admin_and_probes(server: Served) -> None:
    """A route added to `/v1`, `/admin` or the probes without a client method fails here."""
    urls = api.create_app(runtime=server.runtime).url_map
    audiences = {"jobs", "admin", "health"}
    expected = {
        rule.endpoint for rule in urls.iter_rules() if rule.endpoint.split(".")[0] in audiences
    }
    each_route: list[Call[Any]] = [
        routes.send_job("T"),
        routes.schedule_job("T", delay=1),
        routes.send_jobs([]),
        routes.get_job(UNKNOWN_JOB),
        routes.list_jobs(),
        routes.job_events(UNKNOWN_JOB),
        routes.job_children(UNKNOWN_JOB),
        routes.cancel_job(UNKNOWN_JOB),
        routes.retry_job(UNKNOWN_JOB),
        routes.retry_failed_jobs(),
        routes.stats(),
        routes.health(),
        routes.readiness(),
        routes.archive(),
        routes.maintenance_job(UNKNOWN_JOB),
        routes.maintenance_runs(),
        routes.tenant_stats(),
        routes.sweep(),
        routes.reap(),
        routes.cron_tick(),
    ]
    adapter = urls.bind("localhost")
    covered = {adapter.match(call.path, call.method)[0] for call in each_route}
    assert covered == expected


def test_the_sync_and_asyncio_clients_have_a_method_for_each_route() -> None:
    described = {
        name
        for name, value in vars(routes).items()
        if inspect.isfunction(value) and value.__module__ == routes.__name__ and name[0] != "_"
    }
    for tenant_side, admin_side in ((Client, AdminClient), (AsyncClient, AsyncAdminClient)):
        assert described <= set(dir(tenant_side)) | set(dir(admin_side))
