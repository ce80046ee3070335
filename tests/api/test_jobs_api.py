"""The public /v1 API through Flask's test client, on a real SQLite database.

Dispatch is inline: the POST that creates a job runs its whole pipeline before answering.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import jsonschema
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import api
from orchestrator.ids import looks_like_job_id, new_job_id
from orchestrator.models import Job, JobEvent, utcnow
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob
from orchestrator.settings import ConfigurationError, load_settings

PROBLEM = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "instance"}

README_JOB = {
    "type": "ANALYZE_INSPECTION",
    "inspectionId": "insp_999",
    "input": {"analysisMode": "DEEP", "roomIds": ["room_1"]},
}


def tenant_headers(tenant: str, **extra: str) -> dict[str, str]:
    return {"X-Tenant-ID": tenant, **extra}


def create(client: FlaskClient, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body, headers=tenant_headers(tenant))
    assert response.status_code == 201, response.get_json()
    created: dict[str, Any] = response.get_json()
    return created


def get_job(client: FlaskClient, tenant: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=tenant_headers(tenant))
    assert response.status_code == 200, response.get_json()
    job: dict[str, Any] = response.get_json()
    return job


def events_of(client: FlaskClient, tenant: str, job_id: str, **query: Any) -> list[dict[str, Any]]:
    response = client.get(
        f"/v1/jobs/{job_id}/events", headers=tenant_headers(tenant), query_string=query
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["jobId"] == job_id
    events: list[dict[str, Any]] = body["events"]
    return events


def transitions_of(events: list[dict[str, Any]]) -> list[tuple[str | None, str | None]]:
    return [(e["fromStatus"], e["toStatus"]) for e in events if e["kind"] == "transition"]


def list_jobs(client: FlaskClient, tenant: str, **query: Any) -> dict[str, Any]:
    response = client.get("/v1/jobs", headers=tenant_headers(tenant), query_string=query)
    assert response.status_code == 200, response.get_json()
    page: dict[str, Any] = response.get_json()
    return page


def assert_problem(response: TestResponse, status: int, path: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = response.get_json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["instance"] == path
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    return body


def error_fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


def row_counts(runtime: Runtime) -> tuple[int, int]:
    with runtime.database.session() as session:
        jobs = session.scalar(sa.select(sa.func.count()).select_from(Job))
        events = session.scalar(sa.select(sa.func.count()).select_from(JobEvent))
    return int(jobs or 0), int(events or 0)


def effect_job(tmp_path: Path) -> dict[str, Any]:
    return {"type": "TEST_EFFECT", "input": {"effectFile": str(tmp_path / "effects.log")}}


# --- health and routing -----------------------------------------------------------------


def test_healthz(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_unknown_route_is_a_problem(client: FlaskClient) -> None:
    assert_problem(client.get("/v2/nothing-here"), 404, "/v2/nothing-here")


@pytest.mark.parametrize(("method", "path"), [("put", "/v1/jobs"), ("post", "/healthz")])
def test_wrong_method_is_a_problem(client: FlaskClient, method: str, path: str) -> None:
    response = getattr(client, method)(path, headers=tenant_headers("t1"))
    assert_problem(response, 405, path)


def test_wrong_method_names_the_allowed_ones(client: FlaskClient) -> None:
    response = client.put("/v1/jobs", headers=tenant_headers("t1"))
    assert response.status_code == 405
    allowed = {m.strip() for m in response.headers.get("Allow", "").split(",")}
    assert {"GET", "POST"} <= allowed


# --- creating a job ---------------------------------------------------------------------


def test_create_answers_201_with_the_location_of_the_job(
    client: FlaskClient, tenant: str, tmp_path: Path
) -> None:
    response = client.post("/v1/jobs", json=effect_job(tmp_path), headers=tenant_headers(tenant))
    assert response.status_code == 201
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert looks_like_job_id(body["id"])
    assert body["tenantId"] == tenant
    assert body["type"] == "TEST_EFFECT"
    location = response.headers["Location"]
    assert urlparse(location).path == f"/v1/jobs/{body['id']}"
    fetched = client.get(urlparse(location).path, headers=tenant_headers(tenant))
    assert fetched.status_code == 200
    assert fetched.get_json()["id"] == body["id"]


def test_the_readme_example_runs_its_whole_pipeline(client: FlaskClient, tenant: str) -> None:
    created = create(client, tenant, README_JOB)
    assert created["subject"] == "insp_999"
    assert [s["type"] for s in created["pipeline"]["steps"]] == [
        "ANALYZE_INSPECTION",
        "GENERATE_REPORT",
    ]

    job = get_job(client, tenant, created["id"])
    assert job["status"] == "succeeded"
    assert job["attempt"] == 1
    assert job["input"] == README_JOB["input"]
    assert job["result"]["inspectionId"] == "insp_999"
    assert job["result"]["roomIds"] == ["room_1"]
    assert job["startedAt"] is not None
    assert job["finishedAt"] is not None
    steps = job["pipeline"]["steps"]
    assert [(s["type"], s["status"]) for s in steps] == [
        ("ANALYZE_INSPECTION", "succeeded"),
        ("GENERATE_REPORT", "succeeded"),
    ]
    assert steps[1]["children"] == {"succeeded": 1}  # one ANALYZE_ROOM, joined by the report
    assert job["pipeline"]["id"] == job["id"]

    report = get_job(client, tenant, steps[1]["id"])
    assert report["upstreamId"] == job["id"]
    assert report["subject"] == "insp_999"
    assert report["result"]["inspectionId"] == "insp_999"
    assert report["result"]["roomIds"] == ["room_1"]
    room = client.get("/v1/jobs?type=ANALYZE_ROOM", headers=tenant_headers(tenant)).get_json()[
        "jobs"
    ][0]
    assert (room["joinId"], room["upstreamId"]) == (steps[1]["id"], job["id"])
    assert report["result"]["overallScore"] == room["result"]["score"]
    assert report["pipeline"] == job["pipeline"]


def test_subject_is_accepted_under_its_own_name(client: FlaskClient, tenant: str) -> None:
    body = {**README_JOB}
    body["subject"] = body.pop("inspectionId")
    assert create(client, tenant, body)["subject"] == "insp_999"


def test_the_caller_is_recorded(client: FlaskClient, tenant: str, tmp_path: Path) -> None:
    response = client.post(
        "/v1/jobs",
        json=effect_job(tmp_path),
        headers=tenant_headers(tenant, **{"X-User-ID": "user_42"}),
    )
    assert response.status_code == 201
    assert get_job(client, tenant, response.get_json()["id"])["createdBy"] == "user_42"


def test_a_failing_job_fails_and_cancels_the_steps_after_it(
    client: FlaskClient, tenant: str
) -> None:
    created = create(client, tenant, {"type": "TEST_EXPLODES"})
    job = get_job(client, tenant, created["id"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == "PermanentError"
    assert job["error"]["message"] == "the input can never work"
    assert job["result"] is None
    assert [s["status"] for s in job["pipeline"]["steps"]] == ["failed", "cancelled"]


# --- bad requests change nothing ----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Tenant-ID": ""}, {"X-Tenant-ID": "   "}, {"X-Tenant-ID": "bad tenant!"}],
    ids=["missing", "empty", "blank", "invalid"],
)
def test_a_request_without_a_valid_tenant_is_refused_and_records_nothing(
    client: FlaskClient, runtime: Runtime, tenant: str, headers: dict[str, str]
) -> None:
    response = client.post("/v1/jobs", json=README_JOB, headers=headers)
    body = assert_problem(response, 400, "/v1/jobs")
    assert "X-Tenant-ID" in body.get("detail", "")
    assert row_counts(runtime) == (0, 0)
    assert list_jobs(client, tenant)["jobs"] == []
    assert_problem(client.get("/v1/jobs", headers=headers), 400, "/v1/jobs")


def test_an_invalid_user_header_is_refused(client: FlaskClient, runtime: Runtime) -> None:
    response = client.post(
        "/v1/jobs", json=README_JOB, headers=tenant_headers("t1", **{"X-User-ID": "no spaces"})
    )
    assert_problem(response, 400, "/v1/jobs")
    assert row_counts(runtime) == (0, 0)


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"{not json", "cannot be read as JSON (Expecting property name enclosed in double"),
        (b"", "is empty"),
        (b'{"type": "ANALYZE_INSPECTION",', "cannot be read as JSON (Expecting property name"),
        (b"null", "is null"),
        (b"\xff\xfe\x00", "is not UTF-8 text"),
        (b"\xc3(", "is not UTF-8 text"),
        (
            b'{"priority": ' + b"9" * 5000 + b"}",
            "cannot be read as JSON (Exceeds the limit (4300 digits)",
        ),
        (b"[" * 5000 + b"]" * 5000, "is nested too deeply"),
    ],
    ids=["garbage", "empty", "truncated", "null", "utf-16-broken", "not-utf8", "digits", "deep"],
)
def test_a_body_that_is_not_json_is_a_400_saying_why(
    client: FlaskClient, runtime: Runtime, tenant: str, payload: bytes, detail: str
) -> None:
    response = client.post(
        "/v1/jobs", data=payload, content_type="application/json", headers=tenant_headers(tenant)
    )
    problem = assert_problem(response, 400, "/v1/jobs")
    assert problem["detail"].startswith(f"The request body {detail}"), problem["detail"]
    assert row_counts(runtime) == (0, 0)


@pytest.mark.parametrize("payload", [[], [README_JOB], "ANALYZE_INSPECTION", 42])
def test_json_that_is_not_an_object_is_refused(
    client: FlaskClient, runtime: Runtime, tenant: str, payload: Any
) -> None:
    response = client.post("/v1/jobs", json=payload, headers=tenant_headers(tenant))
    body = assert_problem(response, response.status_code, "/v1/jobs")
    assert body["status"] in (400, 422)
    assert row_counts(runtime) == (0, 0)


def test_deeply_nested_json_is_a_client_error_not_a_500(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    payload = "[" * 100_000 + "]" * 100_000
    response = client.post(
        "/v1/jobs", data=payload, content_type="application/json", headers=tenant_headers(tenant)
    )
    assert_problem(response, 400, "/v1/jobs")
    assert row_counts(runtime) == (0, 0)


def test_an_oversized_body_is_a_413(client: FlaskClient, runtime: Runtime, tenant: str) -> None:
    payload = b'{"type": "TEST_EFFECT", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = client.post(
        "/v1/jobs", data=payload, content_type="application/json", headers=tenant_headers(tenant)
    )
    assert_problem(response, 413, "/v1/jobs")
    assert row_counts(runtime) == (0, 0)


def test_an_unknown_type_is_a_422_on_the_type_field(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    response = client.post(
        "/v1/jobs", json={"type": "NO_SUCH_TYPE"}, headers=tenant_headers(tenant)
    )
    body = assert_problem(response, 422, "/v1/jobs")
    assert error_fields(body) == {"type"}
    assert "NO_SUCH_TYPE" in body["errors"][0]["message"]
    assert row_counts(runtime) == (0, 0)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/jobs", {"type": "ANALYZE_INSPECTON"}, "type"),
        ("/v1/jobs:batch", {"jobs": [{"type": "ANALYZE_INSPECTON"}]}, "jobs.0.type"),
    ],
)
def test_an_unknown_type_is_answered_with_the_closest_public_one(
    client: FlaskClient, tenant: str, path: str, body: dict[str, Any], field: str
) -> None:
    """A typo is fixed from the answer alone; system types (ANALYZE_ROOM, archival) are
    not the public's to create, so they are not named to it either."""
    response = client.post(path, json=body, headers=tenant_headers(tenant))
    problem = assert_problem(response, 422, path)
    [error] = problem["errors"]
    assert error["field"] == field
    assert "did you mean 'ANALYZE_INSPECTION'?" in error["message"]
    assert "ANALYZE_ROOM" not in error["message"] and "ARCHIVE" not in error["message"]
    assert "ANALYZE_ROOM" not in response.get_data(as_text=True)


