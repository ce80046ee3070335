"""Tenants and trust: API keys, isolation on every route, service credentials, secrets kept
out of logs, and limits on input."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import api
from orchestrator import apikeys
from orchestrator.errors import OrchestratorError
from orchestrator.runtime import Runtime
from orchestrator.settings import ConfigurationError, Settings, load_settings
from tests import REAL_SECRET

SECRET = "service-secret-" + "z" * 24

# Every route of the app, by what guards it. A new route must be added here, with the
# identity it takes, or this suite fails: nothing ships unscoped by accident.
TENANT_JOB_ROUTES = {
    ("GET", "/v1/jobs/<job:job_id>"),
    ("GET", "/v1/jobs/<job:job_id>/events"),
    ("GET", "/v1/jobs/<job:job_id>/children"),
    ("POST", "/v1/jobs/<job:job_id>/cancel"),
    ("POST", "/v1/jobs/<job:job_id>/retry"),
    ("GET", "/dashboard/jobs/<job_id>"),
    ("POST", "/dashboard/jobs/<job_id>/retry"),
    ("POST", "/dashboard/jobs/<job_id>/cancel"),
    ("GET", "/dashboard/jobs/<job_id>/live"),
}
TENANT_COLLECTION_ROUTES = {
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("POST", "/v1/jobs/retry"),
    ("POST", "/v1/jobs:batch"),
    ("GET", "/v1/stats"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/"),
    ("GET", "/dashboard/jobs"),
    ("GET", "/dashboard/dead-letters"),
    ("GET", "/dashboard/summary"),
    ("POST", "/dashboard/dead-letters/retry"),
    ("GET", "/dashboard/login"),
    ("GET", "/dashboard/tenant"),
    ("POST", "/dashboard/tenant"),
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
}
SERVICE_ROUTES = {
    ("POST", "/admin/maintenance/archive"),
    ("GET", "/admin/maintenance/runs"),
    ("GET", "/admin/maintenance/jobs/<job:job_id>"),
    ("GET", "/admin/tenants/stats"),
    ("POST", "/admin/maintenance/sweep"),
    ("POST", "/admin/maintenance/reap"),
    ("POST", "/admin/cron/tick"),
    ("POST", "/internal/worker/run"),
    ("GET", "/internal/stats"),
    ("GET", "/metrics"),
}
# Operator pages: service credentials, or a session signed in with the service secret.
OPERATOR_ROUTES = {
    ("GET", "/ops"),
    ("GET", "/ops/scheduled"),
    ("GET", "/ops/search"),
    ("GET", "/ops/dead-letters"),
    ("POST", "/ops/dead-letters"),
    ("POST", "/ops/cron/<cron_id>/fire"),
    ("POST", "/ops/jobs/<job:job_id>/run-now"),
    ("POST", "/ops/logout"),
}
OPEN_ROUTES = {
    ("GET", "/ops/login"),
    ("POST", "/ops/login"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/static/<path:filename>"),
    ("GET", "/dashboard/static/<path:filename>"),
}


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return load_settings(
        env="production",
        database_url=sqlite_url,
        dispatch_mode="inline",
        job_modules="tests.jobtypes",
        service_auth_secret=SECRET,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    built = Runtime.build(settings)
    yield built
    built.database.dispose()


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    return api.create_app(runtime=runtime)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def key_for(runtime: Runtime, tenant: str) -> dict[str, str]:
    issued = apikeys.create_key(runtime.database, tenant, "tests")
    return {"Authorization": f"Bearer {issued.key}"}


def routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def test_every_route_is_classified(app: Flask) -> None:
    known = (
        TENANT_JOB_ROUTES
        | TENANT_COLLECTION_ROUTES
        | SERVICE_ROUTES
        | OPERATOR_ROUTES
        | OPEN_ROUTES
    )
    unclassified = routes(app) - known
    assert not unclassified, f"classify these routes in this test: {sorted(unclassified)}"


def test_another_tenant_gets_404_on_every_job_route(
    app: Flask, client: FlaskClient, runtime: Runtime
) -> None:
    alice, bob = key_for(runtime, "alice"), key_for(runtime, "bob")
    job = client.post("/v1/jobs", json={"type": "TEST_EXPLODES"}, headers=alice).get_json()
    page = client.get("/dashboard/dead-letters", headers=bob).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "the dashboard's forms carry a CSRF token"
    form = {"csrf_token": found.group(1)}  # bob's own, valid token: only the tenant differs
    for method, rule in sorted(TENANT_JOB_ROUTES & routes(app)):
        path = re.sub(r"<(job:)?job_id>", job["id"], rule)
        data = form if method == "POST" and path.startswith("/dashboard") else None
        response = client.open(path, method=method, headers=bob, data=data)
        assert response.status_code == 404, (method, path, response.status_code)
        text = response.get_data(as_text=True)
        for secret_of_alice in ("alice", "TEST_EXPLODES", "the input can never work"):
            assert secret_of_alice not in text, (method, path)
    # Lists and bulk operations show and touch only the caller's own jobs.
    assert client.get("/v1/jobs", headers=bob).get_json()["jobs"] == []
    assert client.get("/v1/jobs?status=failed", headers=bob).get_json()["jobs"] == []
    assert client.post("/v1/jobs/retry", json={}, headers=bob).get_json()["count"] == 0
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).get_json()["status"] == "failed"


def test_tenant_credentials_open_no_service_route(
    app: Flask, client: FlaskClient, runtime: Runtime
) -> None:
    alice = key_for(runtime, "alice")
    for method, rule in sorted(SERVICE_ROUTES & routes(app)):
        path = re.sub(r"<[^>]+>", "job_" + "0" * 28, rule)
        for headers in ({}, alice, {"X-Service-Auth": SECRET[:-1]}, {"X-Tenant-ID": "alice"}):
            response = client.open(path, method=method, headers=headers, json={})
            assert response.status_code == 401, (method, rule, headers)
            assert "detail" not in (response.get_json() or {})


def test_tenant_credentials_open_no_operator_page(
    app: Flask, client: FlaskClient, runtime: Runtime
) -> None:
    alice = key_for(runtime, "alice")
    for method, rule in sorted(OPERATOR_ROUTES & routes(app)):
        path = rule.replace("<cron_id>", "nightly-archival").replace(
            "<job:job_id>", "job_0123456789abcdef0123456789ab"
        )
        for headers in ({}, alice, {"X-Service-Auth": SECRET[:-1]}, {"X-Tenant-ID": "alice"}):
            response = client.open(path, method=method, headers=headers)
            expected = 302 if method == "GET" else 401  # a browser is sent to sign in
            assert response.status_code == expected, (method, rule, headers)
            if method == "GET":
                assert response.headers["Location"].startswith("/ops/login")


def test_api_keys_map_to_tenants_and_revocation_is_immediate(
    client: FlaskClient, runtime: Runtime
) -> None:
    issued = apikeys.create_key(runtime.database, "carol", "ci")
    headers = {"Authorization": f"Bearer {issued.key}"}
    created = client.post("/v1/jobs", json={"type": "TEST_FLAKY"}, headers=headers)
    assert created.status_code == 201 and created.get_json()["tenantId"] == "carol"
    assert created.get_json()["createdBy"] == "key:ci"
    apikeys.revoke_key(runtime.database, issued.id)
    assert client.get("/v1/jobs", headers=headers).status_code == 401
    stored = apikeys.list_keys(runtime.database, "carol")[0]
    assert issued.key not in json.dumps(stored.__dict__, default=str)


def test_nobody_acts_as_the_system_tenant(
    client: FlaskClient, runtime: Runtime, sqlite_url: str
) -> None:
    """Archival's jobs are the system tenant's, and their results count every tenant's
    jobs: a key made for it (by hand, in the database) opens nothing, and the CLI's path
    refuses to make one; trusted headers naming it are refused too (below)."""
    system = runtime.settings.system_tenant
    made = apikeys.create_key(runtime.database, system, "smuggled")
    for path in ("/v1/jobs", "/v1/stats"):
        response = client.get(path, headers={"Authorization": f"Bearer {made.key}"})
        assert response.status_code == 400, response.get_data(as_text=True)
        assert response.get_json()["detail"] == f"'{system}' is the system's own tenant."
    with pytest.raises(OrchestratorError, match="is the system's own"):
        apikeys.create_key(runtime.database, system, "again", system_tenant=system)

    dev = load_settings(env="development", database_url=sqlite_url, dispatch_mode="inline")
    dev_client = api.create_app(runtime=Runtime.build(dev)).test_client()
    answer = dev_client.get("/v1/jobs", headers={"X-Tenant-ID": dev.system_tenant})
    assert answer.status_code == 400
    assert dev_client.get("/v1/jobs", headers={"X-Tenant-ID": "alice"}).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"Authorization": "Bearer ork_000000000000_" + "x" * 43},
        {"Authorization": "Basic abc"},
        {"X-Tenant-ID": "alice"},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_wrong_api_keys_are_401(client: FlaskClient, header: dict[str, str]) -> None:
    response = client.get("/v1/jobs", headers=header)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_trusted_headers_need_a_gateway_secret_outside_development(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="ORCH_GATEWAY_SECRET"):
        api.create_app(
            load_settings(
                env="production",
                database_url=sqlite_url,
                service_auth_secret=SECRET,
                auth_mode="trusted-headers",
            )
        )
    settings = load_settings(
        env="production",
        database_url=sqlite_url,
        dispatch_mode="inline",
        service_auth_secret=SECRET,
        auth_mode="trusted-headers",
        gateway_secret=REAL_SECRET[::-1],
    )
    client = api.create_app(runtime=Runtime.build(settings)).test_client()
    assert client.get("/v1/jobs", headers={"X-Tenant-ID": "t"}).status_code == 401
    ok = client.get("/v1/jobs", headers={"X-Tenant-ID": "t", "X-Gateway-Secret": REAL_SECRET[::-1]})
    assert ok.status_code == 200


def test_secrets_never_reach_logs_errors_or_events(
    client: FlaskClient, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issued = apikeys.create_key(runtime.database, "dave", "ops")
    headers = {"Authorization": f"Bearer {issued.key}"}
    answers = [
        client.post("/v1/jobs", json={"type": "TEST_EXPLODES"}, headers=headers),
        client.post("/admin/maintenance/sweep", headers={"X-Service-Auth": SECRET + "x"}),
        client.post("/admin/maintenance/sweep", headers={"X-Service-Auth": SECRET}),
        client.get("/v1/jobs", headers={"Authorization": f"Bearer {issued.key}x"}),
        client.post(
            "/internal/worker/run",
            headers={"Authorization": f"Bearer {SECRET}"},
            json={"jobId": "nope"},
        ),
    ]
    job_id = answers[0].get_json()["id"]
    events = json.dumps([e.__dict__ for e in runtime.service.events("dave", job_id)], default=str)
    bodies = " ".join(answer.get_data(as_text=True) for answer in answers)
    for secret in (SECRET, issued.key, issued.key.split("_", 2)[2]):
        assert secret not in caplog.text
        assert secret not in bodies
        assert secret not in events


def test_oversized_body_is_413(client: FlaskClient, runtime: Runtime) -> None:
    headers = key_for(runtime, "erin")
    response = client.post(
        "/v1/jobs",
        data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    ("job_input", "field"),
    [
        ({"failTimes": 0, "blob": "x" * 70_000}, "input"),
        (_nested(30), "input"),
        ({"text": "y" * 20_000}, "input.text"),
        ({"items": list(range(2000))}, "input.items"),
    ],
)
def test_inputs_past_the_limits_are_422_with_the_field(
    client: FlaskClient, runtime: Runtime, job_input: Any, field: str
) -> None:
    response = client.post(
        "/v1/jobs",
        json={"type": "TEST_FLAKY", "input": job_input},
        headers=key_for(runtime, "frank"),
    )
    assert response.status_code == 422
    fields = [error["field"] for error in response.get_json()["errors"]]
    assert any(f.startswith(field) for f in fields), fields
    assert client.get("/v1/jobs", headers=key_for(runtime, "frank")).get_json()["jobs"] == []


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=x", "status=nope", "cursor=" + "c" * 100, "unknown=1"]
)
def test_bad_page_parameters_are_422(client: FlaskClient, runtime: Runtime, query: str) -> None:
    assert client.get(f"/v1/jobs?{query}", headers=key_for(runtime, "g")).status_code == 422
