"""`orchestrator.client` against a real server (HTTP on loopback, api-key mode)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from werkzeug.serving import make_server

import api
from orchestrator import apikeys, migrate
from orchestrator.client import ApiError, Client
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from tests import REAL_SECRET
from tests.servers import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Runtime]]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('client') / 'c.db'}"
    migrate.upgrade(database_url)
    settings = load_settings(
        env="production",
        database_url=database_url,
        dispatch_mode="inline",
        job_modules="tests.jobtypes",
        service_auth_secret=REAL_SECRET,
    )
    runtime = Runtime.build(settings)
    httpd = make_server("127.0.0.1", free_port(), api.create_app(runtime=runtime), threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", runtime
    httpd.shutdown()


def test_send_wait_list_cancel_retry(server: tuple[str, Runtime], tmp_path: Path) -> None:
    base, runtime = server
    client = Client(base, api_key=apikeys.create_key(runtime.database, "py", "sdk").key)
    job = client.send(
        "ANALYZE_INSPECTION",
        {"analysisMode": "QUICK", "roomIds": ["r1"]},
        subject="insp_1",
        idempotency_key="k1",
    )
    again = client.send(
        "ANALYZE_INSPECTION",
        {"analysisMode": "QUICK", "roomIds": ["r1"]},
        subject="insp_1",
        idempotency_key="k1",
    )
    assert again["id"] == job["id"]
    done = client.wait(job["id"], timeout=30)
    assert done["status"] == "succeeded"
    assert {s["status"] for s in done["pipeline"]["steps"]} == {"succeeded"}
    assert job["id"] in {j["id"] for j in client.list(job_type="ANALYZE_INSPECTION", limit=1)}
    assert client.events(job["id"])[0]["toStatus"] == "queued"

    gate = tmp_path / "gate"
    failed = client.send("TEST_GATED", {"gateFile": str(gate)})
    assert client.get(failed["id"])["status"] == "failed"
    gate.touch()
    assert client.retry(failed["id"])["status"] == "succeeded"
    delayed = client.send("TEST_FLAKY", delay_seconds=60)
    assert client.cancel(delayed["id"])["status"] == "cancelled"
    assert client.retry_failed() == []
    stats = client.stats(window_seconds=600)
    assert stats["window"]["seconds"] == 600
    assert stats["byStatus"]["succeeded"] >= 3 and stats["byStatus"]["cancelled"] >= 1


def test_errors_are_api_errors_with_the_problem(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    client = Client(base, api_key=apikeys.create_key(runtime.database, "py", "sdk").key)
    with pytest.raises(ApiError) as invalid:
        client.send("ANALYZE_INSPECTION", {"analysisMode": "FAST"})
    assert invalid.value.status == 422
    assert {e["field"] for e in invalid.value.errors} >= {"input.analysisMode"}
    with pytest.raises(ApiError) as missing:
        client.get("job_" + "0" * 28)
    assert missing.value.status == 404
    with pytest.raises(ApiError) as unauthorised:
        Client(base, api_key="ork_wrong").get("job_" + "0" * 28)
    assert unauthorised.value.status == 401


def test_batches_run_at_and_retry_now(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    client = Client(base, api_key=apikeys.create_key(runtime.database, "tnt_batch", "ci").key)
    at = datetime.now(UTC) + timedelta(hours=1)
    made = client.send_batch(
        [
            {"type": "TEST_ECHO_UPSTREAM", "subject": "b1", "priority": 9},
            {"type": "TEST_ECHO_UPSTREAM", "run_at": at},
        ],
        idempotency_key="batch-1",
    )
    assert [job["subject"] for job in made] == ["b1", None]
    assert made[0]["priority"] == 9 and made[1]["status"] == "queued"
    assert datetime.fromisoformat(made[1]["runAt"]) == at
    again = client.send_batch(
        [{"type": "TEST_ECHO_UPSTREAM", "subject": "b1", "priority": 9},
         {"type": "TEST_ECHO_UPSTREAM", "run_at": at}],
        idempotency_key="batch-1",
    )  # fmt: skip
    assert [job["id"] for job in again] == [job["id"] for job in made]
    later = made[1]["id"]
    assert client.cancel(later)["status"] == "cancelled"
    assert client.retry(later)["status"] == "queued"  # keeps its time
    client.cancel(later)
    assert client.retry(later, run_now=True)["status"] == "succeeded"  # inline: runs at once
    fan = client.send("TEST_FAN_OUT", {"items": ["a", "b", "c"]})
    join = fan["pipeline"]["steps"][1]["id"]
    assert [c["result"]["item"] for c in client.children(join, limit=2)] == ["A", "B", "C"]