def test_invalid_input_gets_field_level_errors(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    bad = {"type": "ANALYZE_INSPECTION", "input": {"analysisMode": "FAST", "roomIds": []}}
    response = client.post("/v1/jobs", json=bad, headers=tenant_headers(tenant))
    body = assert_problem(response, 422, "/v1/jobs")
    assert error_fields(body) == {"input.analysisMode", "input.roomIds"}
    for error in body["errors"]:
        assert error["message"]
    assert row_counts(runtime) == (0, 0)
    assert list_jobs(client, tenant)["jobs"] == []


def test_missing_input_fields_are_named(client: FlaskClient, runtime: Runtime, tenant: str) -> None:
    response = client.post(
        "/v1/jobs", json={"type": "ANALYZE_INSPECTION"}, headers=tenant_headers(tenant)
    )
    body = assert_problem(response, 422, "/v1/jobs")
    assert error_fields(body) == {"input.analysisMode", "input.roomIds"}
    assert row_counts(runtime) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**README_JOB, "priorty": 5}, "priorty"),
        ({"input": {}}, "type"),
        ({"type": ""}, "type"),
        ({"type": "X" * 129}, "type"),
        ({"type": "ANALYZE_INSPECTION", "input": ["room_1"]}, "input"),
        ({**README_JOB, "inspectionId": ""}, "inspectionId"),
        # PostgreSQL stores no NUL character: refused by name, not by the database (a 500).
        ({**README_JOB, "inspectionId": "insp\x00"}, "inspectionId"),
        ({**README_JOB, "idempotencyKey": "k\x00"}, "idempotencyKey"),
        ({**README_JOB, "input": {**README_JOB["input"], "roomIds": ["a\x00"]}}, "input"),
        ({**README_JOB, "input": {**README_JOB["input"], "note\x00": "x"}}, "input"),
        # Times that would not convert to UTC, or be read back, in every database.
        ({**README_JOB, "runAt": "9999-12-31T23:30:00-01:00"}, "runAt"),
        ({**README_JOB, "runAt": "0001-01-01T00:00:00+01:00"}, "runAt"),
        ({**README_JOB, "runAt": "1999-12-31T23:59:59Z"}, "runAt"),
        ({**README_JOB, "delaySeconds": float("nan")}, "delaySeconds"),
    ],
    ids=[
        "extra-field",
        "no-type",
        "empty-type",
        "long-type",
        "input-not-object",
        "empty-subject",
        "nul-subject",
        "nul-key",
        "nul-in-input",
        "nul-input-key",
        "far-run-at",
        "ancient-run-at",
        "run-at-before-2000",
        "nan-delay",
    ],
)
def test_a_malformed_request_body_is_a_422(
    client: FlaskClient, runtime: Runtime, tenant: str, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json=body, headers=tenant_headers(tenant))
    problem = assert_problem(response, 422, "/v1/jobs")
    assert any(f == field or f.startswith(f"{field}.") for f in error_fields(problem)), problem
    assert row_counts(runtime) == (0, 0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"runAt": "1999-12-31T23:59:59Z"}, "Value error, is before 2000-01-01T00:00:00Z"),
        ({"delaySeconds": float("nan")}, "Input should be a finite number"),
    ],
)
def test_a_422_says_what_is_wrong_in_the_clients_words(
    client: FlaskClient, tenant: str, extra: dict[str, Any], message: str
) -> None:
    """Not Python's (`datetime.datetime(2000, ...)`), nor a bound NaN happened to miss."""
    response = client.post("/v1/jobs", json={**README_JOB, **extra}, headers=tenant_headers(tenant))
    [error] = assert_problem(response, 422, "/v1/jobs")["errors"]
    assert error["message"] == message


