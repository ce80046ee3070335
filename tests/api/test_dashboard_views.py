"""The dashboard's pages through Flask's test client, on a real SQLite database.

Dispatch is inline (see conftest.py): a job's pipeline has run by the time its POST answers,
so the pages can be checked straight after creating jobs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import api
from api import dashboard, dashboard_chart
from orchestrator.models import Job
from orchestrator.runtime import Runtime
from orchestrator.service import NewJob
from orchestrator.settings import load_settings
from tests import REAL_SECRET
from tests.recording import recording_service

ANALYZE = {
    "type": "ANALYZE_INSPECTION",
    "inspectionId": "insp_1",
    "input": {"analysisMode": "QUICK", "roomIds": ["room_1", "room_2"]},
}
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def create(client: FlaskClient, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body, headers={"X-Tenant-ID": tenant})
    assert response.status_code == 201, response.get_json()
    job: dict[str, Any] = response.get_json()
    return job


def gated(client: FlaskClient, tenant: str, gate: Path, **extra: Any) -> dict[str, Any]:
    job = create(client, tenant, {"type": "TEST_GATED", "input": {"gateFile": str(gate)}, **extra})
    assert status_of(client, tenant, job["id"]) == "failed"
    return job


def page(client: FlaskClient, tenant: str, path: str, status: int = 200) -> str:
    response = client.get(path, headers={"X-Tenant-ID": tenant})
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def counts(html: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-count="(\w+)">(\d+)<', html)}


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-job-id="(job_\w+)"', html)


def token(client: FlaskClient, tenant: str, path: str = "/dashboard/dead-letters") -> str:
    found = TOKEN.search(page(client, tenant, path))
    assert found is not None
    return found.group(1)


def post(
    client: FlaskClient, tenant: str, path: str, data: dict[str, str] | None = None
) -> TestResponse:
    return client.post(path, data=data or {}, headers={"X-Tenant-ID": tenant})


def status_of(client: FlaskClient, tenant: str, job_id: str) -> str:
    response = client.get(f"/v1/jobs/{job_id}", headers={"X-Tenant-ID": tenant})
    status: str = response.get_json()["status"]
    return status


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "gate"


# -- pages -------------------------------------------------------------------------------------


def test_overview_shows_counts_chart_and_newest_jobs_first(
    client: FlaskClient, tenant: str, gate: Path
) -> None:
    analysis = create(client, tenant, ANALYZE)
    failed = gated(client, tenant, gate)
    html = page(client, tenant, "/dashboard")
    # A succeeded inspection (its analysis, two room analyses, its report); a failed gate
    # whose next step was cancelled.
    assert counts(html) == {
        "total": 6,
        "queued": 0,
        "running": 0,
        "retrying": 0,
        "waiting": 0,
        "succeeded": 4,
        "failed": 1,
        "cancelled": 1,
    }
    steps = [s["id"] for s in analysis["pipeline"]["steps"] + failed["pipeline"]["steps"]]
    rooms = page(client, tenant, "/dashboard?type=ANALYZE_ROOM")
    assert rows(html) == sorted(steps + rows(rooms), reverse=True) and len(rows(rooms)) == 2
    assert '<svg class="chart"' in html
    assert html.count('class="seg seg-succeeded"') == 1  # all in this minute: one bar
    assert re.search(r"succeeded <strong>4</strong>", html)
    assert re.search(r"failed <strong>1</strong>", html)
    assert f'<span class="tenant" title="Tenant">{tenant}</span>' in html


def test_another_tenants_jobs_are_not_listed(client: FlaskClient, tenant: str) -> None:
    create(client, "someone_else", ANALYZE)
    html = page(client, tenant, "/dashboard")
    assert rows(html) == []
    assert counts(html)["total"] == 0
    assert "No jobs" in html


def test_filters_by_status_and_type(client: FlaskClient, tenant: str, gate: Path) -> None:
    analysis = create(client, tenant, ANALYZE)
    failed = gated(client, tenant, gate)
    only_failed = page(client, tenant, "/dashboard?status=failed")
    assert rows(only_failed) == [failed["id"]]
    assert '<option value="failed" selected>' in only_failed
    by_type = page(client, tenant, "/dashboard?type=ANALYZE_INSPECTION&status=")
    assert rows(by_type) == [analysis["id"]]
    assert rows(page(client, tenant, "/dashboard?type=NOPE")) == []
    assert rows(page(client, tenant, "/dashboard?status=succeeded&type=TEST_GATED")) == []


def test_trailing_slash_redirects_to_the_overview(client: FlaskClient, tenant: str) -> None:
    response = client.get("/dashboard/?status=failed", headers={"X-Tenant-ID": tenant})
    assert response.status_code == 308
    assert response.headers["Location"] == "/dashboard?status=failed"
    # Keys url_for would take for its own options are just part of the query.
    odd = client.get("/dashboard/?_method=PUT&_external=1", headers={"X-Tenant-ID": tenant})
    assert (odd.status_code, odd.headers["Location"]) == (308, "/dashboard?_method=PUT&_external=1")


def test_invalid_filter_is_a_400_page(client: FlaskClient, tenant: str) -> None:
    html = page(client, tenant, "/dashboard?status=bogus", status=400)
    assert "Invalid filter" in html


def test_refresh_fragment_keeps_the_filters(client: FlaskClient, tenant: str, gate: Path) -> None:
    create(client, tenant, ANALYZE)
    failed = gated(client, tenant, gate)
    html = page(client, tenant, "/dashboard?status=failed&type=TEST_GATED")
    assert 'data-refresh="/dashboard/jobs?status=failed&amp;type=TEST_GATED"' in html
    fragment = page(client, tenant, "/dashboard/jobs?status=failed&type=TEST_GATED")
    assert "<html" not in fragment
    assert rows(fragment) == [failed["id"]]
    summary = page(client, tenant, "/dashboard/summary")
    assert counts(summary)["failed"] == 1


def test_cursor_pagination_walks_older_pages(
    client: FlaskClient, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "PAGE_SIZE", 2)
    ids = [create(client, tenant, {"type": "TEST_ECHO_UPSTREAM"})["id"] for _ in range(5)]
    seen: list[str] = []
    path: str | None = "/dashboard?type=TEST_ECHO_UPSTREAM"
    while path is not None:
        html = page(client, tenant, path)
        seen += rows(html)
        older = re.search(r'href="([^"]+)">Older →', html)
        path = older.group(1).replace("&amp;", "&") if older else None
        if path is not None:
            assert "type=TEST_ECHO_UPSTREAM" in path and "cursor=" in path
    assert seen == sorted(ids, reverse=True)
    assert "← Newest" in html


def test_job_page_shows_fields_pipeline_events_and_error(
    client: FlaskClient, tenant: str, gate: Path
) -> None:
    failed = gated(client, tenant, gate, subject="insp_42")
    html = page(client, tenant, f"/dashboard/jobs/{failed['id']}")
    assert "TEST_GATED" in html and "insp_42" in html
    downstream = failed["pipeline"]["steps"][1]["id"]
    assert f'href="/dashboard/jobs/{downstream}">TEST_ECHO_UPSTREAM</a>' in html
    assert "PermanentError" in html and "is missing" in html
    assert re.search(r'<pre class="code traceback">Traceback', html)
    assert 'class="kind kind-transition"' in html  # the events table
    assert "Retry</button>" in html and "Cancel</button>" not in html


def test_job_page_of_a_succeeded_job_has_no_buttons(client: FlaskClient, tenant: str) -> None:
    analysis = create(client, tenant, ANALYZE)
    html = page(client, tenant, f"/dashboard/jobs/{analysis['id']}")
    assert 'value="100.0"' in html  # the progress bar, full
    assert "2 room(s) sent for analysis" in html  # a progress event
    assert "Retry</button>" not in html and "Cancel</button>" not in html
    assert "&#34;roomIds&#34;" in html  # the result, escaped JSON


def test_queued_job_page_offers_cancel_and_refreshes_itself(
    client: FlaskClient, tenant: str
) -> None:
    later = create(client, tenant, {**ANALYZE, "delaySeconds": 3600})
    html = page(client, tenant, f"/dashboard/jobs/{later['id']}")
    assert "Cancel</button>" in html and "Retry</button>" not in html
    assert f'data-refresh="/dashboard/jobs/{later["id"]}/live"' in html
    fragment = page(client, tenant, f"/dashboard/jobs/{later['id']}/live")
    assert "<html" not in fragment and "Cancel</button>" in fragment


def test_another_tenants_job_is_a_404_page(client: FlaskClient, tenant: str) -> None:
    theirs = create(client, "someone_else", ANALYZE)
    html = page(client, tenant, f"/dashboard/jobs/{theirs['id']}", status=404)
    assert "Job not found" in html
    page(client, tenant, "/dashboard/jobs/job_unknown", status=404)
    page(client, tenant, f"/dashboard/jobs/{theirs['id']}/live", status=404)


def test_archived_job_is_a_410_page(client: FlaskClient, tenant: str, runtime: Runtime) -> None:
    job = create(client, tenant, ANALYZE)
    with runtime.database.transaction() as session:
        session.execute(
            sa.update(Job).where(Job.id == job["id"]).values(archived_at=datetime.now(UTC))
        )
    assert "Job archived" in page(client, tenant, f"/dashboard/jobs/{job['id']}", status=410)


DASHBOARD_PAGES = ["/dashboard", "/dashboard/jobs", "/dashboard/summary", "/dashboard/dead-letters"]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("path", DASHBOARD_PAGES)
def test_a_browser_in_development_picks_its_tenant(
    client: FlaskClient, tenant: str, path: str
) -> None:
    """`make run`: a browser sends no X-Tenant-ID; the dashboard asks for the tenant,
    lists the ones with jobs, and remembers the choice in the session."""
    mine = create(client, tenant, ANALYZE)
    theirs = create(client, "tnt_other", ANALYZE)
    asked = client.get(path)
    assert asked.status_code == 302
    assert asked.headers["Location"].startswith("/dashboard/tenant?next=")
    picker = client.get(asked.headers["Location"]).get_data(as_text=True)
    assert f'data-tenant="{tenant}"' in picker and 'data-tenant="tnt_other"' in picker
    refused = client.post(
        "/dashboard/tenant", data={"tenant": "bad tenant!", "csrf_token": _csrf(picker)}
    )
    assert refused.status_code == 400 and "must match" in refused.get_data(as_text=True)
    # The system's own tenant (archival's jobs, which count every tenant's) is nobody's.
    system = client.application.extensions["orchestrator"].settings.system_tenant
    client.application.extensions["orchestrator"].service.create(
        NewJob(tenant_id=system, type="ANALYZE_INSPECTION", input=ANALYZE["input"])
    )
    picker = client.get(asked.headers["Location"]).get_data(as_text=True)
    assert f'data-tenant="{system}"' not in picker
    smuggled = client.post(
        "/dashboard/tenant", data={"tenant": system, "csrf_token": _csrf(picker)}
    )
    assert smuggled.status_code == 400 and "is the system" in smuggled.get_data(as_text=True)
    chosen = client.post(
        "/dashboard/tenant", data={"tenant": tenant, "next": path, "csrf_token": _csrf(picker)}
    )
    assert chosen.status_code == 303 and chosen.headers["Location"] == path
    assert client.get(path).status_code == 200
    overview = client.get("/dashboard").get_data(as_text=True)
    assert mine["id"] in overview and theirs["id"] not in overview
    assert client.get(f"/dashboard/jobs/{theirs['id']}").status_code == 404
    # A header still names the tenant, whatever was picked.
    other = client.get("/dashboard", headers={"X-Tenant-ID": "tnt_other"}).get_data(as_text=True)
    assert theirs["id"] in other and mine["id"] not in other


def test_picking_needs_the_forms_token(client: FlaskClient, tenant: str) -> None:
    client.get("/dashboard/tenant")
    assert client.post("/dashboard/tenant", data={"tenant": tenant}).status_code == 400
    assert client.get("/dashboard").status_code == 302  # nothing was picked


@pytest.mark.parametrize("path", DASHBOARD_PAGES)
def test_where_tenants_are_proven_no_identity_is_a_friendly_400_page(
    sqlite_url: str, path: str
) -> None:
    """Behind a gateway (its secret set), a tenant comes from the gateway only."""
    settings = load_settings(
        env="development",
        database_url=sqlite_url,
        dispatch_mode="inline",
        gateway_secret=REAL_SECRET,
    )
    runtime = Runtime.build(settings)
    try:
        client = api.create_app(runtime=runtime).test_client()
        response = client.get(path, headers={"X-Gateway-Secret": REAL_SECRET})
        assert response.status_code == 400
        assert response.mimetype == "text/html"
        html = response.get_data(as_text=True)
        assert "Missing tenant" in html and "X-Tenant-ID" in html
        assert client.get("/dashboard/tenant").status_code == 404
        assert client.post("/dashboard/tenant", data={"tenant": "x"}).status_code in (400, 404)
    finally:
        runtime.database.dispose()


def test_dead_letters_lists_failed_jobs_with_error(
    client: FlaskClient, tenant: str, gate: Path
) -> None:
    create(client, tenant, ANALYZE)
    failed = gated(client, tenant, gate)
    exploded = create(client, tenant, {"type": "TEST_EXPLODES"})
    html = page(client, tenant, "/dashboard/dead-letters")
    assert rows(html) == [exploded["id"], failed["id"]]
    assert "the input can never work" in html and "is missing" in html
    assert counts(html) == {"failed": 2}
    assert rows(page(client, tenant, "/dashboard/dead-letters?type=TEST_GATED")) == [failed["id"]]


# -- buttons -----------------------------------------------------------------------------------


def test_post_without_or_with_a_wrong_csrf_token_is_400(
    client: FlaskClient, tenant: str, gate: Path
) -> None:
    failed = gated(client, tenant, gate)
    gate.touch()
    path = f"/dashboard/jobs/{failed['id']}/retry"
    response = post(client, tenant, path)  # no session token yet, none given
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert "Invalid form token" in response.get_data(as_text=True)
    token(client, tenant)  # the session now has a token
    assert post(client, tenant, path).status_code == 400
    assert post(client, tenant, path, {"csrf_token": "wrong"}).status_code == 400
    assert post(client, tenant, "/dashboard/dead-letters/retry").status_code == 400
    assert status_of(client, tenant, failed["id"]) == "failed"


def test_retry_button_retries_and_redirects_with_a_message(
    client: FlaskClient, tenant: str, gate: Path
) -> None:
    failed = gated(client, tenant, gate)
    gate.touch()
    csrf = token(client, tenant, f"/dashboard/jobs/{failed['id']}")
    response = post(client, tenant, f"/dashboard/jobs/{failed['id']}/retry", {"csrf_token": csrf})
    assert response.status_code == 303
    assert response.headers["Location"] == f"/dashboard/jobs/{failed['id']}"
    assert status_of(client, tenant, failed["id"]) == "succeeded"
    html = page(client, tenant, f"/dashboard/jobs/{failed['id']}")
    assert "Retry requested" in html
    assert '<span class="badge badge-succeeded">succeeded</span>' in html


def test_retry_of_a_succeeded_job_flashes_the_conflict(client: FlaskClient, tenant: str) -> None:
    job = create(client, tenant, ANALYZE)
    csrf = token(client, tenant)
    response = post(client, tenant, f"/dashboard/jobs/{job['id']}/retry", {"csrf_token": csrf})
    assert response.status_code == 303
    html = page(client, tenant, f"/dashboard/jobs/{job['id']}")
    assert 'class="flash flash-error"' in html and "only failed or cancelled" in html


def test_cancel_button_cancels(client: FlaskClient, tenant: str) -> None:
    later = create(client, tenant, {**ANALYZE, "delaySeconds": 3600})
    csrf = token(client, tenant)
    response = post(client, tenant, f"/dashboard/jobs/{later['id']}/cancel", {"csrf_token": csrf})
    assert response.status_code == 303
    assert status_of(client, tenant, later["id"]) == "cancelled"
    html = page(client, tenant, response.headers["Location"])
    assert "Cancelled" in html and "Retry</button>" in html


def test_cancel_of_another_tenants_job_is_404(client: FlaskClient, tenant: str) -> None:
    theirs = create(client, "someone_else", {**ANALYZE, "delaySeconds": 3600})
    csrf = token(client, tenant)
    response = post(client, tenant, f"/dashboard/jobs/{theirs['id']}/cancel", {"csrf_token": csrf})
    assert response.status_code == 404
    assert status_of(client, "someone_else", theirs["id"]) == "queued"


def test_retry_all_retries_the_dead_letters_of_a_type(
    client: FlaskClient, tenant: str, gate: Path
) -> None:
    first, second = gated(client, tenant, gate), gated(client, tenant, gate)
    exploded = create(client, tenant, {"type": "TEST_EXPLODES"})
    gate.touch()
    csrf = token(client, tenant)
    data = {"csrf_token": csrf, "type": "TEST_GATED"}
    response = post(client, tenant, "/dashboard/dead-letters/retry", data)
    assert response.status_code == 303
    assert response.headers["Location"] == "/dashboard/dead-letters?type=TEST_GATED"
    assert status_of(client, tenant, first["id"]) == "succeeded"
    assert status_of(client, tenant, second["id"]) == "succeeded"
    assert status_of(client, tenant, exploded["id"]) == "failed"
    html = page(client, tenant, response.headers["Location"])
    assert "Retry requested for 2 jobs" in html
    assert rows(html) == []
    response = post(client, tenant, "/dashboard/dead-letters/retry", {"csrf_token": csrf})
    assert response.headers["Location"] == "/dashboard/dead-letters"
    assert status_of(client, tenant, exploded["id"]) == "failed"  # failed again, for good
    assert "Retry requested for 1 job" in page(client, tenant, "/dashboard/dead-letters")


# -- user data ---------------------------------------------------------------------------------


def test_user_data_is_escaped_everywhere(client: FlaskClient, tenant: str) -> None:
    evil = "<script>alert('x')</script>"
    job = create(
        client, tenant, {"type": "TEST_GATED", "subject": evil, "input": {"gateFile": evil}}
    )
    for path in ("/dashboard", "/dashboard/dead-letters", f"/dashboard/jobs/{job['id']}"):
        html = page(client, tenant, path)
        assert "<script>alert" not in html
        assert "&lt;script&gt;" in html
    response = client.get("/dashboard", headers={"X-Tenant-ID": tenant})
    assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'self'
    assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]


def test_static_assets_are_served_locally(client: FlaskClient, tenant: str) -> None:
    html = page(client, tenant, "/dashboard")
    assets = re.findall(r'(?:href|src)="(/dashboard/static/[^"]+)"', html)
    assert len(assets) == 3
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200
        assert response.headers.get("Cache-Control") != "no-store"
        response.close()
    response = client.get("/dashboard", headers={"X-Tenant-ID": tenant})
    assert response.headers["Cache-Control"] == "no-store"  # it holds the form token
    assert "http://" not in html and "https://" not in html


# -- the chart ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peak", "top"), [(0, 4), (3, 4), (5, 10), (10, 10), (11, 20), (21, 50), (51, 100), (101, 200)]
)
def test_axis_top(peak: int, top: int) -> None:
    assert dashboard_chart.axis_top(peak) == top


def test_chart_stacks_statuses_per_minute() -> None:
    start = datetime(2024, 1, 1, 11, 58, tzinfo=UTC)
    buckets = [
        (start, {"succeeded": 2, "failed": 1, "cancelled": 1}),
        (start + timedelta(minutes=1), {"succeeded": 0, "failed": 0, "cancelled": 0}),
        (start + timedelta(minutes=2), {"succeeded": 4, "failed": 0, "cancelled": 0}),
    ]
    chart = dashboard_chart.chart_of(buckets)
    assert chart.top == 4 and chart.totals == {"succeeded": 6, "failed": 1, "cancelled": 1}
    first, empty, full = chart.bars
    assert [s.status for s in first.segments] == ["succeeded", "failed", "cancelled"]
    assert first.segments[0].y + first.segments[0].height == dashboard_chart.PLOT_BOTTOM
    assert first.segments[-1].y == pytest.approx(
        dashboard_chart.PLOT_BOTTOM - dashboard_chart.PLOT_HEIGHT
    )
    assert empty.segments == [] and full.segments[0].height == dashboard_chart.PLOT_HEIGHT
    assert chart.ticks == [(full.x + full.width / 2, "12:00")]


def test_the_tenant_sees_its_backlog_and_each_waiting_jobs_place_in_line(
    runtime: Runtime, tenant: str
) -> None:
    """Against a window of one message: the first job is admitted, the next two wait their
    turn, and a higher-priority one created last goes before them."""
    service = recording_service(runtime.database, runtime.registry, runtime.settings, window=1)
    runtime.service, runtime.admission = service, service.admission
    client = api.create_app(runtime=runtime).test_client()
    echo = {"type": "TEST_ECHO_UPSTREAM"}
    first, second, third = (create(client, tenant, echo)["id"] for _ in range(3))
    urgent = create(client, tenant, {**echo, "priority": 9})["id"]

    summary = page(client, tenant, "/dashboard/summary")
    assert 'data-backlog="4"' in summary
    assert "1 in the workers' queues, 3 waiting for their turn" in summary

    def place(job_id: str) -> str | None:
        html = page(client, tenant, f"/dashboard/jobs/{job_id}")
        found = re.search(r'data-position="(\w+)"', html)
        return found and found.group(1)

    # The admitted job goes first whatever comes after it; then priority, then age.
    assert [place(j) for j in (first, urgent, second, third)] == ["admitted", "1", "2", "3"]


def test_a_fan_out_shows_its_children_as_one_node_with_counts(
    client: FlaskClient, tenant: str
) -> None:
    analysis = create(client, tenant, ANALYZE)  # two rooms: two ANALYZE_ROOM children
    html = page(client, tenant, f"/dashboard/jobs/{analysis['id']}")
    join = analysis["pipeline"]["steps"][1]["id"]
    node = re.search(rf'data-children-of="{join}">(.*?)</li>', html, re.S)
    assert node is not None and "2 child jobs" in node.group(1)
    assert 'data-count="succeeded">2 succeeded' in node.group(1)
    room = client.get("/v1/jobs?type=ANALYZE_ROOM", headers={"X-Tenant-ID": tenant}).get_json()
    child = page(client, tenant, f"/dashboard/jobs/{room['jobs'][0]['id']}")
    assert f'spawned by <a href="/dashboard/jobs/{analysis["id"]}"' in child
    assert f'joined by <a href="/dashboard/jobs/{join}"' in child


def test_a_workflow_is_drawn_by_stage_with_each_steps_status(
    client: FlaskClient, tenant: str
) -> None:
    body = {"type": "TEST_FLOW", "input": {"items": ["a", "b", "c"], "failItems": ["c"]}}
    flow = create(client, tenant, body)
    html = page(client, tenant, f"/dashboard/jobs/{flow['id']}")
    panel = re.search(r'data-workflow="TEST_FLOW">(.*?)</section>', html, re.S)
    assert panel is not None
    drawn = panel.group(1)
    assert 'badge-failed">failed' in drawn  # the run as a whole
    stages = re.findall(r'<li class="stage">(.*?)</li>', drawn, re.S)
    assert [re.findall(r'data-step="([^"]+)"', stage) for stage in stages] == [
        ["prepare"],
        ["items"],
        ["summary"],
    ]
    items = re.search(r'data-step="items">(.*?)</div>\s*</div>', stages[1], re.S)
    assert items is not None
    assert "map over prepare.items, 2 at once" in stages[1]
    assert 'data-count="succeeded">2 succeeded' in stages[1]
    assert 'data-count="failed">1 failed' in stages[1]
    assert "not started" in stages[2] and "after items" in stages[2]
    prepare = re.search(r'href="/dashboard/jobs/([^"]+)">prepare<', stages[0])
    assert prepare is not None  # a single step links to its job
    # The workflow's first job stands for the run: failed, so it offers a retry.
    heading = re.search(r"<h1>(.*?)</h1>", html, re.S)
    assert heading is not None and 'badge-failed">failed' in heading.group(1)
    assert f"/dashboard/jobs/{flow['id']}/retry" in html
