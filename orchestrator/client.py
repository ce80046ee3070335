"""A Python client for the HTTP API, for services that create jobs from Python.

    client = Client("https://jobs.example.com", api_key="ork_...")
    job = client.send("ANALYZE_INSPECTION", {"analysisMode": "QUICK", "roomIds": ["r1"]},
                      subject="insp_1", idempotency_key="insp_1-analysis")
    done = client.wait(job["id"], timeout=60)

Errors come back as `ApiError` carrying the problem document's status, title and fields.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import requests

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
Job = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.title = str(problem.get("title", "error"))
        self.errors = list(problem.get("errors") or [])
        detail = problem.get("detail")
        super().__init__(f"{status} {self.title}" + (f": {detail}" if detail else ""))


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        """`api_key` for api-key deployments; `tenant` (and `user`) behind a trusted gateway."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = session or requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"
        if tenant:
            self.http.headers["X-Tenant-ID"] = tenant
        if user:
            self.http.headers["X-User-ID"] = user

    def send(
        self,
        job_type: str,
        job_input: Mapping[str, Any] | None = None,
        *,
        subject: str | None = None,
        idempotency_key: str | None = None,
        delay_seconds: float | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
    ) -> Job:
        """Create a job (`POST /v1/jobs`); with an idempotency key, a repeat returns the
        job made before. `delay_seconds` or `run_at` (an aware datetime): run it later.
        `priority`: 1 to 10 (default 5), higher runs sooner among the tenant's jobs."""
        body = _job_body(
            job_type,
            job_input,
            subject=subject,
            delay_seconds=delay_seconds,
            run_at=run_at,
            priority=priority,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=body, headers=headers)

    def send_batch(
        self, jobs: Iterable[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> builtins.list[Job]:
        """Create up to 1,000 jobs in one transaction, all or none (`POST /v1/jobs:batch`).
        Each item takes `send`'s keywords: `type`, `input`, `subject`, `delay_seconds`,
        `run_at`, `priority`. The key names the whole batch."""
        body = {
            "jobs": [
                _job_body(
                    item["type"],
                    item.get("input"),
                    subject=item.get("subject"),
                    delay_seconds=item.get("delay_seconds"),
                    run_at=item.get("run_at"),
                    priority=item.get("priority"),
                )
                for item in jobs
            ]
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        created: builtins.list[Job] = self._call(
            "POST", "/v1/jobs:batch", json=body, headers=headers
        )["jobs"]
        return created

    def get(self, job_id: str) -> Job:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def list(
        self, *, status: str | None = None, job_type: str | None = None, limit: int = 50
    ) -> Iterator[Job]:
        """Every matching job, newest first, following the cursor page by page."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if job_type:
            params["type"] = job_type
        while True:
            page = self._call("GET", "/v1/jobs", params=params)
            yield from page["jobs"]
            if not page.get("nextCursor"):
                return
            params["cursor"] = page["nextCursor"]

    def events(self, job_id: str) -> builtins.list[dict[str, Any]]:
        events: builtins.list[dict[str, Any]] = self._call("GET", f"/v1/jobs/{job_id}/events")[
            "events"
        ]
        return events

    def children(self, job_id: str, *, limit: int = 50) -> Iterator[Job]:
        """A join's children, in spawn order, following the pages."""
        params: dict[str, Any] = {"limit": limit}
        while True:
            page = self._call("GET", f"/v1/jobs/{job_id}/children", params=params)
            yield from page["children"]
            if page.get("nextAfter") is None:
                return
            params["after"] = page["nextAfter"]

    def stats(self, *, window_seconds: int = 3600) -> dict[str, Any]:
        """The tenant's jobs in figures (`GET /v1/stats`): counts by status, and over the
        window's jobs counts by type, the failure rate, queue wait and run time."""
        return self._call("GET", "/v1/stats", params={"windowSeconds": window_seconds})

    def cancel(self, job_id: str) -> Job:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: str, *, run_now: bool = False) -> Job:
        """Run a failed or cancelled job again; `run_now` also for one cancelled before
        the time it was scheduled for."""
        return self._call("POST", f"/v1/jobs/{job_id}/retry", json={"runNow": run_now})

    def retry_failed(self, *, job_type: str | None = None, limit: int = 100) -> builtins.list[str]:
        body: dict[str, Any] = {"limit": limit, **({"type": job_type} if job_type else {})}
        retried: builtins.list[str] = self._call("POST", "/v1/jobs/retry", json=body)["retried"]
        return retried

    def wait(
        self, job_id: str, *, timeout: float = 300.0, poll: float = 0.5, pipeline: bool = True
    ) -> Job:
        """Poll until the job (and, with `pipeline`, every step after it) has finished."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            steps = job.get("pipeline", {}).get("steps", []) if pipeline else []
            if job["status"] in TERMINAL and all(s["status"] in TERMINAL for s in steps):
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(
            method, f"{self.base_url}{path}", timeout=self.timeout, **kwargs
        )
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason}
            raise ApiError(response.status_code, problem)
        answer: dict[str, Any] = response.json()
        return answer


def _job_body(
    job_type: str,
    job_input: Mapping[str, Any] | None,
    *,
    subject: str | None,
    delay_seconds: float | None,
    run_at: datetime | None,
    priority: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": job_type, "input": dict(job_input or {})}
    optional = {
        "subject": subject,
        "delaySeconds": delay_seconds,
        "runAt": run_at.isoformat() if run_at is not None else None,
        "priority": priority,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body