# --- reading a job, and tenant isolation ---------------------------------------------------


@pytest.mark.parametrize("job_id", [new_job_id(), "not-an-id", "job_", "job_%00"])
def test_an_unknown_job_is_a_404(client: FlaskClient, tenant: str, job_id: str) -> None:
    path = f"/v1/jobs/{job_id}"
    assert_problem(client.get(path, headers=tenant_headers(tenant)), 404, unquote(path))
    assert_problem(
        client.get(f"{path}/events", headers=tenant_headers(tenant)),
        404,
        unquote(f"{path}/events"),
    )


def test_another_tenants_job_is_a_404_like_an_unknown_one(client: FlaskClient, tenant: str) -> None:
    job_id = create(client, tenant, README_JOB)["id"]
    report_id = get_job(client, tenant, job_id)["pipeline"]["steps"][1]["id"]
    unknown = new_job_id()
    intruder = tenant_headers("tnt_intruder")

    for target in (job_id, report_id):
        theirs = client.get(f"/v1/jobs/{target}", headers=intruder)
        missing = client.get(f"/v1/jobs/{unknown}", headers=intruder)
        theirs_body = assert_problem(theirs, 404, f"/v1/jobs/{target}")
        missing_body = assert_problem(missing, 404, f"/v1/jobs/{unknown}")
        # Nothing in the answer tells "exists elsewhere" from "does not exist".
        assert theirs_body.keys() == missing_body.keys()
        assert theirs_body["title"] == missing_body["title"]
        assert theirs_body.get("detail", "").replace(target, "ID") == missing_body.get(
            "detail", ""
        ).replace(unknown, "ID")

        events = client.get(f"/v1/jobs/{target}/events", headers=intruder)
        assert_problem(events, 404, f"/v1/jobs/{target}/events")
        assert "events" not in events.get_json()

    assert list_jobs(client, "tnt_intruder")["jobs"] == []
    # The owner still sees it.
    assert get_job(client, tenant, job_id)["status"] == "succeeded"


