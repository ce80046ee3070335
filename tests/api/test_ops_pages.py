"""`/ops`: operator pages across tenants, behind the service secret, every action a POST
with the form's token."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from api import operator as api_operator
from orchestrator.runtime import Runtime
from orchestrator.settings import DEV_SERVICE_SECRET


def _token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def _create(client: FlaskClient, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body, headers={"X-Tenant-ID": tenant})
    assert response.status_code == 201, response.get_json()
    job: dict[str, Any] = response.get_json()
    return job


@pytest.fixture
def operator(client: FlaskClient) -> str:
    """Signed in with the service secret; the form token of the session."""
    page = client.get("/ops/login").get_data(as_text=True)
    signed = client.post(
        "/ops/login",
        data={"secret": DEV_SERVICE_SECRET, "csrf_token": _token(page), "next": "/ops"},
    )
    assert signed.status_code == 303 and signed.headers["Location"] == "/ops"
    return _token(client.get("/ops").get_data(as_text=True))


def test_nobody_else_gets_in(client: FlaskClient) -> None:
    asked = client.get("/ops/dead-letters")
    assert (
        asked.status_code == 302
        and asked.headers["Location"] == "/ops/login?next=/ops/dead-letters"
    )
    assert client.post("/ops/cron/nightly-archival/fire").status_code == 401
    page = client.get("/ops/login").get_data(as_text=True)
    wrong = client.post("/ops/login", data={"secret": "dev-secreT", "csrf_token": _token(page)})
    assert wrong.status_code == 401
    assert client.get("/ops").status_code == 302
    # A tenant's header is no operator's credential.
    assert client.get("/ops", headers={"X-Tenant-ID": "tnt_a"}).status_code == 302
    # Service credentials, as scripts send them, are.
    assert client.get("/ops", headers={"X-Service-Auth": DEV_SERVICE_SECRET}).status_code == 200


def test_overview_shows_every_tenant_queues_and_crons(client: FlaskClient, operator: str) -> None:
    _create(client, "tnt_a", {"type": "TEST_EXPLODES"})
    _create(client, "tnt_b", {"type": "TEST_ECHO_UPSTREAM"})
    html = client.get("/ops").get_data(as_text=True)
    assert re.search(r'data-tenant="tnt_a".*?data-field="failure-rate">100\.0%', html, re.S)
    assert re.search(r'data-tenant="tnt_b".*?data-field="failure-rate">0\.0%', html, re.S)
    for queue in ("default", "reports", "maintenance"):
        assert f'data-queue="{queue}"' in html
    assert 'data-cron="nightly-archival"' in html and 'data-cron="daily-tenant-summary"' in html


def test_fire_a_cron_now(client: FlaskClient, operator: str) -> None:
    fired = client.post("/ops/cron/nightly-archival/fire", data={"csrf_token": operator})
    assert fired.status_code == 303
    assert "nightly-archival fired: 1 job(s) created." in client.get("/ops").get_data(as_text=True)
    unknown = client.post("/ops/cron/nope/fire", data={"csrf_token": operator})
    assert unknown.status_code == 404
    assert client.post("/ops/cron/nightly-archival/fire").status_code == 400  # no token


def test_run_a_scheduled_job_now(client: FlaskClient, operator: str) -> None:
    later = _create(client, "tnt_a", {"type": "TEST_ECHO_UPSTREAM", "delaySeconds": 3600})
    listed = client.get("/ops/scheduled").get_data(as_text=True)
    assert f'data-job-id="{later["id"]}"' in listed
    moved = client.post(f"/ops/jobs/{later['id']}/run-now", data={"csrf_token": operator})
    assert moved.status_code == 303
    # Inline dispatch runs it as soon as it is due.
    job = client.get(f"/v1/jobs/{later['id']}", headers={"X-Tenant-ID": "tnt_a"}).get_json()
    assert job["status"] == "succeeded"
    assert f'data-job-id="{later["id"]}"' not in client.get("/ops/scheduled").get_data(as_text=True)
    again = client.post(f"/ops/jobs/{later['id']}/run-now", data={"csrf_token": operator})
    assert "no longer waiting" in client.get(again.headers["Location"]).get_data(as_text=True)


def test_search_finds_by_id_or_subject_in_any_tenant(client: FlaskClient, operator: str) -> None:
    a = _create(client, "tnt_a", {"type": "TEST_ECHO_UPSTREAM", "subject": "order-7"})
    b = _create(client, "tnt_b", {"type": "TEST_ECHO_UPSTREAM", "subject": "order-7"})
    by_subject = client.get("/ops/search?q=order-7").get_data(as_text=True)
    assert a["id"] in by_subject and b["id"] in by_subject
    by_id = client.get(f"/ops/search?q={a['id']}").get_data(as_text=True)
    assert a["id"] in by_id and b["id"] not in by_id


def test_dead_letters_retry_and_discard_in_bulk(client: FlaskClient, operator: str) -> None:
    first = _create(client, "tnt_a", {"type": "TEST_EXPLODES"})
    second = _create(client, "tnt_b", {"type": "TEST_EXPLODES"})
    listed = client.get("/ops/dead-letters").get_data(as_text=True)
    assert first["id"] in listed and second["id"] in listed
    retried = client.post(
        "/ops/dead-letters",
        data={"csrf_token": operator, "action": "retry", "job": [first["id"], second["id"]]},
    )
    assert "Retried 2 job(s)." in client.get(retried.headers["Location"]).get_data(as_text=True)
    events = client.get(f"/v1/jobs/{first['id']}/events", headers={"X-Tenant-ID": "tnt_a"})
    assert sum(e["toStatus"] == "failed" for e in events.get_json()["events"]) == 2
    discarded = client.post(
        "/ops/dead-letters",
        data={"csrf_token": operator, "action": "discard", "job": [first["id"]]},
    )
    page = client.get(discarded.headers["Location"]).get_data(as_text=True)
    assert "Discarded 1 job(s)." in page
    assert first["id"] not in page and second["id"] in page
    gone = client.get(f"/v1/jobs/{first['id']}", headers={"X-Tenant-ID": "tnt_a"})
    assert gone.status_code == 410  # archived: kept on record, out of the dead letters


def test_signing_out_ends_the_session(client: FlaskClient, operator: str) -> None:
    assert client.post("/ops/logout", data={"csrf_token": operator}).status_code == 303
    assert client.get("/ops").status_code == 302


def test_a_session_lapses_and_ends_with_the_secret(
    client: FlaskClient, operator: str, monkeypatch: pytest.MonkeyPatch, runtime: Runtime
) -> None:
    monkeypatch.setattr(api_operator, "SESSION_HOURS", 0)
    assert client.get("/ops").status_code == 302  # lapsed
    monkeypatch.undo()
    assert client.get("/ops").status_code == 302  # and gone: signed in again, only
    page = client.get("/ops/login").get_data(as_text=True)
    client.post("/ops/login", data={"secret": DEV_SERVICE_SECRET, "csrf_token": _token(page)})
    assert client.get("/ops").status_code == 200
    rotated = runtime.settings.model_copy(update={"service_auth_secret": "a-new-secret-0123456789"})
    monkeypatch.setattr(runtime, "settings", rotated)
    assert client.get("/ops").status_code == 302  # the cookie was signed in with the old one


def test_scripts_send_the_secret_and_get_problems_as_json(client: FlaskClient) -> None:
    header = {"X-Service-Auth": DEV_SERVICE_SECRET}
    fired = client.post("/ops/cron/nightly-archival/fire", headers=header)  # no form token
    assert fired.status_code == 303
    unknown = client.post("/ops/cron/nope/fire", headers=header)
    assert unknown.status_code == 404 and unknown.content_type == "application/problem+json"
    # Only the service secret: not as a bearer token, where Cloud Tasks' identity goes.
    bearer = client.post(
        "/ops/cron/nightly-archival/fire", headers={"Authorization": f"Bearer {DEV_SERVICE_SECRET}"}
    )
    assert bearer.status_code == 401 and bearer.mimetype == "text/html"  # a page, for a person


def test_a_search_for_text_no_job_can_hold_is_refused_or_finds_nothing(
    client: FlaskClient, operator: str
) -> None:
    """A NUL is refused as in every query string (422, naming it); bytes that are not
    UTF-8 arrive as replacement characters, which no job holds."""
    refused = client.get("/ops/search?q=%00")
    assert refused.status_code == 422 and "q contains a NUL" in refused.get_data(as_text=True)
    response = client.get("/ops/search?q=%ED%A0%80")
    assert response.status_code == 200 and "Nothing here." in response.get_data(as_text=True)
