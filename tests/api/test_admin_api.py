"""`/admin` maintenance endpoints and archived jobs, through Flask's test client.

Dispatch is inline: the archival job the admin endpoint creates runs inside the POST.
The process-wide runtime (`Runtime.current()`) is pinned to another database throughout,
so the tests prove the job archives the database of the app that runs it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import api
from orchestrator.archival import Archiver
from orchestrator.models import Job, MaintenanceRun
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, load_settings
from orchestrator.tenants import set_tier
from tests import REAL_SECRET
from tests.recording import recording_service

PROBLEM = "application/problem+json"
DEV_SECRET = "dev-secret"
STRONG_SECRET = REAL_SECRET
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def admin(secret: str | None = DEV_SECRET) -> dict[str, str]:
    return {} if secret is None else {"X-Service-Auth": secret}


def as_tenant(tenant: str) -> dict[str, str]:
    return {"X-Tenant-ID": tenant}


def assert_problem(response: TestResponse, status: int, path: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert body["instance"] == path
    assert body["type"] and body["title"]
    return body


def assert_unauthorized(response: TestResponse, path: str) -> None:
    body = assert_problem(response, 401, path)
    assert "detail" not in body  # says nothing about what was wrong
    assert body["title"] == "Unauthorized"
    assert response.headers.get("WWW-Authenticate")


def create_job(client: FlaskClient, tenant: str, job_type: str = "TEST_ECHO_UPSTREAM") -> str:
    response = client.post("/v1/jobs", json={"type": job_type}, headers=as_tenant(tenant))
    assert response.status_code == 201, response.get_json()
    job_id: str = response.get_json()["id"]
    return job_id


def age(runtime: Runtime, *job_ids: str) -> None:
    """Pretend the jobs finished long ago (the API has no clock to turn)."""
    with runtime.database.transaction() as session:
        session.execute(sa.update(Job).where(Job.id.in_(job_ids)).values(finished_at=LONG_AGO))


def archived_at(runtime: Runtime, job_id: str) -> datetime | None:
    with runtime.database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.archived_at


def trigger(client: FlaskClient, body: Any = None) -> TestResponse:
    if body is None:
        return client.post("/admin/maintenance/archive", headers=admin())
    return client.post("/admin/maintenance/archive", json=body, headers=admin())


@pytest.fixture
def no_retry_sleep(runtime: Runtime) -> None:
    """Inline dispatch sleeps through a retry's backoff; a failing archival must not."""
    runtime.dispatcher.sleep = lambda _seconds: None  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def current_is_foreign(
    settings: Settings,
    sqlite_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_retry_sleep: None,
) -> Iterator[Runtime]:
    """The process-wide runtime is another one (another database), as it is whenever an app
    is built with its own runtime: in tests, or when embedding the orchestrator."""
    other = tmp_path / "process-default.db"
    shutil.copyfile(sqlite_template, other)
    foreign = Runtime.build(settings.model_copy(update={"database_url": f"sqlite:///{other}"}))
    monkeypatch.setattr(Runtime, "_current", foreign)
    yield foreign
    foreign.database.dispose()


# -- authentication ---------------------------------------------------------------------


@pytest.fixture
def strong_app(sqlite_url: str) -> Iterator[Flask]:
    """Production settings with an explicit, long service secret."""
    settings = load_settings(
        env="production",
        database_url=sqlite_url,
        dispatch_mode="inline",
        job_modules="tests.jobtypes",
        service_auth_secret=STRONG_SECRET,
    )
    runtime = Runtime.build(settings)
    yield api.create_app(runtime=runtime)
    runtime.database.dispose()


ADMIN_ROUTES = [("post", "/admin/maintenance/archive"), ("get", "/admin/maintenance/runs")]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("secret", [None, "", "wrong", DEV_SECRET + "x", DEV_SECRET.upper()])
def test_admin_needs_the_dev_secret(
    client: FlaskClient, runtime: Runtime, method: str, path: str, secret: str | None
) -> None:
    response = getattr(client, method)(path, headers=admin(secret))
    assert_unauthorized(response, path)
    with runtime.database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(MaintenanceRun)) == 0


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("secret", [None, DEV_SECRET, STRONG_SECRET[:-1], STRONG_SECRET + "!"])
def test_admin_with_an_explicit_secret_refuses_anything_else(
    strong_app: Flask, method: str, path: str, secret: str | None
) -> None:
    response = getattr(strong_app.test_client(), method)(path, headers=admin(secret))
    assert_unauthorized(response, path)