# --- listing ---------------------------------------------------------------------------------


def test_listing_filters_by_status_and_type(
    client: FlaskClient, tenant: str, tmp_path: Path
) -> None:
    effects = [create(client, tenant, effect_job(tmp_path))["id"] for _ in range(2)]
    exploded = [create(client, tenant, {"type": "TEST_EXPLODES"}) for _ in range(2)]
    failed = [job["id"] for job in exploded]
    cancelled = [job["pipeline"]["steps"][1]["id"] for job in exploded]
    create(client, "tnt_other", effect_job(tmp_path))

    def ids(**query: Any) -> set[str]:
        return {job["id"] for job in list_jobs(client, tenant, **query)["jobs"]}

    assert ids() == {*effects, *failed, *cancelled}
    assert ids(status="succeeded") == set(effects)
    assert ids(status="failed") == set(failed)
    assert ids(status="cancelled") == set(cancelled)
    assert ids(status="running") == set()
    assert ids(type="TEST_EFFECT") == set(effects)
    assert ids(type="TEST_ECHO_UPSTREAM") == set(cancelled)
    assert ids(type="TEST_EXPLODES", status="failed") == set(failed)
    assert ids(type="TEST_EXPLODES", status="succeeded") == set()
    assert ids(type="NO_SUCH_TYPE") == set()
    for job in list_jobs(client, tenant, status="failed")["jobs"]:
        assert job["status"] == "failed"
        assert job["tenantId"] == tenant


@pytest.mark.parametrize("count", [7, 6, 3, 1])
def test_listing_pages_newest_first_without_gaps_or_repeats(
    client: FlaskClient, tenant: str, tmp_path: Path, count: int
) -> None:
    created = []
    for _ in range(count):
        created.append(create(client, tenant, effect_job(tmp_path))["id"])
        time.sleep(0.002)  # ids order by millisecond: keep creations in distinct ones

    seen: list[str] = []
    pages: list[int] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            query["cursor"] = cursor
        page = list_jobs(client, tenant, **query)
        pages.append(len(page["jobs"]))
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
        assert len(pages) <= count, "pagination does not end"

    assert seen == created[::-1]
    assert len(set(seen)) == len(seen)
    assert all(size == 3 for size in pages[:-1])
    assert 1 <= pages[-1] <= 3
    created_at = [get_job(client, tenant, job_id)["createdAt"] for job_id in seen]
    assert created_at == sorted(created_at, reverse=True)


