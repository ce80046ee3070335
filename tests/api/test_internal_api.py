"""`/internal/worker/run` and `/internal/stats`: who may call them, what a push does, and the
Cloud Tasks headers kept in the job's events. OIDC tokens are signed here with a local key
whose certificate the app is given, as Google's would be."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from flask import Flask
from flask.testing import FlaskClient
from google.auth import crypt, jwt

import api
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, load_settings
from tests import REAL_SECRET

WORKER_URL = "https://orchestrator.example.run.app/internal/worker/run"
ACCOUNT = "tasks-invoker@project.iam.gserviceaccount.com"
SECRET = REAL_SECRET
RUN = "/internal/worker/run"


def _key_and_cert(name: str) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


GOOGLE_KEY, GOOGLE_CERT = _key_and_cert("google")
OTHER_KEY, _ = _key_and_cert("someone-else")


def token(key: str = GOOGLE_KEY, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": WORKER_URL,
        "email": ACCOUNT,
        "email_verified": True,
        "iat": now,
        "exp": now + 600,
        "sub": "1234",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    signed: bytes = jwt.encode(crypt.RSASigner.from_string(key, "k1"), claims)
    return signed.decode()


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return load_settings(
        env="production",
        database_url=sqlite_url,
        dispatch_mode="inline",
        job_modules="tests.jobtypes",
        service_auth_secret=SECRET,
        worker_url=WORKER_URL,
        oidc_service_account=ACCOUNT,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    built = Runtime.build(settings)
    yield built
    built.database.dispose()


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    return api.create_app(runtime=runtime, oidc_certs=lambda: {"k1": GOOGLE_CERT})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def queued_job(runtime: Runtime) -> str:
    """A job recorded but not run: delayed, so nothing dispatches it before the test does."""
    from orchestrator.service import NewJob  # noqa: PLC0415

    created = runtime.service.create(NewJob(tenant_id="t1", type="TEST_FLAKY", delay_seconds=0.3))
    time.sleep(0.35)
    return created.details.job.id


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Service-Auth": "wrong"},
        {"X-Service-Auth": ""},
        bearer("not-a-jwt"),
        bearer(token(aud="https://someone-else.example/")),
        bearer(token(iss="https://evil.example")),
        bearer(token(email="intruder@project.iam.gserviceaccount.com")),
        bearer(token(email_verified=False)),
        bearer(token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)),
        bearer(token(key=OTHER_KEY)),
    ],
    ids=[
        "none",
        "wrong-secret",
        "empty-secret",
        "garbage",
        "audience",
        "issuer",
        "account",
        "unverified",
        "expired",
        "signature",
    ],
)
def test_wrong_or_missing_credentials_are_a_bare_401(
    client: FlaskClient, queued_job: str, headers: dict[str, str]
) -> None:
    response = client.post(RUN, json={"jobId": queued_job}, headers=headers)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert "detail" not in response.get_json()
    assert client.get("/internal/stats", headers=headers).status_code == 401


def test_credentials_are_checked_before_the_body_is_read(client: FlaskClient) -> None:
    response = client.post(RUN, data=b"{not json", content_type="application/json")
    assert response.status_code == 401


@pytest.mark.parametrize(
    "auth", [lambda: {"X-Service-Auth": SECRET}, lambda: bearer(token())], ids=["secret", "oidc"]
)
def test_a_push_runs_the_job_and_a_repeat_is_a_duplicate(
    client: FlaskClient, runtime: Runtime, queued_job: str, auth: Callable[[], dict[str, str]]
) -> None:
    first = client.post(RUN, json={"jobId": queued_job, "idempotencyKey": "k"}, headers=auth())
    again = client.post(RUN, json={"jobId": queued_job}, headers=auth())
    assert (first.status_code, first.get_json()["outcome"]) == (200, "succeeded")
    assert (again.status_code, again.get_json()["outcome"]) == (200, "skipped")
    assert again.get_json()["reason"] == "duplicate"
    assert runtime.service.get("t1", queued_job).job.status == "succeeded"
    [skipped] = [e for e in runtime.service.events("t1", queued_job) if e.kind == "delivery"]
    assert skipped.data is not None and skipped.data["reason"] == "duplicate"
    assert skipped.message == "delivery skipped: duplicate delivery (job succeeded)"


def test_cloud_tasks_headers_land_in_the_jobs_events(
    client: FlaskClient, runtime: Runtime, queued_job: str
) -> None:
    headers = {
        "X-Service-Auth": SECRET,
        "X-CloudTasks-TaskName": "job-a1-r0",
        "X-CloudTasks-QueueName": "jobs",
        "X-CloudTasks-TaskRetryCount": "2",
        "X-CloudTasks-TaskExecutionCount": "1",
    }
    client.post(RUN, json={"jobId": queued_job, "idempotencyKey": "job-a1-r0"}, headers=headers)
    [started] = [e for e in runtime.service.events("t1", queued_job) if e.to_status == "running"]
    assert started.data is not None
    assert started.data["delivery"] == {
        "taskName": "job-a1-r0",
        "queueName": "jobs",
        "retryCount": "2",
        "executionCount": "1",
        "idempotencyKey": "job-a1-r0",
    }


def test_a_cloud_tasks_header_that_is_not_text_is_a_422_that_names_it(
    client: FlaskClient, runtime: Runtime, queued_job: str
) -> None:
    """Kept in the job's events, a NUL (which PostgreSQL stores in no JSON) failed the
    claim: a 503, and Cloud Tasks retrying the same push for ever."""
    headers = {"X-Service-Auth": SECRET, "X-CloudTasks-TaskName": "a\x00b"}
    response = client.post(RUN, json={"jobId": queued_job}, headers=headers)
    assert response.status_code == 422
    assert response.json is not None
    assert [e["field"] for e in response.json["errors"]] == ["X-CloudTasks-TaskName"]
    assert runtime.service.get("t1", queued_job).job.status == "queued"


@pytest.mark.parametrize("body", [{}, {"jobId": "nope"}, {"jobId": "job_1", "extra": 1}])
def test_a_bad_push_body_is_a_422(client: FlaskClient, body: dict[str, Any]) -> None:
    assert client.post(RUN, json=body, headers={"X-Service-Auth": SECRET}).status_code == 422


def test_an_unknown_job_is_acknowledged_not_retried_forever(client: FlaskClient) -> None:
    response = client.post(
        RUN, json={"jobId": "job_" + "0" * 28}, headers={"X-Service-Auth": SECRET}
    )
    assert (response.status_code, response.get_json()["outcome"]) == (200, "skipped")
    assert response.get_json()["reason"] == "not_found"


def test_an_early_or_cancelled_delivery_says_why_it_ran_nothing(
    client: FlaskClient, runtime: Runtime
) -> None:
    """Each skip names its reason in the answer and in the job's events: an early
    delivery is not taken for a duplicate."""
    from orchestrator.service import NewJob  # noqa: PLC0415

    later = runtime.service.create(NewJob(tenant_id="t1", type="TEST_FLAKY", delay_seconds=3600))
    early = client.post(
        RUN, json={"jobId": later.details.job.id}, headers={"X-Service-Auth": SECRET}
    )
    assert early.get_json() == {
        "jobId": later.details.job.id,
        "outcome": "skipped",
        "reason": "not_due",
    }
    runtime.service.cancel("t1", later.details.job.id)
    gone = client.post(
        RUN, json={"jobId": later.details.job.id}, headers={"X-Service-Auth": SECRET}
    )
    assert gone.get_json()["reason"] == "cancelled"
    notes = [
        (e.data or {}).get("reason")
        for e in runtime.service.events("t1", later.details.job.id)
        if e.kind == "delivery"
    ]
    assert notes == ["not_due", "cancelled"]


def test_stats_count_dispatches_per_mode(client: FlaskClient, runtime: Runtime) -> None:
    from orchestrator.service import NewJob  # noqa: PLC0415

    def inline() -> dict[str, int]:
        stats = client.get("/internal/stats", headers={"X-Service-Auth": SECRET}).get_json()
        assert datetime.fromisoformat(stats["since"]) <= datetime.now(UTC)
        counts: dict[str, int] = stats["dispatches"].get("inline", {})
        return counts

    before = inline()
    runtime.service.create(NewJob(tenant_id="t2", type="TEST_FLAKY"))
    after = inline()
    # Two deliveries: the job (its retries run inside its one delivery) and the step its
    # success made ready.
    assert {k: after[k] - before.get(k, 0) for k in after} == {
        "attempted": 2,
        "succeeded": 2,
        "failed": 0,
    }


def test_admin_endpoints_accept_a_scheduler_oidc_token(client: FlaskClient) -> None:
    response = client.post("/admin/cron/tick", headers=bearer(token()))
    assert response.status_code == 200
    assert {f["cron"] for f in response.get_json()["fired"]} >= {"nightly-archival"}
    assert client.post("/admin/maintenance/sweep", headers=bearer(token())).status_code == 200
    assert client.post("/admin/maintenance/reap", headers={}).status_code == 401


def test_without_a_named_service_account_no_google_token_gets_in(
    runtime: Runtime, queued_job: str
) -> None:
    """Anyone can have Google sign a token for our audience: with no service account named,
    only the service secret opens the endpoints."""
    unnamed = runtime.settings.model_copy(update={"oidc_service_account": None})
    assert unnamed.expected_oidc_audience == WORKER_URL
    app = api.create_app(
        runtime=replace(runtime, settings=unnamed), oidc_certs=lambda: {"k1": GOOGLE_CERT}
    )
    client = app.test_client()
    for anyone in (token(), token(email="stranger@elsewhere.iam.gserviceaccount.com")):
        refused = client.post(RUN, json={"jobId": queued_job}, headers=bearer(anyone))
        assert refused.status_code == 401
        assert client.get("/metrics", headers=bearer(anyone)).status_code == 401
    pushed = client.post(RUN, json={"jobId": queued_job}, headers={"X-Service-Auth": SECRET})
    assert pushed.status_code == 200
