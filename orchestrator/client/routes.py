"""Every route the clients call, described once: each function takes a client method's
arguments and builds the `Call` for its route. They are named as the methods, and as
`orchestrator.jobs` names the same operation in-process; their docstrings are the
methods' docstrings.

Not here: `/internal/*` (Cloud Tasks pushes jobs to the workers there), `/metrics` (for
Prometheus), and the HTML pages (`/ops`, the dashboard, `/docs`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Required, TypedDict
from urllib.parse import quote

from orchestrator.client.calls import Call, Json, Page

Job = Json
Event = Json

IDEMPOTENCY_HEADER = "Idempotency-Key"
READINESS_FAILED = 503


class JobSpec(TypedDict, total=False):
    """One job of `send_jobs`: `send_job`'s arguments, by name."""

    type: Required[str]
    input: Mapping[str, Any]
    subject: str
    idempotency_key: str
    delay: float | timedelta
    run_at: datetime
    priority: int


SPEC_KEYS = frozenset(JobSpec.__annotations__)


# The tenant's jobs: /v1


def send_job(
    type: str,  # noqa: A002 - the API's and orchestrator.send_job's name
    input: Mapping[str, Any] | None = None,  # noqa: A002
    *,
    subject: str | None = None,
    idempotency_key: str | None = None,
    delay: float | timedelta | None = None,
    run_at: datetime | None = None,
    priority: int | None = None,
) -> Call[Job]:
    """Create a job (`POST /v1/jobs`) and answer it with its pipeline.

    - `idempotency_key`: a repeat with the same key and request answers with the job
      made the first time.
    - `delay` (seconds, or a `timedelta`) or `run_at` (an aware `datetime`): run it later.
    - `priority`: 1 to 10 (5 if not given), higher runs sooner among the tenant's jobs.
    """
    body = _job_body(
        type,
        input,
        subject=subject,
        idempotency_key=idempotency_key,
        delay=delay,
        run_at=run_at,
        priority=priority,
    )
    return Call("POST", "/v1/jobs", _itself, body=body)


def schedule_job(
    type: str,  # noqa: A002 - the API's and orchestrator.schedule_job's name
    input: Mapping[str, Any] | None = None,  # noqa: A002
    *,
    at: datetime | None = None,
    delay: float | timedelta | None = None,
    subject: str | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
) -> Call[Job]:
    """`send_job` for later, said so: at `at` (an aware `datetime`), or after `delay`
    (seconds, or a `timedelta`); one of the two, else `TypeError`."""
    if (at is None) == (delay is None):
        raise TypeError("schedule_job takes either at= or delay=")
    return send_job(
        type,
        input,
        subject=subject,
        idempotency_key=idempotency_key,
        delay=delay,
        run_at=at,
        priority=priority,
    )


def send_jobs(jobs: Iterable[JobSpec], *, idempotency_key: str | None = None) -> Call[list[Job]]:
    """Create up to 1,000 jobs in one transaction, all or none (`POST /v1/jobs:batch`).
    Each is a `JobSpec`: `send_job`'s arguments by name (`type`, `input`, `subject`,
    `idempotency_key`, `delay`, `run_at`, `priority`). `idempotency_key` names the whole
    batch: a repeat answers with the jobs it made."""
    body = {"jobs": [_spec_body(spec) for spec in jobs]}
    return Call("POST", "/v1/jobs:batch", _key("jobs"), body=body, headers=_keyed(idempotency_key))


def get_job(job_id: str) -> Call[Job]:
    """The job and its pipeline (`GET /v1/jobs/{id}`); a 404 `ApiError` for an unknown id
    or another tenant's job."""
    return Call("GET", _job_path(job_id), _itself)


def list_jobs(
    *,
    status: str | None = None,
    type: str | None = None,  # noqa: A002 - the API's filter
    limit: int = 50,
    cursor: str | None = None,
) -> Call[Page[Job]]:
    """Every matching job, newest first (`GET /v1/jobs`), read `limit` (1 to 100) a page,
    following the cursor; `cursor`: start after a page's `nextCursor`."""
    filters = {"status": status, "type": type}
    params = _present(**filters, limit=limit, cursor=cursor)

    def page(answer: Json) -> Page[Job]:
        after = answer.get("nextCursor")
        following = list_jobs(**filters, limit=limit, cursor=after) if after else None
        return Page(answer["jobs"], following)

    return Call("GET", "/v1/jobs", page, params=params)


def job_events(job_id: str, *, after: int = 0, limit: int = 500) -> Call[list[Event]]:
    """The job's events, oldest first (`GET /v1/jobs/{id}/events`): transitions, logs and
    progress; up to `limit` (1,000 at most) after the event id `after`."""
    params = {"after": after, "limit": limit}
    return Call("GET", f"{_job_path(job_id)}/events", _key("events"), params=params)


def job_children(
    job_id: str, *, limit: int = 50, after: int = -1, step: str | None = None
) -> Call[Page[Job]]:
    """A join's children (`GET /v1/jobs/{id}/children`), in spawn order, read `limit`
    (1 to 100) a page; `after`: start after a page's `nextAfter`; `step`: only a workflow
    step's jobs (with a step's `joinId` from its workflow's `steps`)."""

    def page(answer: Json) -> Page[Job]:
        following = answer.get("nextAfter")
        more = (
            None
            if following is None
            else job_children(job_id, limit=limit, after=following, step=step)
        )
        return Page(answer["children"], more)

    params: dict[str, Any] = {"limit": limit, "after": after}
    if step is not None:
        params["step"] = step
    return Call("GET", f"{_job_path(job_id)}/children", page, params=params)