def test_the_default_page_holds_everything_small(
    client: FlaskClient, tenant: str, tmp_path: Path
) -> None:
    for _ in range(4):
        create(client, tenant, effect_job(tmp_path))
    page = list_jobs(client, tenant)
    assert len(page["jobs"]) == 4
    assert page["nextCursor"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "finished"}, "status"),
        ({"stauts": "failed"}, "stauts"),
        ({"type": "A\x00"}, "type"),
        ({"cursor": "job_\x00"}, "cursor"),
    ],
)
def test_bad_list_queries_are_a_422(
    client: FlaskClient, tenant: str, query: dict[str, Any], field: str
) -> None:
    response = client.get("/v1/jobs", headers=tenant_headers(tenant), query_string=query)
    body = assert_problem(response, 422, "/v1/jobs")
    assert field in error_fields(body)


@pytest.mark.parametrize("limit", [1, 100])
def test_the_limits_of_limit_are_accepted(client: FlaskClient, tenant: str, limit: int) -> None:
    assert list_jobs(client, tenant, limit=limit) == {"jobs": [], "nextCursor": None}


# --- events ------------------------------------------------------------------------------


def test_events_tell_a_jobs_life_in_order(client: FlaskClient, tenant: str) -> None:
    job_id = create(client, tenant, README_JOB)["id"]
    events = events_of(client, tenant, job_id)

    assert transitions_of(events) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    stamps = [e["at"] for e in events]
    assert stamps == sorted(stamps)

    kinds = [e["kind"] for e in events]
    started = next(i for i, e in enumerate(events) if e["toStatus"] == "running")
    finished = next(i for i, e in enumerate(events) if e["toStatus"] == "succeeded")
    progress = [e for e in events if e["kind"] == "progress"]
    logs = [e for e in events if e["kind"] == "log"]
    assert progress
    assert logs
    for event in progress + logs:
        assert started < events.index(event) < finished
        assert event["attempt"] == 1
    assert progress[-1]["data"]["percent"] == 100.0
    assert progress[-1]["message"] == "1 room(s) sent for analysis"
    assert any(
        e["level"] == "INFO" and e["message"] == "sent 1 room(s) for DEEP analysis" for e in logs
    )
    assert kinds.count("transition") == 3


def test_a_later_step_waits_then_runs(client: FlaskClient, tenant: str) -> None:
    job = get_job(client, tenant, create(client, tenant, README_JOB)["id"])
    report_id = job["pipeline"]["steps"][1]["id"]
    assert transitions_of(events_of(client, tenant, report_id)) == [
        (None, "waiting"),
        ("waiting", "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]


def test_a_failure_and_its_cancelled_follower_are_in_the_events(
    client: FlaskClient, tenant: str
) -> None:
    created = create(client, tenant, {"type": "TEST_EXPLODES"})
    events = events_of(client, tenant, created["id"])
    assert transitions_of(events) == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "failed"),
    ]
    assert "the input can never work" in events[-1]["message"]
    follower = created["pipeline"]["steps"][1]["id"]
    assert transitions_of(events_of(client, tenant, follower)) == [
        (None, "waiting"),
        ("waiting", "cancelled"),
    ]


def test_events_can_be_read_after_a_known_one(client: FlaskClient, tenant: str) -> None:
    job_id = create(client, tenant, README_JOB)["id"]
    everything = events_of(client, tenant, job_id)
    assert events_of(client, tenant, job_id, after=everything[1]["id"]) == everything[2:]
    assert events_of(client, tenant, job_id, after=everything[-1]["id"]) == []
    assert events_of(client, tenant, job_id, limit=2) == everything[:2]


@pytest.mark.parametrize(
    "query", [{"after": -1}, {"after": 2**63}, {"limit": 0}, {"limit": "all"}, {"x": 1}]
)
def test_bad_event_queries_are_a_422(
    client: FlaskClient, tenant: str, query: dict[str, Any]
) -> None:
    job_id = create(client, tenant, {"type": "TEST_EXPLODES"})["id"]
    response = client.get(
        f"/v1/jobs/{job_id}/events", headers=tenant_headers(tenant), query_string=query
    )
    assert_problem(response, 422, f"/v1/jobs/{job_id}/events")