def test_admin_with_an_explicit_secret_accepts_it(strong_app: Flask) -> None:
    client = strong_app.test_client()
    response = client.get("/admin/maintenance/runs", headers=admin(STRONG_SECRET))
    assert response.status_code == 200
    assert response.get_json() == {"runs": []}


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tenant-ID": "system"},
        {"Authorization": f"Bearer {DEV_SECRET}x"},  # a wrong bearer secret
        {"Authorization": "Bearer not.a.token"},
        {"Authorization": DEV_SECRET},
    ],
)
def test_other_headers_are_no_admin_credential(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    response = client.post("/admin/maintenance/archive", headers=headers)
    assert_unauthorized(response, "/admin/maintenance/archive")


# -- triggering the archival --------------------------------------------------------------


def test_trigger_answers_202_and_the_job_has_run(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    old = create_job(client, tenant)
    fresh = create_job(client, tenant)
    age(runtime, old)

    response = trigger(client)
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    job_id = body["jobId"]
    assert body["tenantId"] == runtime.settings.system_tenant == "system"
    location = urlparse(response.headers["Location"]).path
    assert location == f"/admin/maintenance/jobs/{job_id}"
    # Nobody acts as the system tenant; operators read its jobs with service credentials.
    assert client.get(f"/v1/jobs/{job_id}", headers=as_tenant("system")).status_code == 400
    assert client.get(location).status_code == 401
    job = client.get(location, headers=admin())
    assert job.status_code == 200
    job_body = job.get_json()
    assert job_body["type"] == "ARCHIVE_EXPIRED_JOBS"
    assert job_body["subject"] == "admin:archive"
    assert job_body["status"] == "succeeded", job_body["error"]
    result = job_body["result"]
    assert result["archived"] == 1
    assert result["dryRun"] is False
    assert result["perTenant"] == {tenant: 1}
    assert archived_at(runtime, old) is not None
    assert archived_at(runtime, fresh) is None
    # The system job is the system tenant's: a tenant cannot see it.
    assert client.get(f"/v1/jobs/{job_id}", headers=as_tenant(tenant)).status_code == 404

    runs = client.get("/admin/maintenance/runs", headers=admin()).get_json()["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert run["id"] == result["maintenanceRunId"]
    assert run["kind"] == "archive"
    assert run["jobId"] == job_id
    assert run["dryRun"] is False
    assert run["status"] == "succeeded"
    assert run["total"] == 1
    assert run["perTenant"] == {tenant: 1}
    assert run["finishedAt"] is not None
    assert run["error"] is None


def test_a_dry_run_counts_and_changes_nothing(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    old = create_job(client, tenant)
    age(runtime, old)
    response = trigger(client, {"dryRun": True})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["jobId"]

    job = client.get(f"/admin/maintenance/jobs/{job_id}", headers=admin()).get_json()
    assert job["input"] == {"dryRun": True}
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["dryRun"] is True
    assert job["result"]["archived"] == 1
    assert job["result"]["perTenant"] == {tenant: 1}
    assert archived_at(runtime, old) is None
    assert client.get(f"/v1/jobs/{old}", headers=as_tenant(tenant)).status_code == 200

    (run,) = client.get("/admin/maintenance/runs", headers=admin()).get_json()["runs"]
    assert (run["dryRun"], run["total"], run["jobId"]) == (True, 1, job_id)


@pytest.mark.parametrize("body", [None, {}, {"dryRun": False}])
def test_an_empty_or_default_body_is_a_real_run(
    client: FlaskClient, runtime: Runtime, body: Any
) -> None:
    response = trigger(client, body)
    assert response.status_code == 202, response.get_json()
    job = client.get(
        f"/admin/maintenance/jobs/{response.get_json()['jobId']}", headers=admin()
    ).get_json()
    assert job["input"] == {"dryRun": False}
    assert job["status"] == "succeeded"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dryrun": True}, "dryrun"),
        ({"dryRun": True, "force": 1}, "force"),
        ({"dryRun": "maybe"}, "dryRun"),
        ({"dryRun": 0}, "dryRun"),  # not a boolean: not a real archival either
        ({"dryRun": 1}, "dryRun"),
        ({"dryRun": "false"}, "dryRun"),
        ({"dryRun": [True]}, "dryRun"),
    ],
)
def test_invalid_bodies_are_422_and_create_nothing(
    client: FlaskClient, runtime: Runtime, body: dict[str, Any], field: str
) -> None:
    response = trigger(client, body)
    problem = assert_problem(response, 422, "/admin/maintenance/archive")
    assert field in {e["field"] for e in problem["errors"]}
    with runtime.database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0


@pytest.mark.parametrize("raw", [b"{", b"[1,", b"null"])
def test_malformed_json_is_400(client: FlaskClient, raw: bytes) -> None:
    response = client.post(
        "/admin/maintenance/archive",
        data=raw,
        headers={**admin(), "Content-Type": "application/json"},
    )
    assert_problem(response, 400, "/admin/maintenance/archive")


def test_a_json_array_body_is_a_problem_not_a_500(client: FlaskClient) -> None:
    response = trigger(client, [True])
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    assert response.mimetype == PROBLEM


def test_runs_are_listed_newest_first(client: FlaskClient, runtime: Runtime, tenant: str) -> None:
    old = create_job(client, tenant)
    age(runtime, old)
    first = Archiver(runtime.database, runtime.settings).run(dry_run=True)
    second = Archiver(runtime.database, runtime.settings).run()
    runs = client.get("/admin/maintenance/runs", headers=admin()).get_json()["runs"]
    assert [r["id"] for r in runs] == [second.run_id, first.run_id]
    assert [(r["dryRun"], r["total"], r["jobId"]) for r in runs] == [
        (False, 1, None),
        (True, 1, None),
    ]
    assert all(r["perTenant"] == {tenant: 1} for r in runs)
    assert set(runs[0]) == {
        "id",
        "kind",
        "jobId",
        "dryRun",
        "status",
        "startedAt",
        "finishedAt",
        "total",
        "perTenant",
        "error",
    }


def test_the_triggered_job_archives_the_apps_own_database(
    client: FlaskClient, runtime: Runtime, tenant: str, current_is_foreign: Runtime
) -> None:
    """Not the process-wide runtime's database (fixed in c386839: the handler used
    `Runtime.current().archiver`)."""
    old = create_job(client, tenant)
    age(runtime, old)
    response = trigger(client)
    assert response.status_code == 202
    job = client.get(
        f"/admin/maintenance/jobs/{response.get_json()['jobId']}", headers=admin()
    ).get_json()
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["archived"] == 1
    assert client.get(f"/v1/jobs/{old}", headers=as_tenant(tenant)).status_code == 410
    with current_is_foreign.database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(MaintenanceRun)) == 0


# -- archived jobs -------------------------------------------------------------------------


def archive_everything(runtime: Runtime) -> None:
    """Everything finished is past any retention when the clock says 2100."""
    Archiver(runtime.database, runtime.settings, clock=lambda: FAR_FUTURE).run()


@pytest.fixture
def archived(client: FlaskClient, runtime: Runtime, tenant: str) -> dict[str, str]:
    """An archived succeeded job, an archived failed one, and a live job made afterwards."""
    done = create_job(client, tenant)
    failed = create_job(client, tenant, "TEST_EXPLODES")  # fails; its next step is cancelled
    archive_everything(runtime)
    live = create_job(client, tenant)
    return {"done": done, "failed": failed, "live": live}


@pytest.mark.parametrize("which", ["done", "failed"])
@pytest.mark.parametrize(
    ("method", "suffix"), [("get", ""), ("get", "/events"), ("post", "/cancel"), ("post", "/retry")]
)
def test_archived_jobs_are_gone(
    client: FlaskClient,
    runtime: Runtime,
    tenant: str,
    archived: dict[str, str],
    which: str,
    method: str,
    suffix: str,
) -> None:
    job_id = archived[which]
    path = f"/v1/jobs/{job_id}{suffix}"
    response = getattr(client, method)(path, headers=as_tenant(tenant))
    problem = assert_problem(response, 410, path)
    assert problem["title"] == "Job archived"
    assert job_id in problem["detail"]
    # Still in the database, unchanged by the refused request.
    with runtime.database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.archived_at == FAR_FUTURE
        assert job.status in ("succeeded", "failed")


@pytest.mark.parametrize(
    ("method", "suffix"), [("get", ""), ("get", "/events"), ("post", "/cancel"), ("post", "/retry")]
)
def test_another_tenant_gets_404_not_410(
    client: FlaskClient, archived: dict[str, str], method: str, suffix: str
) -> None:
    path = f"/v1/jobs/{archived['done']}{suffix}"
    response = getattr(client, method)(path, headers=as_tenant("someone_else"))
    assert_problem(response, 404, path)


@pytest.mark.parametrize(
    "query", [{}, {"status": "succeeded"}, {"status": "failed"}, {"type": "TEST_ECHO_UPSTREAM"}]
)
def test_archived_jobs_leave_the_listings(
    client: FlaskClient, tenant: str, archived: dict[str, str], query: dict[str, str]
) -> None:
    response = client.get("/v1/jobs", headers=as_tenant(tenant), query_string=query)
    assert response.status_code == 200
    listed = {job["id"] for job in response.get_json()["jobs"]}
    assert archived["done"] not in listed and archived["failed"] not in listed
    expected = set() if query.get("status") == "failed" else {archived["live"]}
    assert listed == expected


def test_archived_failed_jobs_leave_the_dead_letter_retry(
    client: FlaskClient, tenant: str, archived: dict[str, str]
) -> None:
    response = client.post("/v1/jobs/retry", json={}, headers=as_tenant(tenant))
    assert response.status_code == 200
    assert response.get_json() == {"retried": [], "count": 0}


def test_the_live_job_is_unaffected(
    client: FlaskClient, tenant: str, archived: dict[str, str]
) -> None:
    response = client.get(f"/v1/jobs/{archived['live']}", headers=as_tenant(tenant))
    assert response.status_code == 200
    assert response.get_json()["status"] == "succeeded"


def test_tenant_stats_show_each_tenants_backlog_and_share(runtime: Runtime, tenant: str) -> None:
    """Against a window of two messages: the first tenant's first two jobs are admitted, its
    third and the pro tenant's job wait in the database."""
    service = recording_service(runtime.database, runtime.registry, runtime.settings, window=2)
    runtime.service, runtime.admission = service, service.admission
    pro = f"pro_{tenant}"
    set_tier(runtime.database, runtime.settings, pro, "pro")
    client = api.create_app(runtime=runtime).test_client()
    body = {"type": "TEST_ECHO_UPSTREAM"}
    for who in (tenant, tenant, tenant, pro):
        created = client.post("/v1/jobs", json=body, headers=as_tenant(who))
        assert created.status_code == 201, created.get_data(as_text=True)

    assert_unauthorized(client.get("/admin/tenants/stats"), "/admin/tenants/stats")
    response = client.get("/admin/tenants/stats", headers=admin())
    assert response.status_code == 200
    found = {row["tenantId"]: row for row in response.get_json()["tenants"]}
    assert found[tenant] == {
        "tenantId": tenant,
        "tier": runtime.settings.default_tier,
        "weight": 1,
        "queued": 1,
        "admitted": 2,
        "running": 0,
        "scheduled": 0,
        "backlog": 3,
        "admittedLastMinute": 2,
        "share": 1.0,
    }
    assert found[pro]["tier"] == "pro" and found[pro]["weight"] == 3
    assert found[pro]["queued"] == 1
    assert (found[pro]["admittedLastMinute"], found[pro]["share"]) == (0, 0)
