"""One delivery of one job: claim it, run its handler, record the outcome.

Every dispatcher (Celery task, HTTP push, inline) calls `Runner.run` and maps the returned
`Outcome` onto its own mechanics: acknowledge, retry later, or stop the pipeline.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from orchestrator import job_events, tracing, transitions
from orchestrator.context import JobContext, Spawn
from orchestrator.db import Database
from orchestrator.dispatch.base import Delivery
from orchestrator.errors import InvalidInput, PermanentError
from orchestrator.heartbeat import Heartbeat, Watch
from orchestrator.models import Job, utcnow
from orchestrator.registry import JobType, Registry
from orchestrator.service import child_rows
from orchestrator.settings import Settings
from orchestrator.states import CLAIMABLE, Attempt, ErrorInfo, JobStatus
from orchestrator.workflows import gate_index

log = logging.getLogger("orchestrator.runner")


class SkipReason(StrEnum):
    """Why a delivery ran nothing: said in the push endpoint's answer and the job's events."""

    NOT_FOUND = "not_found"  # no such job (never made, or removed)
    ARCHIVED = "archived"
    CANCELLED = "cancelled"
    NOT_DUE = "not_due"  # early: the job (a delay, a retry's backoff) is due later
    DUPLICATE = "duplicate"  # another delivery claimed it, or it already finished
    WAITING = "waiting"  # a pipeline step whose upstream step has not succeeded
    SUPERSEDED = "superseded"  # this attempt lost its lease; its result was refused


@dataclass(frozen=True)
class Skipped:
    """A delivery that ran nothing: acknowledge it. `reason` for machines, `detail` for
    people."""

    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class Succeeded:
    result: Any
    # The next pipeline step's delivery, when the success admitted it (to be sent).
    admitted: Delivery | None = None
    # The child jobs the handler spawned (`JobContext.spawn`), recorded with the success.
    spawned: tuple[Spawn, ...] = ()


@dataclass(frozen=True)
class RetryLater:
    """Another attempt is due in `delay` seconds: the job waits in the database until
    then, and the dispatcher admits it when it is due."""

    delay: float
    error: ErrorInfo


@dataclass(frozen=True)
class Failed:
    error: ErrorInfo


@dataclass(frozen=True)
class Cancelled:
    pass


Outcome = Skipped | Succeeded | RetryLater | Failed | Cancelled


@dataclass(frozen=True)
class Claimed:
    job: Job
    job_type: JobType
    upstream_result: Any

    @property
    def run(self) -> Attempt:
        return Attempt.of(self.job)


class Runner:
    def __init__(
        self,
        database: Database,
        registry: Registry,
        settings: Settings,
        *,
        worker: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.registry = registry
        self.settings = settings
        self.worker = worker
        self.clock = clock
        # Whether a success may admit the step it releases, given that step's queue and
        # tenant (`Admission.may_admit_released`; set once admission is built).
        self.admit_next: Callable[[str, str], bool] | None = None
        # Tells the dispatcher there are ready jobs (`Admission.became_ready`).
        self.became_ready: Callable[[], None] | None = None
        self.heartbeat = Heartbeat(
            database,
            lease_seconds=settings.lease_seconds,
            interval=settings.heartbeat_seconds,
            clock=clock,
        )

    def run(
        self, job_id: str, *, interruptible: bool = False, delivery: dict[str, Any] | None = None
    ) -> Outcome:
        """Run one delivery. `interruptible`: the caller can take a soft-time-limit signal.
        `delivery`: what the transport says about this delivery (Cloud Tasks' retry count,
        task name), kept in the job's events."""
        claimed = self._claim(job_id, delivery)
        if isinstance(claimed, Skipped):
            return claimed
        extra = _log_extra(claimed.job)
        log.info("job started", extra={**extra, "action": "started"})
        with self.heartbeat.watch(claimed.run, interruptible=interruptible) as watch:
            outcome = self._execute(claimed, watch)
        if watch.stop.is_set() and not isinstance(outcome, Succeeded):
            outcome = Cancelled()
        recorded = self._record(claimed, outcome)
        if recorded is None:
            self._refused(claimed, outcome)
            return Skipped(SkipReason.SUPERSEDED, "attempt was superseded; result refused")
        action = type(recorded).__name__.lower()
        log.info("job %s", action, extra={**extra, "action": action})
        return recorded

    def _claim(self, job_id: str, delivery: dict[str, Any] | None) -> Claimed | Skipped:
        now = self.clock()
        started = transitions.claim_alone(
            self.database,
            job_id,
            worker=self.worker,
            now=now,
            lease_seconds=self.settings.lease_seconds,
            delivery=delivery,
        )
        if started is None:
            with self.database.transaction() as session:
                return self._skip(session, job_id, now, delivery)
        return self._claimed(started)

    def _claimed(self, started: transitions.Started) -> Claimed:
        job = started.job
        return Claimed(job, self.registry.resolve(job.type), started.upstream_result)

    def _skip(
        self, session: Session, job_id: str, now: datetime, delivery: dict[str, Any] | None
    ) -> Skipped:
        """A delivery that could not claim: note why in the job's events (if it exists)."""
        existing = session.get(Job, job_id, populate_existing=True)
        if existing is None:
            return Skipped(SkipReason.NOT_FOUND, f"unknown job {job_id}")
        skipped = _why_not_claimed(existing, now)
        job_events.note_skipped_delivery(
            session, existing, now, reason=skipped.reason, detail=skipped.detail, delivery=delivery
        )
        log.info(
            "delivery skipped: %s",
            skipped.detail,
            extra={**_log_extra(existing), "action": "skipped", "reason": skipped.reason},
        )
        return skipped

    def _execute(self, claimed: Claimed, watch: Watch) -> Outcome:
        job, job_type = claimed.job, claimed.job_type
        ctx = JobContext(
            job_id=job.id,
            tenant_id=job.tenant_id,
            type=job.type,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            subject=job.subject,
            upstream_result=claimed.upstream_result,
            _database=self.database,
            _clock=self.clock,
            _settings=self.settings,
            _stop=watch.stop,
            step=job.step,
            _registry=self.registry,
        )
        try:
            data = job_type.validate_input(job.input)
            result = _json_safe(job_type.handler(ctx, data))
            return Succeeded(result, spawned=tuple(ctx.spawned))
        except (PermanentError, InvalidInput) as exc:
            return Failed(_error_info(exc))
        except Exception as exc:  # a cancel's interrupt lands here too; run() sorts it out
            return self._retry_or_fail(job, job_type, _error_info(exc))

    def _retry_or_fail(self, job: Job, job_type: JobType, error: ErrorInfo) -> Outcome:
        if job.attempt >= job.max_attempts:
            return Failed(error)
        return RetryLater(job_type.retry.delay(job.attempt), error)

    def _record(self, claimed: Claimed, outcome: Outcome) -> Outcome | None:
        """Write the outcome; what was recorded, or `None` if this attempt was superseded."""
        run, now = claimed.run, self.clock()
        # A workflow's gate too: an empty stage still releases the next gate.
        family = claimed.job.join_id or claimed.job_type.workflow
        if isinstance(outcome, Succeeded) and (outcome.spawned or family):
            return self._record_family(claimed, outcome, now)
        if isinstance(outcome, Succeeded):
            # The common case, one statement (see transitions.succeed_alone).
            then = claimed.job_type.then
            recorded = transitions.succeed_alone(
                self.database,
                run,
                outcome.result,
                now,
                has_next=then is not None,
                trace=tracing.current_traceparent() or claimed.job.trace_context,
                admit_next=then is not None and self._may_admit(then, run.tenant_id),
            )
            return None if recorded is None else replace(outcome, admitted=recorded.admitted)
        with self.database.transaction() as session:
            if isinstance(outcome, RetryLater):
                return self._retry(session, run, outcome, now)
            if isinstance(outcome, Cancelled):
                won = transitions.confirm_cancelled(session, run, now)
            else:
                assert isinstance(outcome, Failed)  # a handler's outcome is never Skipped
                won = transitions.fail(session, run, outcome.error, now)
        if won and claimed.job.join_id is not None and self.became_ready is not None:
            self.became_ready()  # a join that allows failures may be ready now
        return outcome if won else None

    def _record_family(self, claimed: Claimed, outcome: Succeeded, now: datetime) -> Outcome | None:
        """A success that spawned children, or a child's: one transaction for the result,
        the children, and the join's count (`transitions.succeed_in_transaction`). A child
        of an unknown type, or with an invalid input, fails the job that spawned it."""
        try:
            children = child_rows(self.registry, self.settings, claimed.job, outcome.spawned, now)
        except Exception as exc:
            # An unknown type, an invalid input, or one that is not JSON: the handler's
            # mistake, the same on every attempt.
            failed = Failed(_error_info(exc))
            with self.database.transaction() as session:
                return failed if transitions.fail(session, claimed.run, failed.error, now) else None
        with self.database.transaction() as session:
            won = transitions.succeed_in_transaction(
                session,
                claimed.run,
                outcome.result,
                now,
                children=children,
                join_id=claimed.job.join_id,
                step=claimed.job.step,
                failures_allowed=self._failures_allowed(claimed),
                trace=tracing.current_traceparent() or claimed.job.trace_context,
            )
        if not won:
            return None
        if self.became_ready is not None:  # children, or a join, are ready now
            self.became_ready()
        return outcome

    def _failures_allowed(self, claimed: Claimed) -> int:
        """How many children the next step, their join, lets fail for good: its type's
        `allow_failures`, or for a workflow's gate, what its stage allows."""
        workflow, then = claimed.job_type.workflow, claimed.job_type.then
        if workflow is not None:
            return workflow.failures_allowed_before(gate_index(claimed.job.step) + 1)
        return self.registry.resolve(then).allow_failures if then else 0

    def _may_admit(self, job_type: str, tenant_id: str) -> bool:
        admit = self.admit_next
        return admit is not None and admit(self.registry.resolve(job_type).queue, tenant_id)

    def _retry(
        self, session: Session, run: Attempt, outcome: RetryLater, now: datetime
    ) -> Outcome | None:
        run_at = now + timedelta(seconds=outcome.delay)
        if transitions.schedule_retry(session, run, outcome.error, now, run_at=run_at):
            return outcome
        # A cancel asked for while the attempt ran (before its heartbeat saw it) wins over
        # another attempt, as it does when the reaper finds the run's lease expired.
        return Cancelled() if transitions.confirm_cancelled(session, run, now) else None

    def _refused(self, claimed: Claimed, outcome: Outcome) -> None:
        log.warning(
            "result refused: this attempt no longer holds the job",
            extra={**_log_extra(claimed.job), "action": "fenced"},
        )
        with self.database.transaction() as session:
            job_events.note_refused_result(
                session, claimed.run, self.clock(), type(outcome).__name__.lower()
            )


def _why_not_claimed(job: Job, now: datetime) -> Skipped:
    if job.archived_at is not None:
        return Skipped(SkipReason.ARCHIVED, "job was archived")
    if job.status is JobStatus.CANCELLED:
        return Skipped(SkipReason.CANCELLED, "job was cancelled")
    due = job.run_at
    if job.status in CLAIMABLE and due is not None and due > now + transitions.CLOCK_SKEW:
        return Skipped(SkipReason.NOT_DUE, f"delivered early: not due until {due.isoformat()}")
    if job.status is JobStatus.WAITING:
        return Skipped(SkipReason.WAITING, "its upstream step has not succeeded yet")
    return Skipped(SkipReason.DUPLICATE, f"duplicate delivery (job {job.status})")


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