# --- every error is problem+json -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/v1/jobs", {"json": README_JOB}, 400),
        ("post", "/v1/jobs", {"data": "{", "content_type": "application/json", "tenant": 1}, 400),
        ("post", "/v1/jobs", {"json": {"type": "NOPE"}, "tenant": 1}, 422),
        ("get", "/v1/jobs/job_missing", {"tenant": 1}, 404),
        ("get", "/v1/jobs", {"query_string": {"limit": 0}, "tenant": 1}, 422),
        ("get", "/missing", {}, 404),
        ("patch", "/v1/jobs", {"tenant": 1}, 405),
    ],
)
def test_every_error_is_a_problem_document(
    client: FlaskClient, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    options = dict(kwargs)
    if options.pop("tenant", None):
        options["headers"] = tenant_headers("t1")
    response = getattr(client, method)(path, **options)
    body = assert_problem(response, status, path)
    assert set(body) <= PROBLEM_KEYS | {"detail", "errors"}
    for error in body.get("errors", []):
        assert set(error) == {"field", "message"}


# --- the app factory --------------------------------------------------------------------------


def test_the_app_refuses_to_start_in_production_without_a_secret(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCH_SERVICE_AUTH_SECRET", raising=False)
    settings = load_settings(env="production", database_url=sqlite_url, dispatch_mode="inline")
    with pytest.raises(ConfigurationError, match="ORCH_SERVICE_AUTH_SECRET"):
        api.create_app(settings)


def test_batch_create_records_every_job_in_one_go(client: FlaskClient, tenant: str) -> None:
    jobs = [{"type": "TEST_FLAKY"} for _ in range(5)] + [
        {"type": "ANALYZE_INSPECTION", "input": {"analysisMode": "QUICK", "roomIds": ["r"]}}
    ]
    response = client.post("/v1/jobs:batch", json={"jobs": jobs}, headers={"X-Tenant-ID": tenant})
    assert response.status_code == 201, response.get_data(as_text=True)
    created = response.get_json()["jobs"]
    assert [job["type"] for job in created] == [job["type"] for job in jobs]
    listed = client.get("/v1/jobs?limit=100", headers={"X-Tenant-ID": tenant}).get_json()["jobs"]
    assert {job["id"] for job in created} <= {job["id"] for job in listed}


def test_a_batch_with_one_bad_job_records_nothing(client: FlaskClient, tenant: str) -> None:
    jobs = [
        {"type": "TEST_FLAKY"},
        {"type": "ANALYZE_INSPECTION", "input": {"analysisMode": "FAST"}},
    ]
    response = client.post("/v1/jobs:batch", json={"jobs": jobs}, headers={"X-Tenant-ID": tenant})
    assert response.status_code == 422
    fields = {error["field"] for error in response.get_json()["errors"]}
    assert "jobs.1.input.analysisMode" in fields
    assert client.get("/v1/jobs", headers={"X-Tenant-ID": tenant}).get_json()["jobs"] == []
    too_many = client.post(
        "/v1/jobs:batch",
        json={"jobs": [{"type": "TEST_FLAKY"}] * 1001},
        headers={"X-Tenant-ID": tenant},
    )
    assert too_many.status_code == 422


def test_a_keyed_batch_repeated_answers_with_the_jobs_it_made(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    jobs = [{"type": "TEST_FLAKY"}, {"type": "TEST_EXPLODES"}]  # the second has a next step
    keyed = tenant_headers(tenant, **{"Idempotency-Key": "nightly-2026-11-24"})
    first = client.post("/v1/jobs:batch", json={"jobs": jobs}, headers=keyed)
    assert first.status_code == 201, first.get_data(as_text=True)
    recorded = row_counts(runtime)[0]
    again = client.post("/v1/jobs:batch", json={"jobs": jobs}, headers=keyed)
    assert again.status_code == 200, again.get_data(as_text=True)
    made = first.get_json()["jobs"]
    assert [job["id"] for job in again.get_json()["jobs"]] == [job["id"] for job in made]
    steps = [step["id"] for step in again.get_json()["jobs"][1]["pipeline"]["steps"]]
    assert steps == [step["id"] for step in made[1]["pipeline"]["steps"]]
    assert row_counts(runtime)[0] == recorded  # recorded once

    other_jobs = client.post("/v1/jobs:batch", json={"jobs": jobs[:1]}, headers=keyed)
    assert_problem(other_jobs, 409, "/v1/jobs:batch")
    other_tenant = tenant_headers(f"{tenant}x", **{"Idempotency-Key": "nightly-2026-11-24"})
    elsewhere = client.post("/v1/jobs:batch", json={"jobs": jobs}, headers=other_tenant)
    assert elsewhere.status_code == 201


def test_batch_keys_and_single_keys_never_meet(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    """A single job keyed like a batch's first item is not that batch's repeat, and a
    single key cannot be written in the batch items' own form."""
    single = client.post(
        "/v1/jobs",
        json={"type": "TEST_FLAKY"},
        headers=tenant_headers(tenant, **{"Idempotency-Key": "K#0"}),
    )
    assert single.status_code == 201
    batch = client.post(
        "/v1/jobs:batch",
        json={"jobs": [{"type": "TEST_FLAKY"}]},
        headers=tenant_headers(tenant, **{"Idempotency-Key": "K"}),
    )
    assert batch.status_code == 201, batch.get_data(as_text=True)
    assert batch.get_json()["jobs"][0]["id"] != single.get_json()["id"]
    recorded = row_counts(runtime)
    for key in ("K\x1f0", "K\n0", "K\u00850"):
        forged = client.post(
            "/v1/jobs",
            json={"type": "TEST_FLAKY", "idempotencyKey": key},
            headers=tenant_headers(tenant),
        )
        assert_problem(forged, 422, "/v1/jobs")
    assert row_counts(runtime) == recorded


@pytest.mark.parametrize("key", ["", "k" * 253])
def test_a_batch_key_leaves_room_for_the_jobs_places(
    client: FlaskClient, runtime: Runtime, tenant: str, key: str
) -> None:
    response = client.post(
        "/v1/jobs:batch",
        json={"jobs": [{"type": "TEST_FLAKY"}]},
        headers=tenant_headers(tenant, **{"Idempotency-Key": key}),
    )
    assert_problem(response, 422, "/v1/jobs:batch")
    assert row_counts(runtime) == (0, 0)


def test_a_repeat_of_a_keyed_batch_whose_jobs_were_archived_is_gone(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    keyed = tenant_headers(tenant, **{"Idempotency-Key": "old-import"})
    body = {"jobs": [{"type": "TEST_FLAKY"}]}
    assert client.post("/v1/jobs:batch", json=body, headers=keyed).status_code == 201
    with runtime.database.transaction() as session:
        session.execute(sa.update(Job).values(archived_at=utcnow()))
    assert_problem(client.post("/v1/jobs:batch", json=body, headers=keyed), 410, "/v1/jobs:batch")


def test_no_201_when_the_database_refuses_the_jobs_rows(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    """DESIGN.md: the API never answers 201 for a job that is not durably recorded. The
    database itself refuses the insert here (a trigger, as a full disk or a constraint
    would), for one job and for a batch: the answer is a problem, and nothing is left."""
    with runtime.database.engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    single = client.post("/v1/jobs", json=README_JOB, headers=tenant_headers(tenant))
    batch = client.post(
        "/v1/jobs:batch",
        json={"jobs": [README_JOB, README_JOB]},
        headers=tenant_headers(tenant),
    )
    for response in (single, batch):
        assert response.status_code == 500, response.get_json()
        assert response.mimetype == PROBLEM
    with runtime.database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(JobEvent)) == 0


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/jobs", {"type": "TEST_FLAKY", "delaySeconds": "5"}, "delaySeconds"),
        ("/v1/jobs", {"type": "TEST_FLAKY", "delaySeconds": True}, "delaySeconds"),
        ("/v1/jobs", {"type": "TEST_FLAKY", "subject": 7}, "subject"),
        ("/v1/jobs/retry", {"limit": "5"}, "limit"),
        ("/v1/jobs/retry", {"limit": 5.0}, "limit"),
        (
            "/v1/jobs:batch",
            {"jobs": [{"type": "TEST_FLAKY", "delaySeconds": "1"}]},
            "jobs.0.delaySeconds",
        ),
    ],
)
def test_bodies_take_json_types_strictly(
    client: FlaskClient, runtime: Runtime, tenant: str, path: str, body: Any, field: str
) -> None:
    """A string for a number, a number for a boolean: a 422 naming the field, not a guess."""
    problem = assert_problem(
        client.post(path, json=body, headers=tenant_headers(tenant)), 422, path
    )
    assert field in {error["field"] for error in problem["errors"]}
    assert row_counts(runtime) == (0, 0)


@pytest.mark.parametrize("cursor", ["garbage", "job_1", "job_" + "z" * 28, "9" * 40])
def test_a_cursor_that_is_no_job_id_is_a_422(client: FlaskClient, tenant: str, cursor: str) -> None:
    response = client.get(
        "/v1/jobs", headers=tenant_headers(tenant), query_string={"cursor": cursor}
    )
    problem = assert_problem(response, 422, "/v1/jobs")
    assert [error["field"] for error in problem["errors"]] == ["cursor"]


def test_options_on_bulk_retry_advertises_post_only(client: FlaskClient, tenant: str) -> None:
    """`/v1/jobs/retry` is not a job's path: OPTIONS names its own methods only."""
    response = client.open("/v1/jobs/retry", method="OPTIONS", headers=tenant_headers(tenant))
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}
    assert client.get("/v1/jobs/retry", headers=tenant_headers(tenant)).status_code == 405


def test_a_lone_job_keyed_before_migration_0011_answers_either_repeat(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    """Migration 0011 keys a job recorded alone under `K#0` apart: it may have been a
    batch of one under `K` or a single job under `K#0`, and a repeat of either finds it."""
    body = {"type": "TEST_FLAKY", "input": {"failTimes": 0}}
    made = client.post("/v1/jobs", json=body, headers=tenant_headers(tenant)).get_json()
    with runtime.database.transaction() as session:  # as the migration leaves it
        digest = NewJob(tenant_id=tenant, type="TEST_FLAKY", input={"failTimes": 0}).digest()
        session.execute(
            sa.update(Job)
            .where(Job.id == made["id"])
            .values(idempotency_key="solo\x1e0", request_digest=digest)
        )
    single = client.post(
        "/v1/jobs", json=body, headers=tenant_headers(tenant, **{"Idempotency-Key": "solo#0"})
    )
    batch = client.post(
        "/v1/jobs:batch",
        json={"jobs": [body]},
        headers=tenant_headers(tenant, **{"Idempotency-Key": "solo"}),
    )
    assert (single.status_code, single.get_json()["id"]) == (200, made["id"])
    assert (batch.status_code, batch.get_json()["jobs"][0]["id"]) == (200, made["id"])


def test_the_readme_request_is_valid_by_the_openapi_document(client: FlaskClient) -> None:
    """A client that checks its bodies against the document sends the README's own
    request (`inspectionId`, the other name of `subject`); both names at once it refuses,
    as the API does. The answer's `Location` is declared, and only JSON Schema's words."""
    document = client.get("/openapi.json").get_json()
    new_job = {"$ref": "#/components/schemas/NewJob", "components": document["components"]}
    jsonschema.validate(README_JOB, new_job)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**README_JOB, "subject": "insp_1"}, new_job)
    created = document["paths"]["/v1/jobs"]["post"]["responses"]["201"]
    assert "Location" in created["headers"]
    jsonschema.Draft202012Validator.check_schema(new_job)
    assert '"ge"' not in json.dumps(document) and '"le"' not in json.dumps(document)


def test_an_idempotency_key_guards_the_body_as_sent(
    client: FlaskClient, runtime: Runtime, tenant: str
) -> None:
    """As Stripe's keys do: the same body again is the same request (200), another body a
    409, even one that makes the same job (its input's defaults spelled out). Judging by
    the job it makes instead would turn an exact repeat into a 409 whenever validation
    does not give the same input twice (a default taken from the clock, a field with a
    default added by a deploy between the two). A priority of 5, the default, and none
    are the same body: digests made before priorities existed stay valid."""
    keyed = tenant_headers(tenant, **{"Idempotency-Key": "as-sent"})
    first = client.post("/v1/jobs", json={"type": "TEST_FLAKY"}, headers=keyed)
    again = client.post("/v1/jobs", json={"type": "TEST_FLAKY"}, headers=keyed)
    default_priority = client.post(
        "/v1/jobs", json={"type": "TEST_FLAKY", "priority": 5}, headers=keyed
    )
    assert (first.status_code, again.status_code, default_priority.status_code) == (201, 200, 200)
    assert again.get_json()["id"] == default_priority.get_json()["id"] == first.get_json()["id"]
    spelled = {"type": "TEST_FLAKY", "input": {"failTimes": 0}}
    assert client.post("/v1/jobs", json=spelled, headers=keyed).status_code == 409
    with runtime.database.session() as session:
        stored = session.get(Job, first.get_json()["id"])
        assert stored is not None and stored.input == {"failTimes": 0}  # as the job runs it


def test_a_join_shows_its_children_and_a_child_its_join(client: FlaskClient, tenant: str) -> None:
    created = create(client, tenant, {"type": "TEST_FAN_OUT", "input": {"items": ["a", "b"]}})
    head = client.get(f"/v1/jobs/{created['id']}", headers=tenant_headers(tenant)).get_json()
    join = head["pipeline"]["steps"][1]
    assert join["children"] == {"succeeded": 2} and head["pipeline"]["steps"][0]["children"] is None
    children = client.get(
        "/v1/jobs?type=TEST_FAN_CHILD", headers=tenant_headers(tenant)
    ).get_json()["jobs"]
    assert {c["joinId"] for c in children} == {join["id"]}
    assert {c["upstreamId"] for c in children} == {created["id"]}


def test_a_joins_children_come_in_spawn_order_a_page_at_a_time(
    client: FlaskClient, tenant: str
) -> None:
    items = [f"r{i}" for i in range(5)]
    created = create(client, tenant, {"type": "TEST_FAN_OUT", "input": {"items": items}})
    join = created["pipeline"]["steps"][1]["id"]
    seen, after = [], -1
    while True:
        page = client.get(
            f"/v1/jobs/{join}/children?limit=2&after={after}", headers=tenant_headers(tenant)
        ).get_json()
        assert page["jobId"] == join and len(page["children"]) <= 2
        seen += [child["result"]["item"] for child in page["children"]]
        if page["nextAfter"] is None:
            break
        after = page["nextAfter"]
    assert seen == [i.upper() for i in items]
    other = client.get(f"/v1/jobs/{join}/children", headers=tenant_headers("tnt_other"))
    assert other.status_code == 404
    empty = client.get(f"/v1/jobs/{created['id']}/children", headers=tenant_headers(tenant))
    assert empty.get_json() == {"jobId": created["id"], "children": [], "nextAfter": None}
