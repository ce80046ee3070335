"""`GET /v1/stats`: the caller's tenant's jobs in figures, none of another tenant's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from orchestrator import job_stats
from orchestrator.ids import new_job_id


def _create(client: FlaskClient, tenant: str, body: dict[str, Any]) -> None:
    response = client.post("/v1/jobs", json=body, headers={"X-Tenant-ID": tenant})
    assert response.status_code == 201, response.get_json()


def _stats(client: FlaskClient, tenant: str, query: str = "") -> dict[str, Any]:
    response = client.get(f"/v1/stats{query}", headers={"X-Tenant-ID": tenant})
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


@pytest.fixture
def ran(client: FlaskClient, tenant: str, tmp_path: Path) -> None:
    """Inline dispatch runs each job in its POST: two successes of 0.2 s and one
    permanent failure (whose next step is then cancelled)."""
    for _ in range(2):
        effect = {"effectFile": str(tmp_path / "effects"), "sleep": 0.2}
        _create(client, tenant, {"type": "TEST_EFFECT", "input": effect})
    _create(client, tenant, {"type": "TEST_EXPLODES", "input": {}})
    _create(client, "tnt_someone_else", {"type": "TEST_EXPLODES", "input": {}})


@pytest.mark.usefixtures("ran")
def test_counts_rates_and_times_of_the_callers_jobs_only(client: FlaskClient, tenant: str) -> None:
    stats = _stats(client, tenant)
    assert stats["tenantId"] == tenant
    assert stats["byStatus"] == {
        "queued": 0, "running": 0, "retrying": 0, "waiting": 0,
        "succeeded": 2, "failed": 1, "cancelled": 1,
    }  # fmt: skip
    window = stats["window"]
    assert window["seconds"] == 3600 and window["jobs"] == 4 and not window["truncated"]
    assert window["byType"] == {
        "TEST_ECHO_UPSTREAM": {"cancelled": 1},
        "TEST_EFFECT": {"succeeded": 2},
        "TEST_EXPLODES": {"failed": 1},
    }
    assert window["failureRate"] == pytest.approx(1 / 3, abs=1e-4)
    runs, waits = window["runSeconds"], window["queueWaitSeconds"]
    assert 0.2 <= runs["p95"] < 5  # the slowest of three: a 0.2 s success
    assert 0 <= runs["p50"] <= runs["p95"]
    assert 0 <= waits["p50"] <= waits["p95"] < 5


def test_a_tenant_without_jobs_gets_zeros_and_nulls(client: FlaskClient, tenant: str) -> None:
    window = _stats(client, tenant, "?windowSeconds=60")["window"]
    assert window["jobs"] == 0 and window["byType"] == {} and window["failureRate"] is None
    assert window["runSeconds"] == {"p50": None, "p95": None}


@pytest.mark.usefixtures("ran")
def test_more_jobs_than_are_read_says_so(
    client: FlaskClient, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_stats, "MAX_ROWS", 2)
    window = _stats(client, tenant)["window"]
    assert window["jobs"] == 2 and window["truncated"]


@pytest.mark.parametrize("query", ["?windowSeconds=abc", "?windowSeconds=10", "?window=60"])
def test_a_bad_window_is_a_422_problem(client: FlaskClient, tenant: str, query: str) -> None:
    response = client.get(f"/v1/stats{query}", headers={"X-Tenant-ID": tenant})
    assert response.status_code == 422  # as the other queries' bad parameters
    assert response.content_type == "application/problem+json"


def test_without_a_tenant_nothing_is_told(client: FlaskClient) -> None:
    assert client.get("/v1/stats").status_code in (400, 401)


def test_the_window_starts_at_the_first_id_of_its_first_millisecond() -> None:
    moment = datetime(2026, 12, 5, 1, 0, 0, 123000, tzinfo=UTC)
    millis = int(moment.timestamp() * 1000)
    assert new_job_id(millis) >= job_stats.first_id_at(moment)
    assert new_job_id(millis - 1) < job_stats.first_id_at(moment)
    assert new_job_id(millis + 1) >= job_stats.first_id_at(moment + timedelta(milliseconds=1))


def test_the_openapi_document_describes_it(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/v1/stats"]["get"]
    assert [p["name"] for p in operation["parameters"]] == ["windowSeconds"]
    assert "200" in operation["responses"]


def test_percentiles_are_nearest_rank_over_the_waits_that_ended() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    due = now - timedelta(minutes=10)

    def row(status: str, wait: float | None, run: float | None) -> tuple[object, ...]:
        started = None if wait is None else due + timedelta(seconds=wait)
        finished = None if run is None or started is None else started + timedelta(seconds=run)
        return ("T", status, due, started, finished)

    rows = [row("succeeded", w, r) for w, r in [(1, 5), (2, 4), (3, 3), (4, 2), (10, 1)]]
    # Retrying: its start is from before its present wait began (due later than it).
    rows.append(("T", "retrying", now, due, None))
    rows.append(row("failed", 6, 9))
    window = job_stats._window(now - timedelta(hours=1), 3600, rows, truncated=False)  # type: ignore[arg-type]
    assert window.queue_wait == job_stats.Spread(p50=3.0, p95=10.0)  # of 1 2 3 4 6 10
    assert window.run_time == job_stats.Spread(p50=3.0, p95=9.0)  # of 1 2 3 4 5 9
    assert window.failure_rate == pytest.approx(1 / 6, abs=1e-4)