def cancel_job(job_id: str) -> Call[Job]:
    """Cancel the job and the steps after it (`POST /v1/jobs/{id}/cancel`). A waiting job
    comes back `cancelled`; a running one is asked to stop (`cancelRequestedAt`). A 409
    `ApiError` if it already succeeded or failed."""
    return Call("POST", f"{_job_path(job_id)}/cancel", _itself)


def retry_job(job_id: str, *, run_now: bool = False) -> Call[Job]:
    """Run a failed or cancelled job again (`POST /v1/jobs/{id}/retry`), with its later
    steps; `run_now` also for one cancelled before the time it was scheduled for."""
    return Call("POST", f"{_job_path(job_id)}/retry", _itself, body={"runNow": run_now})


def retry_failed_jobs(
    *,
    type: str | None = None,  # noqa: A002 - the API's filter
    limit: int = 100,
) -> Call[list[str]]:
    """Retry the tenant's failed jobs, of `type` if given, up to `limit` (1,000 at most)
    (`POST /v1/jobs/retry`); the ids retried."""
    body = _present(type=type, limit=limit)
    return Call("POST", "/v1/jobs/retry", _key("retried"), body=body)


def stats(*, window_seconds: int = 3600) -> Call[Json]:
    """The tenant's jobs in figures (`GET /v1/stats`): counts by status, and over the
    window (60 s to a week) counts by type, the failure rate, queue wait and run time."""
    return Call("GET", "/v1/stats", _itself, params={"windowSeconds": window_seconds})


# Probes: no credentials needed.


def health() -> Call[Json]:
    """`GET /healthz`: `{"status": "ok"}` while the process answers."""
    return Call("GET", "/healthz", _itself)


def readiness() -> Call[Json]:
    """`GET /readyz`: `status` is `ready` or `unavailable` (the 503 is answered, not
    raised), and `checks` says what each check (database, broker) found."""
    return Call("GET", "/readyz", _itself, accept=frozenset({READINESS_FAILED}))


# Operators: /admin, with the service secret.


def archive(*, dry_run: bool = False) -> Call[Json]:
    """Start the archival job now (`POST /admin/maintenance/archive`); its `jobId`,
    `tenantId` (the system tenant) and `status`. `dry_run`: count, move nothing."""
    return Call("POST", "/admin/maintenance/archive", _itself, body={"dryRun": dry_run})


def maintenance_job(job_id: str) -> Call[Job]:
    """A job of the system tenant's, such as the one `archive` started, with its result
    (`GET /admin/maintenance/jobs/{id}`): no tenant's credentials read those."""
    return Call("GET", f"/admin/maintenance/jobs/{quote(job_id, safe='')}", _itself)


def maintenance_runs() -> Call[list[Json]]:
    """The recent archival runs, newest first (`GET /admin/maintenance/runs`)."""
    return Call("GET", "/admin/maintenance/runs", _key("runs"))


def tenant_stats() -> Call[list[Json]]:
    """Each tenant's backlog, running jobs, admissions in the last minute and its share
    of them (`GET /admin/tenants/stats`)."""
    return Call("GET", "/admin/tenants/stats", _key("tenants"))


def sweep() -> Call[Json]:
    """One dispatcher round (`POST /admin/maintenance/sweep`): `sent` (jobs admitted) and
    `missing` (deliveries sent again); for deployments without a dispatcher process."""
    return Call("POST", "/admin/maintenance/sweep", _itself)


def reap() -> Call[int]:
    """Fail or retry the runs whose lease ended without a heartbeat
    (`POST /admin/maintenance/reap`); how many."""
    return Call("POST", "/admin/maintenance/reap", _key("reaped"))


def cron_tick() -> Call[list[Json]]:
    """Fire each cron's latest occurrence that has not fired (`POST /admin/cron/tick`);
    the `{"cron", "occurrence"}` fired."""
    return Call("POST", "/admin/cron/tick", _key("fired"))


# Building bodies and reading answers.


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}"  # an id is never a path of its own


def _itself(answer: Json) -> Json:
    return answer


def _key(name: str) -> Any:
    """A reader of one member of the answer (typed by the call that uses it)."""

    def read(answer: Json) -> Any:
        return answer[name]

    return read


def _present(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _keyed(idempotency_key: str | None) -> dict[str, str]:
    return {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key is not None else {}


def _job_body(
    type: str,  # noqa: A002
    input: Mapping[str, Any] | None,  # noqa: A002
    *,
    subject: str | None,
    idempotency_key: str | None,
    delay: float | timedelta | None,
    run_at: datetime | None,
    priority: int | None,
) -> Json:
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    optional = _present(
        subject=subject,
        idempotencyKey=idempotency_key,
        delaySeconds=seconds,
        runAt=run_at.isoformat() if run_at is not None else None,
        priority=priority,
    )
    return {"type": type, "input": dict(input or {}), **optional}


def _spec_body(spec: Mapping[str, Any]) -> Json:
    spec = _renamed_delay(spec)
    if unknown := set(spec) - SPEC_KEYS:
        raise TypeError(f"unknown job keys: {', '.join(sorted(unknown))}")
    return _job_body(
        spec["type"],
        spec.get("input"),
        subject=spec.get("subject"),
        idempotency_key=spec.get("idempotency_key"),
        delay=spec.get("delay"),
        run_at=spec.get("run_at"),
        priority=spec.get("priority"),
    )


def _renamed_delay(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """`delay_seconds`, the key `send_batch` took, read as `delay`."""
    if "delay_seconds" not in spec:
        return spec
    warnings.warn("a job's delay_seconds is now delay", DeprecationWarning, stacklevel=2)
    renamed = {key: value for key, value in spec.items() if key != "delay_seconds"}
    return {**renamed, "delay": spec["delay_seconds"]}
