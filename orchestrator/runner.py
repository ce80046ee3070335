"""One delivery of one job: claim it, run its handler, record the outcome.

Every dispatcher (Celery task, HTTP push, inline) calls `Runner.run` and maps the returned
`Outcome` onto its own mechanics: acknowledge, retry later, or stop the pipeline.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from orchestrator import transitions
from orchestrator.context import JobContext
from orchestrator.db import Database
from orchestrator.errors import InvalidInput, PermanentError
from orchestrator.models import Job, utcnow
from orchestrator.registry import JobType, Registry
from orchestrator.transitions import Attempt, ErrorInfo

log = logging.getLogger("orchestrator.runner")

# The lease outlives the time limit by this much, so a slow but live worker is not reaped.
LEASE_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Skipped:
    """A duplicate or stale delivery: acknowledge it and do nothing."""

    reason: str


@dataclass(frozen=True)
class Succeeded:
    result: Any


@dataclass(frozen=True)
class RetryLater:
    delay: float
    error: ErrorInfo
    attempt: int


@dataclass(frozen=True)
class Failed:
    error: ErrorInfo


Outcome = Skipped | Succeeded | RetryLater | Failed


class Runner:
    def __init__(
        self,
        database: Database,
        registry: Registry,
        *,
        worker: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.registry = registry
        self.worker = worker
        self.clock = clock

    def run(self, job_id: str) -> Outcome:
        claimed = self._claim(job_id)
        if isinstance(claimed, Skipped):
            return claimed
        job, job_type, upstream = claimed
        extra = _log_extra(job)
        log.info("job started", extra={**extra, "action": "started"})
        outcome = self._execute(job, job_type, upstream)
        written = self._record(job, job_type, outcome)
        if not written:
            log.warning(
                "result refused: attempt lost its lease", extra={**extra, "action": "fenced"}
            )
            return Skipped("attempt was superseded; result refused")
        log.info(
            "job %s",
            type(outcome).__name__.lower(),
            extra={**extra, "action": type(outcome).__name__.lower()},
        )
        return outcome

    def _claim(self, job_id: str) -> tuple[Job, JobType, Any] | Skipped:
        now = self.clock()
        with self.database.transaction() as session:
            existing = session.get(Job, job_id)
            if existing is None:
                return Skipped(f"unknown job {job_id}")
            job_type = self.registry.get(existing.type)
            job = transitions.claim(
                session,
                job_id,
                worker=self.worker,
                now=now,
                lease_seconds=job_type.time_limit + LEASE_GRACE_SECONDS,
            )
            if job is None:
                reason = f"duplicate delivery skipped (status {existing.status})"
                transitions.note_skipped_delivery(session, existing, reason, now)
                log.info(reason, extra={**_log_extra(existing), "action": "skipped"})
                return Skipped(reason)
            upstream = session.get(Job, job.parent_id) if job.parent_id else None
            return job, job_type, upstream.result if upstream else None

    def _execute(self, job: Job, job_type: JobType, upstream: Any) -> Outcome:
        ctx = JobContext(
            job_id=job.id,
            tenant_id=job.tenant_id,
            type=job.type,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            subject=job.subject,
            upstream_result=upstream,
            _database=self.database,
            _clock=self.clock,
        )
        try:
            data = job_type.validate_input(job.input)
            return Succeeded(_json_safe(job_type.handler(ctx, data)))
        except (PermanentError, InvalidInput) as exc:
            return Failed(_error_info(exc))
        except Exception as exc:
            error = _error_info(exc)
            if job.attempt < job.max_attempts:
                return RetryLater(job_type.retry.delay(job.attempt), error, job.attempt)
            return Failed(error)

    def _record(self, job: Job, job_type: JobType, outcome: Outcome) -> bool:
        run = Attempt(job.id, job.tenant_id, job.attempt)
        now = self.clock()
        with self.database.transaction() as session:
            if isinstance(outcome, Succeeded):
                return transitions.succeed(session, run, outcome.result, now)
            if isinstance(outcome, RetryLater):
                run_at = now + timedelta(seconds=outcome.delay)
                return transitions.schedule_retry(session, run, outcome.error, run_at, now)
            assert isinstance(outcome, Failed)
            return transitions.fail(session, run, outcome.error, now)


def _json_safe(result: Any) -> Any:
    """Handler results are stored as JSON: models are dumped, anything else must round-trip."""
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    try:
        return json.loads(json.dumps(result))
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"handler returned a result that is not JSON: {exc}") from exc


def _error_info(exc: BaseException) -> ErrorInfo:
    return ErrorInfo(
        type=type(exc).__name__,
        message=str(exc)[:2000] or type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)),
    )


def _log_extra(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "tenant_id": job.tenant_id,
        "job_type": job.type,
        "attempt": job.attempt,
    }
