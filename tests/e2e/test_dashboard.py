"""The dashboard in a real browser (Chromium through Playwright) against a running system:
the web app on a loopback port, a real Celery worker and beat, SQLite, embedded Redis.

Screenshots of every page land in `test-artifacts/dashboard/`. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from orchestrator import migrate
from orchestrator.embedded_redis import EmbeddedRedis
from tests.integration.stack import Stack, stack_settings

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
REDIS_DB = 9
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB_TIMEOUT = 30.0  # seconds for a job to reach a state
UI_TIMEOUT_MS = 15_000  # for any one browser action or expectation
REFRESH_TIMEOUT_MS = 20_000  # several of the list's 5 s refreshes
ANALYZE = {
    "type": "ANALYZE_INSPECTION",
    "inspectionId": "insp_e2e",
    "input": {"analysisMode": "DEEP", "roomIds": ["kitchen", "attic", "cellar"]},
}


@pytest.fixture(scope="module")
def stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("dashboard-stack")
    database_url = f"sqlite:///{folder / 'stack.db'}"
    migrate.upgrade(database_url)
    redis_url = f"{redis_server.url.rsplit('/', 1)[0]}/{REDIS_DB}"
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()  # no messages left over from an earlier run
    # No catch-up of missed cron occurrences: beat would fire the per-tenant daily summary
    # for the tenants a test just made, adding jobs to the counts the tests check.
    settings = stack_settings(database_url, redis_url, cron_catchup_seconds=0)
    stack = Stack.build(settings, folder)
    try:
        yield stack.start()
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("ORCH_TEST_CHROMIUM", "/usr/bin/chromium"),
            args=CHROMIUM_ARGS,
            timeout=60_000,
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def tenant() -> str:
    return f"tnt_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def page(browser: Browser, stack: Stack, tenant: str) -> Iterator[Page]:
    context = browser.new_context(
        base_url=stack.base_url,
        extra_http_headers={"X-Tenant-ID": tenant},
        viewport={"width": 1360, "height": 900},
    )
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" confirmations
    try:
        yield page
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def create(stack: Stack, tenant: str, body: dict[str, Any], status: str) -> dict[str, Any]:
    """Create a job over the API and wait until it is in `status`."""
    job = stack.create(tenant, body)
    return stack.wait_for(tenant, job["id"], {status}, timeout=JOB_TIMEOUT)


def gated(stack: Stack, tenant: str, gate: Path) -> dict[str, Any]:
    return create(stack, tenant, {"type": "TEST_GATED", "input": {"gateFile": str(gate)}}, "failed")


def looping(stack: Stack, tenant: str, folder: Path) -> dict[str, Any]:
    body = {"type": "TEST_LOOP", "input": {"effectFile": str(folder / "loop.txt"), "seconds": 40}}
    return create(stack, tenant, body, "running")


def badge(page: Page) -> str:
    return page.locator("#job h1 .badge").inner_text()


def reload_until_status(page: Page, status: str, timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while badge(page) != status:
        assert time.monotonic() < deadline, f"job page still shows {badge(page)}, not {status}"
        page.wait_for_timeout(300)
        page.reload()


def count(page: Page, status: str) -> int:
    return int(page.locator(f'#summary [data-count="{status}"]').inner_text())


def listed(page: Page) -> list[str]:
    ids: list[str] = page.locator("#jobs tr[data-job-id]").evaluate_all(
        "rows => rows.map(row => row.dataset.jobId)"
    )
    return ids


def test_overview_shows_counts_chart_and_rows(
    stack: Stack, page: Page, tenant: str, tmp_path: Path
) -> None:
    analysis = create(stack, tenant, ANALYZE, "succeeded")
    report = analysis["pipeline"]["steps"][1]["id"]
    stack.wait_for(tenant, report, {"succeeded"}, timeout=JOB_TIMEOUT)
    failed = gated(stack, tenant, tmp_path / "gate")
    loop = looping(stack, tenant, tmp_path)
    try:
        page.goto("/dashboard")
        # The inspection: its analysis, its three rooms (ANALYZE_ROOM, in parallel), its report.
        expected = {"succeeded": 5, "failed": 1, "cancelled": 1, "running": 1, "waiting": 1}
        assert {status: count(page, status) for status in expected} == expected
        assert count(page, "total") == 9
        steps = [s["id"] for job in (analysis, failed, loop) for s in job["pipeline"]["steps"]]
        rooms = [j["id"] for j in stack.get(tenant, "/v1/jobs?type=ANALYZE_ROOM").json()["jobs"]]
        assert len(rooms) == 3 and listed(page) == sorted(steps + rooms, reverse=True)
        row = page.locator(f'#jobs tr[data-job-id="{failed["id"]}"]')
        expect(row.locator(".badge")).to_have_text("failed")
        assert page.locator("svg.chart rect.seg-succeeded").count() in (1, 2)  # minute edge
        expect(page.locator(".legend")).to_contain_text("succeeded 5")
        screenshot(page, "overview")

        page.select_option("select[name=status]", "failed")  # applies on change
        page.wait_for_url(re.compile(r"status=failed"))
        assert listed(page) == [failed["id"]]
        screenshot(page, "overview-filtered")

        page.goto(f"/dashboard/jobs/{analysis['id']}")
        expect(page.locator(".events-table")).to_contain_text("3 room(s) sent for analysis")
        page.get_by_role("link", name="GENERATE_REPORT").click()
        expect(page.locator("#job h1")).to_contain_text("GENERATE_REPORT")
        expect(page.locator("#job pre").last).to_contain_text("overallScore")
        screenshot(page, "job-succeeded")
    finally:
        stack.post(tenant, f"/v1/jobs/{loop['id']}/cancel")


def test_a_workflow_is_drawn_as_its_stages(stack: Stack, page: Page, tenant: str) -> None:
    rooms = [f"room_{n}" for n in range(10)]
    body = {"type": "INSPECTION_REVIEW", "input": {"analysisMode": "DEEP", "roomIds": rooms}}
    created = stack.create(tenant, body)
    stack.wait_for(tenant, created["pipeline"]["steps"][-1]["id"], {"succeeded"}, JOB_TIMEOUT)
    page.goto(f"/dashboard/jobs/{created['id']}")
    panel = page.locator('[data-workflow="INSPECTION_REVIEW"]')
    expect(panel.locator("h2 .badge")).to_have_text("succeeded")
    node = panel.locator('[data-step="rooms"]')
    expect(node).to_contain_text("map over input.roomIds, 8 at once")
    expect(node.locator('[data-count="succeeded"]')).to_have_text(f"{len(rooms)} succeeded")
    screenshot(page, "workflow")
    panel.get_by_role("link", name="report").click()
    expect(page.locator("#job h1")).to_contain_text("GENERATE_REPORT")
    expect(page.locator("#job pre").last).to_contain_text("overallScore")


def test_retry_button_runs_a_failed_job_again(
    stack: Stack, page: Page, tenant: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    failed = gated(stack, tenant, gate)
    page.goto(f"/dashboard/jobs/{failed['id']}")
    assert badge(page) == "failed"
    expect(page.locator("pre.traceback")).to_contain_text("PermanentError")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    screenshot(page, "job-failed")

    gate.touch()
    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".flash-success")).to_have_text("Retry requested")
    reload_until_status(page, "succeeded")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    expect(page.locator("ol.steps .badge").last).to_have_text("succeeded", timeout=30_000)
    screenshot(page, "job-retried")


def test_cancel_button_stops_a_running_job(
    stack: Stack, page: Page, tenant: str, tmp_path: Path
) -> None:
    loop = looping(stack, tenant, tmp_path)
    try:
        page.goto(f"/dashboard/jobs/{loop['id']}")
        assert badge(page) == "running"
        screenshot(page, "job-running")
        page.get_by_role("button", name="Cancel").click()
        # Answered at once; the page follows the job until its worker has stopped it.
        expect(page.locator(".flash-success")).to_have_text(
            "Cancel requested; the worker is stopping"
        )
        expect(page.locator("#job h1 .badge")).to_have_text("cancelled", timeout=15_000)
        expect(page.get_by_role("button", name="Retry")).to_be_visible()
        assert stack.get(tenant, f"/v1/jobs/{loop['id']}").json()["status"] == "cancelled"
        screenshot(page, "job-cancelled")
    finally:
        stack.post(tenant, f"/v1/jobs/{loop['id']}/cancel")


def test_dead_letters_retry_all(stack: Stack, page: Page, tenant: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first, second = gated(stack, tenant, gate), gated(stack, tenant, gate)
    exploded = create(stack, tenant, {"type": "TEST_EXPLODES"}, "failed")
    page.goto("/dashboard/dead-letters")
    rows = page.locator("tr[data-job-id]")
    expect(rows).to_have_count(3)
    expect(page.locator(f'tr[data-job-id="{exploded["id"]}"]')).to_contain_text(
        "the input can never work"
    )
    screenshot(page, "dead-letters")

    gate.touch()
    page.select_option("select[name=type]", "TEST_GATED")
    page.wait_for_url(re.compile(r"type=TEST_GATED"))
    expect(rows).to_have_count(2)
    page.get_by_role("button", name=re.compile("Retry all")).click()
    expect(page.locator(".flash-success")).to_have_text("Retry requested for 2 jobs")
    for job in (first, second):
        stack.wait_for(tenant, job["id"], {"succeeded"}, timeout=JOB_TIMEOUT)
    page.goto("/dashboard/dead-letters")
    expect(rows).to_have_count(1)
    expect(rows).to_have_attribute("data-job-id", exploded["id"])
    screenshot(page, "dead-letters-after-retry")


def test_list_refreshes_itself_and_keeps_its_filters(stack: Stack, page: Page, tenant: str) -> None:
    page.goto("/dashboard?status=succeeded")
    expect(page.locator("#jobs .empty")).to_be_visible()
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads

    done = create(stack, tenant, {"type": "TEST_ECHO_UPSTREAM"}, "succeeded")
    create(stack, tenant, {"type": "TEST_EXPLODES"}, "failed")
    row = page.locator(f'#jobs tr[data-job-id="{done["id"]}"]')
    expect(row).to_be_visible(timeout=REFRESH_TIMEOUT_MS)
    expect(page.locator("#summary [data-count=failed]")).to_have_text(
        "1", timeout=REFRESH_TIMEOUT_MS
    )
    assert listed(page) == [done["id"]]  # the failed one stays filtered out
    assert page.evaluate("window.loadedOnce") is True
    assert page.url.endswith("/dashboard?status=succeeded")
    screenshot(page, "overview-refreshed")


def test_pages_without_identity_or_for_another_tenant(
    stack: Stack, page: Page, browser: Browser
) -> None:
    theirs = stack.create("someone_else", {"type": "TEST_ECHO_UPSTREAM"})
    response = page.goto(f"/dashboard/jobs/{theirs['id']}")
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("Job not found")
    screenshot(page, "not-found")

    # A browser as a person opens it under `make run`: no header. In development the
    # dashboard asks which tenant, lists those with jobs, and remembers the choice.
    anonymous = browser.new_context(base_url=stack.base_url)
    anonymous.set_default_timeout(UI_TIMEOUT_MS)
    try:
        bare = anonymous.new_page()
        response = bare.goto(f"/dashboard/jobs/{theirs['id']}")
        assert response is not None and response.status == 200
        expect(bare.locator("h1")).to_have_text("Pick a tenant")
        screenshot(bare, "tenant-picker")
        bare.locator('button[data-tenant="someone_else"]').click()
        expect(bare.locator("#job h1")).to_contain_text("TEST_ECHO_UPSTREAM")
        expect(bare.locator(".tenant")).to_have_text("someone_else")
        bare.goto("/dashboard")
        expect(bare.locator(f'#jobs tr[data-job-id="{theirs["id"]}"]')).to_be_visible()
        bare.get_by_role("link", name="Switch tenant").click()
        bare.locator("#tenant").fill("tnt_nobody")
        bare.get_by_role("button", name="Show its jobs").click()
        expect(bare.locator(".tenant")).to_have_text("tnt_nobody")
        expect(bare.locator(f'#jobs tr[data-job-id="{theirs["id"]}"]')).to_have_count(0)
        screenshot(bare, "picked-tenant")
    finally:
        anonymous.close()


def test_operator_pages_across_tenants(
    stack: Stack, browser: Browser, tenant: str, tmp_path: Path
) -> None:
    """Signed in with the service secret, in a browser with no tenant header: every
    tenant's standing, the queues with the worker consuming them, cron's "fire now",
    "run now" for a scheduled job, and dead letters discarded in bulk."""
    failed = gated(stack, tenant, tmp_path / "gate")
    later = stack.create(tenant, {"type": "TEST_ECHO_UPSTREAM", "delaySeconds": 3600})
    context = browser.new_context(base_url=stack.base_url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        page.goto("/ops")
        expect(page.locator("h1")).to_have_text("Operator sign-in")
        screenshot(page, "ops-login")
        page.locator("#secret").fill("dev-secret")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("h1")).to_have_text("Operations")
        expect(page.locator(f'#tenants tr[data-tenant="{tenant}"]')).to_be_visible()
        workers = page.locator('#queues tr[data-queue="default"] [data-field="workers"]')
        expect(workers).to_contain_text(stack.worker.nodename)
        screenshot(page, "ops-overview")

        page.get_by_role("link", name="Scheduled").click()
        row = page.locator(f'tr[data-job-id="{later["id"]}"]')
        screenshot(page, "ops-scheduled")
        row.get_by_role("button", name="Run now").click()
        expect(page.locator(".flash")).to_contain_text("is due now")
        stack.wait_for(tenant, later["id"], {"succeeded"}, timeout=JOB_TIMEOUT)

        page.locator('input[name="q"]').fill(failed["id"])
        page.locator('input[name="q"]').press("Enter")
        expect(page.locator(f'tr[data-job-id="{failed["id"]}"]')).to_be_visible()

        page.get_by_role("link", name="Dead letters").click()
        page.locator(f'input[name="job"][value="{failed["id"]}"]').check()
        screenshot(page, "ops-dead-letters")
        page.get_by_role("button", name="Discard selected").click()
        expect(page.locator(".flash")).to_contain_text("Discarded 1 job(s).")
        expect(page.locator(f'tr[data-job-id="{failed["id"]}"]')).to_have_count(0)
    finally:
        context.close()
