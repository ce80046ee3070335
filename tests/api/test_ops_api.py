"""Readiness and Prometheus metrics, against a real database."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask.testing import FlaskClient

import api
from orchestrator import migrate
from orchestrator.db import CONNECT_TIMEOUT_SECONDS
from orchestrator.models import utcnow
from orchestrator.readiness import check_readiness
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob
from orchestrator.settings import load_settings
from tests import REAL_SECRET
from tests.recording import recording_service
from tests.servers import free_port


def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text, 0 if absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = (
        rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$"
        if labels
        else (rf"^{re.escape(name)} (\S+)$")
    )
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_readyz_is_ready_with_a_current_database(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {"database": "ok"}}


def test_readyz_names_migrations_that_are_behind(client: FlaskClient, sqlite_url: str) -> None:
    migrate.downgrade(sqlite_url, "0002")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"].startswith("migrations behind: at 0002")


def test_readyz_reports_an_unreachable_broker(sqlite_url: str) -> None:
    settings = load_settings(
        env="development", database_url=sqlite_url, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    runtime = Runtime.build(settings)
    response = api.create_app(runtime=runtime).test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks["database"] == "ok" and checks["broker"].startswith("unreachable")


@pytest.fixture
def metrics_text(client: FlaskClient) -> Iterator[object]:
    def read() -> str:
        response = client.get("/metrics", headers={"X-Service-Auth": "dev-secret"})
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.get_data(as_text=True)

    yield read


def test_job_counters_and_histograms_move_with_committed_work(
    client: FlaskClient, metrics_text: object, tenant: str
) -> None:
    read = metrics_text
    before = read()  # type: ignore[operator]
    client.post("/v1/jobs", json={"type": "TEST_FLAKY"}, headers={"X-Tenant-ID": tenant})
    client.post("/v1/jobs", json={"type": "TEST_EXPLODES"}, headers={"X-Tenant-ID": tenant})
    after = read()  # type: ignore[operator]

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("orchestrator_jobs_created_total", type="TEST_FLAKY") == 1
    assert delta("orchestrator_jobs_created_total", type="TEST_ECHO_UPSTREAM") == 2
    assert delta("orchestrator_jobs_started_total", type="TEST_FLAKY") == 1
    assert delta("orchestrator_jobs_succeeded_total", type="TEST_FLAKY") == 1
    assert delta("orchestrator_jobs_failed_total", type="TEST_EXPLODES") == 1
    # The step after the failed one was cancelled without ever running.
    assert delta("orchestrator_jobs_cancelled_total", type="TEST_ECHO_UPSTREAM") == 1
    assert delta("orchestrator_job_duration_seconds_count", type="TEST_FLAKY") == 1
    assert delta("orchestrator_job_queue_wait_seconds_count", type="TEST_EXPLODES") == 1
    # Three deliveries: the two jobs, and the step the flaky one's success made ready.
    assert delta("orchestrator_dispatches_total", mode="inline", outcome="succeeded") == 3


def test_queue_and_tenant_gauges_come_from_the_database(
    runtime: Runtime, metrics_text: object, tenant: str
) -> None:
    """Against a window of one message per queue: the first job is admitted, the second
    waits in the database for admission, the third is due tomorrow."""
    clock_now = utcnow()
    service = recording_service(
        runtime.database,
        runtime.registry,
        runtime.settings,
        window=1,
        clock=lambda: clock_now - timedelta(minutes=5),
    )

    def parked(delay_seconds: float | None = None) -> None:
        request = NewJob(
            tenant_id=tenant,
            type="TEST_PARKED",
            input={"effectFile": "/dev/null"},
            delay_seconds=delay_seconds,
        )
        service.create(request)

    parked()
    parked()
    text = metrics_text()  # type: ignore[operator]
    assert sample(text, "orchestrator_queue_depth", queue="parked") == 2
    assert sample(text, "orchestrator_jobs_in_state", status="queued") == 2
    assert sample(text, "orchestrator_jobs_in_state", status="waiting") == 2
    assert 299 <= sample(text, "orchestrator_oldest_queued_job_age_seconds") < 400
    places = {
        place: sample(text, "orchestrator_tenant_jobs", tenant=tenant, place=place)
        for place in ("queued", "admitted", "running", "scheduled")
    }
    assert places == {"queued": 1, "admitted": 1, "running": 0, "scheduled": 0}

    # A job delayed by a day is queued, but no backlog yet: it neither deepens the queue
    # nor ages it.
    parked(86400)
    text = metrics_text()  # type: ignore[operator]
    assert sample(text, "orchestrator_jobs_in_state", status="queued") == 3
    assert sample(text, "orchestrator_queue_depth", queue="parked") == 2
    assert sample(text, "orchestrator_tenant_jobs", tenant=tenant, place="scheduled") == 1


def test_metrics_need_service_credentials_outside_development(sqlite_url: str) -> None:
    secret = REAL_SECRET
    settings = load_settings(
        env="production",
        database_url=sqlite_url,
        dispatch_mode="inline",
        service_auth_secret=secret,
    )
    client = api.create_app(runtime=Runtime.build(settings)).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert client.get("/metrics", headers={"X-Service-Auth": secret}).status_code == 200


def test_the_openapi_document_has_every_route_the_api_serves(client: FlaskClient) -> None:
    """The dashboard and the operator pages are HTML for browsers and the document serves
    itself; every other
    route and method must be in it, and nothing that is not served."""
    document = client.get("/openapi.json").get_json()
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    served = set()
    for rule in client.application.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in {"dashboard", "ops", "openapi", "static"}:
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        served |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert served == documented


def test_readyz_answers_in_seconds_when_postgresql_does_not(sqlite_url: str) -> None:
    """A server that takes the connection and never answers (a hung host, a dropped route
    would do the same): not ready, within the connect timeout, not the OS's two minutes."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"postgresql+psycopg://nobody@127.0.0.1:{silent.getsockname()[1]}/db"
        settings = load_settings(env="development", database_url=url, dispatch_mode="inline")
        runtime = Runtime.build(settings)
        answers: list[dict[str, str]] = []
        probe = threading.Thread(target=lambda: answers.append(check_readiness(runtime)))
        probe.daemon = True  # a probe that hangs must not hold the test run
        probe.start()
        probe.join(CONNECT_TIMEOUT_SECONDS + 5)
        assert answers, "the readiness check hung on a database that does not answer"
        assert answers[0]["database"].startswith("unreachable")
