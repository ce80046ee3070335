"""The job service: what the API and CLI do to a tenant's jobs.

Create, read, list, cancel and retry. Every read and write is scoped by tenant; state
changes go through `orchestrator.transitions`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from orchestrator import tenant_stats, tracing, transitions
from orchestrator.admission import Admission
from orchestrator.context import Spawn, workflow_run_of
from orchestrator.db import Database
from orchestrator.dispatch import Delivery
from orchestrator.errors import (
    FieldError,
    IdempotencyConflict,
    InvalidInput,
    JobArchived,
    JobConflict,
    JobDefinitionError,
    JobNotFound,
    OrchestratorError,
    UnknownJobType,
)
from orchestrator.ids import ID_PATTERN, new_job_id, tenant_id_problem
from orchestrator.limits import input_problems
from orchestrator.models import Job, JobEvent, Tenant, utcnow
from orchestrator.registry import JobType, Registry
from orchestrator.settings import Settings
from orchestrator.states import JobStatus
from orchestrator.text import name_problem, text_problem
from orchestrator.transitions import Rerun
from orchestrator.workflow_state import WorkflowState, workflow_state
from orchestrator.workflows import Workflow, changed_since_run, gate_name

log = logging.getLogger("orchestrator.service")

MAX_PAGE_SIZE = 100
# Priorities run from 1 to 10, higher sooner among a tenant's ready jobs.
MIN_PRIORITY, DEFAULT_PRIORITY, MAX_PRIORITY = 1, 5, 10
TERMINAL_NAMES = ("succeeded", "failed", "cancelled")
MAX_BULK_RETRY = 1000
MAX_CHILDREN = 10_000  # children one run may spawn
CANCEL_POLL_SECONDS = 0.05
# Tenants this process already recorded; creation skips the upsert for them.
KNOWN_TENANTS_CACHE = 10_000


@dataclass(frozen=True)
class NewJob:
    tenant_id: str
    type: str
    input: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None
    created_by: str | None = None
    idempotency_key: str | None = None
    delay_seconds: float | None = None
    run_at: datetime | None = None
    priority: int = DEFAULT_PRIORITY

    def digest(self) -> str:
        """What makes two requests with one idempotency key "the same request"."""
        fields: list[Any] = [
            self.type,
            self.input,
            self.subject,
            self.delay_seconds,
            self.run_at.isoformat() if self.run_at else None,
        ]
        if self.priority != DEFAULT_PRIORITY:  # digests made before priorities stay valid
            fields.append(self.priority)
        canonical = json.dumps(
            fields,
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class JobDetails:
    job: Job
    steps: list[Job]
    # For each step that joins children (`JobContext.spawn`): its children by status.
    children: dict[str, dict[str, int]] = field(default_factory=dict)
    # For a workflow's run (`define_workflow`): its steps as they stand.
    workflow: WorkflowState | None = None


@dataclass(frozen=True)
class Created:
    details: JobDetails
    created: bool  # False: an idempotent repeat answered with the job it created before


@dataclass(frozen=True)
class BatchCreated:
    jobs: list[JobDetails]
    created: bool  # False: a repeat of a keyed batch, answered with the jobs it made before


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    type: str | None = None


def _record_tenant(session: sa.orm.Session, tenant_id: str, now: datetime) -> None:
    """The tenant's row, if it has none yet (its tier decides its retention)."""
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    session.execute(insert(Tenant).values(id=tenant_id, created_at=now).on_conflict_do_nothing())


class JobService:
    def __init__(
        self,
        database: Database,
        registry: Registry,
        admission: Admission,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.registry = registry
        self.admission = admission
        self.settings = settings
        self.clock = clock
        self._known_tenants: set[str] = set()

    # -- create ------------------------------------------------------------------------

    def create(self, request: NewJob) -> Created:
        """Record the whole pipeline in one transaction; its first step is ready (unless
        delayed), which the dispatcher takes from there.

        Readiness is the outbox: a broker that is down, or a process that dies right after
        the commit, loses nothing, as the dispatcher admits ready jobs whoever made them.
        When the window has room and nothing else waits, the creating transaction admits
        the job itself and this process sends it (the fast path).
        """
        if problems := _request_problems(request, self.settings):
            raise InvalidInput(problems)
        if request.idempotency_key and (earlier := self._earlier(request)) is not None:
            return earlier
        now = self.clock()
        steps = self._build_pipeline(request, now)
        self._remember_tenant(request.tenant_id, now)
        try:
            self._insert(steps, [steps[0]], now)
        except IntegrityError:
            # A concurrent request with the same key won the race; answer with its job.
            if request.idempotency_key and (earlier := self._earlier(request)) is not None:
                return earlier
            raise
        for step in steps:
            log.info("job created", extra={**_ids(step), "action": "created"})
        return Created(self._created(steps), created=True)

    def create_in(self, session: sa.orm.Session, request: NewJob) -> JobDetails:
        """Record the pipeline in the caller's transaction (`session`, a session of the
        caller's on this database): the job exists, and runs, only if that transaction
        commits. The job is ready in the rows it commits (the outbox), so a process that
        dies between its commit and the dispatcher's nudge loses nothing: the dispatcher
        admits ready jobs at its next look. A rollback leaves nothing, and sends nothing.

        An idempotency key already used by a committed job answers with that job; two
        uncommitted uses collide at the caller's commit (the key is unique per tenant)."""
        if problems := _request_problems(request, self.settings):
            raise InvalidInput(problems)
        self._check_same_database(session)
        if request.idempotency_key and (earlier := self._earlier(request)) is not None:
            return earlier.details
        now = self.clock()
        steps = self._build_pipeline(request, now)
        _record_tenant(session, request.tenant_id, now)
        transitions.insert_pipeline(session, steps, now)
        sa.event.listen(session, "after_commit", lambda _: self._committed(steps), once=True)
        return self._created(steps)

    def _committed(self, steps: list[Job]) -> None:
        for step in steps:
            log.info("job created", extra={**_ids(step), "action": "created"})
        self.admission.became_ready()

    def _check_same_database(self, session: sa.orm.Session) -> None:
        """The caller's session must write where the dispatcher reads."""
        theirs = session.get_bind().engine.url
        ours = self.database.engine.url
        same = (theirs.drivername.split("+")[0], theirs.host, theirs.port, theirs.database)
        if same != (ours.drivername.split("+")[0], ours.host, ours.port, ours.database):
            raise OrchestratorError(
                "session= must be a session on the orchestrator's database "
                f"({ours.render_as_string(hide_password=True)})"
            )

    def create_batch(
        self,
        requests: Sequence[NewJob],
        *,
        idempotency_key: str | None = None,
        asked_earlier: bool = False,
    ) -> BatchCreated:
        """Many jobs in one transaction and one dispatch call, all or none.

        The jobs carry no keys of their own; `idempotency_key` (one tenant's batch) names
        the whole batch: each job is recorded under the key and its index, so a repeat with the
        same key and the same jobs answers with the jobs made the first time, and one with
        other jobs is an `IdempotencyConflict`. `asked_earlier`: the caller found no earlier
        batch under the key just now (`earlier_batch`), so it is not looked up again; a
        concurrent repeat still answers with its jobs.
        """
        problems = [
            FieldError(f"jobs.{index}.{error.field}", error.message)
            for index, request in enumerate(requests)
            for error in self._problems_of(request)
        ]
        if problems:
            raise InvalidInput(problems)
        if idempotency_key:
            requests = _keyed(requests, idempotency_key)
            earlier = None if asked_earlier else self._earlier_batch(requests, idempotency_key)
            if earlier is not None:
                return earlier
        now = self.clock()
        pipelines = [self._build_pipeline(request, now) for request in requests]
        for tenant_id in {request.tenant_id for request in requests}:
            self._remember_tenant(tenant_id, now)
        rows = [step for steps in pipelines for step in steps]
        try:
            self._insert(rows, [steps[0] for steps in pipelines], now)
        except IntegrityError:
            # A concurrent repeat of the keyed batch won the race; answer with its jobs.
            if idempotency_key and (earlier := self._earlier_batch(requests, idempotency_key)):
                return earlier
            raise
        _log_created(pipelines)
        return BatchCreated([self._created(steps) for steps in pipelines], True)

    def _insert(self, rows: list[Job], heads: list[Job], now: datetime) -> None:
        """Record the rows, once, and admit the ready `heads` if nothing waits before them
        (`Admission.admit_new`, in the same transaction); then send those, or tell the
        dispatcher there is work. When no window has room (a busy system) nothing is
        admitted, and the rows (jobs and their events: one statement on PostgreSQL) go in
        by themselves, as a worker's claim does (`transitions.insert_pipeline_alone`).

        Either way the work runs again on a new connection when the server dropped the
        first; if the first had committed (the connection lost inside its COMMIT), the
        second fails on the rows' own ids, which are there: what was asked for is done."""
        ready = [head for head in heads if head.ready_since is not None]
        room = self.admission.room({head.queue for head in ready})

        def insert_and_admit(session: sa.orm.Session) -> list[Delivery]:
            transitions.insert_pipeline(session, rows, now)
            return self.admission.admit_new(session, ready, room, now)

        try:
            if any(free > 0 for free in room.values()):
                deliveries = self.database.unit(insert_and_admit)
            else:
                transitions.insert_pipeline_alone(self.database, rows, now)
                deliveries = []
        except IntegrityError:
            with self.database.session() as session:
                if session.get(Job, rows[0].id) is None:
                    raise
            log.warning(
                "insert found its rows recorded by an earlier try",
                extra={**_ids(rows[0]), "action": "created"},
            )
            deliveries = []
        self.admission.after_commit(deliveries, more_ready=len(ready) > len(deliveries))

    def earlier_batch(self, requests: Sequence[NewJob], key: str) -> BatchCreated | None:
        """What a keyed batch made before (see `create_batch`), or `None`; an
        `IdempotencyConflict` if the key was used for other jobs."""
        if any(request.idempotency_key for request in requests):
            return None  # refused by create_batch: jobs in a batch carry no keys
        return self._earlier_batch(_keyed(requests, key), key)

    def _earlier_batch(self, requests: Sequence[NewJob], key: str) -> BatchCreated | None:
        """The jobs a keyed batch made before, or `None` if it made none."""
        tenant_id = requests[0].tenant_id
        keys = [request.idempotency_key for request in requests]
        # One place past the end as well: an earlier batch under the key that was longer.
        probe = [*keys, _batch_item_key(key, len(keys))]
        if len(requests) == 1:
            legacy = self._legacy_batch_of_one(requests[0], key)
            if legacy is not None:
                return legacy
        with self.database.session() as session:
            heads = {
                job.idempotency_key: job
                for job in session.scalars(
                    sa.select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key.in_(probe))
                )
            }
            if not heads:
                return None
            if len(heads) != len(requests) or any(
                request.idempotency_key not in heads
                or heads[request.idempotency_key].request_digest != request.digest()
                for request in requests
            ):
                raise IdempotencyConflict(key)
            if archived := [head.id for head in heads.values() if head.archived_at is not None]:
                raise JobArchived(archived[0])  # as a single create's repeat answers
            steps: dict[str, list[Job]] = {}
            for step in session.scalars(
                sa.select(Job)
                .where(
                    Job.tenant_id == tenant_id,
                    Job.pipeline_id.in_([head.pipeline_id for head in heads.values()]),
                )
                .order_by(Job.pipeline_id, Job.step_index)
            ):
                steps.setdefault(step.pipeline_id, []).append(step)
        details = [JobDetails(job=heads[k], steps=steps[heads[k].pipeline_id]) for k in keys]
        return BatchCreated(details, created=False)

    def _legacy_batch_of_one(self, request: NewJob, key: str) -> BatchCreated | None:
        """A job keyed `K#0` alone, recorded before migration 0011, could be a batch of one
        under `K` or a single job under `K#0`: the migration keyed it apart (`K` and
        LEGACY_ITEM), and the same request either way answers with it."""
        head = self._legacy_item(request, f"{key}{LEGACY_ITEM}")
        if head is None:
            return None
        return BatchCreated([self.get(request.tenant_id, head.id)], created=False)

    def _legacy_item(self, request: NewJob, legacy_key: str) -> Job | None:
        with self.database.session() as session:
            return session.scalar(
                sa.select(Job).where(
                    Job.tenant_id == request.tenant_id,
                    Job.idempotency_key == legacy_key,
                    Job.request_digest == request.digest(),
                )
            )

    def _problems_of(self, request: NewJob) -> list[FieldError]:
        if request.idempotency_key:
            return [FieldError("idempotencyKey", "is not accepted in a batch")]
        try:
            self.registry.pipeline_of(request.type)[0].validate_input(request.input)
        except InvalidInput as exc:
            return exc.errors
        except UnknownJobType as exc:
            return [FieldError("type", str(exc))]
        return _request_problems(request, self.settings)

    def _remember_tenant(self, tenant_id: str, now: datetime) -> None:
        """Record a tenant the first time it is seen (its tier decides its retention).

        A statement of its own: it may be repeated, so it need not share the jobs'."""
        if tenant_id in self._known_tenants:
            return

        self.database.statement(lambda session: _record_tenant(session, tenant_id, now))
        if len(self._known_tenants) >= KNOWN_TENANTS_CACHE:
            self._known_tenants.clear()
        self._known_tenants.add(tenant_id)

    def _earlier(self, request: NewJob) -> Created | None:
        with self.database.session() as session:
            job = session.scalar(
                sa.select(Job).where(
                    Job.tenant_id == request.tenant_id,
                    Job.idempotency_key == request.idempotency_key,
                )
            )
        key = request.idempotency_key or ""
        if job is None and key.endswith("#0"):  # keyed apart by migration 0011
            job = self._legacy_item(request, f"{key[:-2]}{LEGACY_ITEM}")
        if job is None:
            return None
        if job.request_digest != request.digest():
            raise IdempotencyConflict(request.idempotency_key or "")
        return Created(self.get(request.tenant_id, job.id), created=False)

    def _build_pipeline(self, request: NewJob, now: datetime) -> list[Job]:
        """Every step up front: the first `queued`, the rest `waiting` on their upstream."""
        types = self.registry.pipeline_of(request.type)
        workflow = types[0].workflow
        # Later steps get their type's defaults; registry.check() proved those are valid.
        # A workflow's gates each get its input: each builds its stage's inputs from it.
        inputs = [types[0].validate_input(request.input)]
        inputs += [inputs[0] if workflow else t.validate_input({}) for t in types[1:]]
        pipeline_id = new_job_id()
        steps: list[Job] = []
        for index, (job_type, data) in enumerate(zip(types, inputs, strict=True)):
            step = _step_row(
                request,
                job_type,
                data=data.model_dump(mode="json"),
                index=index,
                job_id=pipeline_id if index == 0 else new_job_id(),
                pipeline_id=pipeline_id,
                parent_id=steps[-1].id if steps else None,
                now=now,
            )
            step.step = gate_name(index) if workflow else None
            steps.append(step)
        head = steps[0]
        head.idempotency_key = request.idempotency_key
        head.request_digest = request.digest() if request.idempotency_key else None
        head.run_at = self._run_at(request, now)
        # The outbox entry: ready now, or (delayed) once the dispatcher finds it due.
        head.ready_since = None if head.run_at else now
        head.trace_context = tracing.current_traceparent()
        return steps

    def _created(self, steps: list[Job]) -> JobDetails:
        """A new pipeline's details; a workflow's with its steps, none started yet."""
        definition = self.registry.resolve(steps[0].type).workflow
        state = None if definition is None else workflow_state(None, definition, steps, "")
        return JobDetails(job=steps[0], steps=steps, workflow=state)

    @staticmethod
    def _run_at(request: NewJob, now: datetime) -> datetime | None:
        if request.run_at is not None and request.run_at > now:
            # In UTC, as every time stored: an offset with seconds (a caller's own tzinfo)
            # has no place in the ISO 8601 that carries the rows to PostgreSQL.
            return request.run_at.astimezone(UTC)
        if request.delay_seconds:
            return now + timedelta(seconds=request.delay_seconds)
        return None

    # -- read ----------------------------------------------------------------------------

    def get(self, tenant_id: str, job_id: str) -> JobDetails:
        with self.database.session() as session:
            job = _owned(session, tenant_id, job_id)
            steps = session.scalars(
                sa.select(Job)
                .where(Job.pipeline_id == job.pipeline_id, Job.tenant_id == tenant_id)
                .order_by(Job.step_index)
            ).all()
            joins = [step.id for step in steps if step.waiting_on is not None]
            definition = self.registry.resolve(job.type).workflow
            return JobDetails(
                job=job,
                steps=list(steps),
                children=_children(session, joins),
                workflow=None
                if definition is None
                else workflow_state(session, definition, steps, tenant_id),
            )

    def children(
        self,
        tenant_id: str,
        job_id: str,
        *,
        limit: int = 50,
        after: int = -1,
        step: str | None = None,
    ) -> tuple[list[Job], int | None]:
        """The children a join waits for (or waited for), in spawn order, `limit` at a
        time after the item `after`; and the item to pass as `after` for the next page.
        `step`: only a workflow step's. `JobNotFound` for an unknown job or another
        tenant's."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        with self.database.session() as session:
            _owned(session, tenant_id, job_id)
            rows = list(
                session.scalars(
                    sa.select(Job)
                    .where(
                        Job.join_id == job_id,
                        Job.tenant_id == tenant_id,
                        Job.item_index > after,
                        *([Job.step == step] if step is not None else []),
                    )
                    .order_by(Job.item_index)
                    .limit(limit + 1)
                )
            )
        more = len(rows) > limit
        return rows[:limit], (rows[limit - 1].item_index if more else None)

    def list_jobs(
        self, tenant_id: str, filters: JobFilter, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Newest first; `cursor` is the last id of the previous page."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        query = _filtered(tenant_id, filters)
        if cursor is not None:
            query = query.where(Job.id < cursor)
        with self.database.session() as session:
            jobs = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
        more = len(jobs) > limit
        return Page(jobs=jobs[:limit], next_cursor=jobs[limit - 1].id if more else None)

    def events(
        self, tenant_id: str, job_id: str, *, after: int = 0, limit: int = 500
    ) -> list[JobEvent]:
        self.get(tenant_id, job_id)  # 404 for another tenant's job, before reading events
        with self.database.session() as session:
            return list(
                session.scalars(
                    sa.select(JobEvent)
                    .where(
                        JobEvent.job_id == job_id,
                        JobEvent.tenant_id == tenant_id,
                        JobEvent.id > after,
                    )
                    .order_by(JobEvent.id)
                    .limit(max(1, min(limit, 1000)))
                )
            )

    def status_counts(self, tenant_id: str) -> dict[str, int]:
        """How many of the tenant's (unarchived) jobs are in each status."""
        with self.database.session() as session:
            rows = session.execute(
                sa.select(Job.status, sa.func.count())
                .where(Job.tenant_id == tenant_id, Job.archived_at.is_(None))
                .group_by(Job.status)
            ).all()
        return {str(status): count for status, count in rows}

    def load(self, tenant_id: str) -> tenant_stats.TenantLoad:
        """The tenant's live jobs by where they stand in dispatch (its backlog)."""
        with self.database.session() as session:
            found = tenant_stats.loads(session, tenant_id)
        return found.get(tenant_id, tenant_stats.TenantLoad(tenant_id))

    def place_in_line(self, job: Job) -> tenant_stats.Place | None:
        """Where a due job stands in its tenant's line (None if it is not in one)."""
        with self.database.session() as session:
            return tenant_stats.place_in_line(session, job)

    def finished_per_minute(
        self, tenant_id: str, minutes: int = 60
    ) -> list[tuple[datetime, dict[str, int]]]:
        """Jobs that finished in each of the last `minutes` minutes, by terminal status,
        oldest minute first (minutes with none included, as zeros)."""
        now = self.clock().replace(second=0, microsecond=0)
        start = now - timedelta(minutes=minutes - 1)
        with self.database.session() as session:
            rows = session.execute(
                sa.select(Job.finished_at, Job.status).where(
                    Job.tenant_id == tenant_id,
                    Job.finished_at >= start,
                    Job.archived_at.is_(None),
                )
            ).all()
        buckets = [
            (start + timedelta(minutes=i), dict.fromkeys(TERMINAL_NAMES, 0)) for i in range(minutes)
        ]
        for finished_at, status in rows:
            if finished_at is None:
                continue
            index = int((finished_at - start).total_seconds() // 60)
            if 0 <= index < minutes:
                buckets[index][1][str(status)] += 1
        return buckets

    # -- cancel and retry ------------------------------------------------------------------

    def cancel(self, tenant_id: str, job_id: str) -> JobDetails:
        """Cancel the job and the steps after it, and answer at once.

        A job that waits is `cancelled` on return. A running one is asked to stop: it is
        still `running`, with `cancel_requested_at` set, and its worker's heartbeat stops
        it within a beat; its events say when. Nothing here waits for a worker, so a web
        thread is never held by a handler that is slow to stop. A repeat of a cancel
        (however many) only reads.
        """
        details = self.get(tenant_id, job_id)
        if details.workflow is not None:
            return self._cancel_workflow(details)
        if _cancel_is_news(details.job):
            self._cancel_jobs(tenant_id, [details.job.id])
            details = self.get(tenant_id, job_id)
        if details.job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise JobConflict(f"job {job_id} already {details.job.status}; nothing to cancel")
        return details

    def _cancel_workflow(self, details: JobDetails) -> JobDetails:
        """Cancel a workflow's run from its first gate not finished: one that waits is
        cancelled (with its stage's jobs not finished, and every later gate); one that
        runs is asked to stop, and the gate after it, which would join what it spawns, is
        cancelled, so that it spawns nothing."""
        job, state = details.job, details.workflow
        assert state is not None
        if state.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise JobConflict(f"workflow {job.id} already {state.status}; nothing to cancel")
        unfinished = [g for g in details.steps[job.step_index :] if not g.status.is_terminal]
        running = bool(unfinished) and unfinished[0].status is JobStatus.RUNNING
        targets = unfinished[: 2 if running else 1]
        if any(_cancel_is_news(gate) for gate in targets):
            self._cancel_jobs(job.tenant_id, [gate.id for gate in targets])
        details = self.get(job.tenant_id, job.id)
        if details.workflow is not None and details.workflow.status == JobStatus.SUCCEEDED:
            raise JobConflict(f"workflow {job.id} already succeeded; nothing to cancel")
        return details

    def _cancel_jobs(self, tenant_id: str, job_ids: list[str]) -> None:
        with self.database.transaction() as session:
            for job_id in job_ids:
                status = transitions.cancel(
                    session, _owned(session, tenant_id, job_id), self.clock()
                )
                log.info(
                    "job cancel: %s",
                    status,
                    extra={"job_id": job_id, "tenant_id": tenant_id, "action": "cancel"},
                )

    def wait_while_running(self, tenant_id: str, job_id: str, timeout: float) -> JobDetails:
        """The job once it is no longer running, or as it is after `timeout` seconds (for
        the command line, which may wait for a cancelled run to stop)."""
        deadline = time.monotonic() + timeout
        details = self.get(tenant_id, job_id)
        while details.job.status is JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(CANCEL_POLL_SECONDS)
            details = self.get(tenant_id, job_id)
        return details

    def retry(self, tenant_id: str, job_id: str, *, run_now: bool = False) -> JobDetails:
        """Run a failed or cancelled job again, with the steps after it.

        A job that was cancelled before a `runAt` still ahead keeps it (it runs then)
        unless `run_now`; any other runs now.
        """
        with self.database.transaction() as session:
            job = _owned(session, tenant_id, job_id)
            steps = self._requeue(session, job, run_now=run_now)
        if not steps:
            raise JobConflict(
                f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
            )
        self.admission.became_ready()
        return self.get(tenant_id, job_id)

    def retry_failed(
        self,
        tenant_id: str,
        filters: JobFilter,
        *,
        limit: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[str]:
        """Bulk retry of the dead-letter set (failed jobs) matching `filters`;
        `progress(done, total)` after each job."""
        query = _filtered(tenant_id, JobFilter(status=JobStatus.FAILED, type=filters.type))
        query = query.order_by(Job.id).limit(max(1, min(limit, MAX_BULK_RETRY)))
        retried: list[str] = []
        with self.database.session() as session:
            candidates = list(session.scalars(query.with_only_columns(Job.id)))
        for done, job_id in enumerate(candidates, start=1):
            try:
                # The row as it is now: another retry may have taken it since the listing
                # (the conditional update then refuses it), and no stale copy is written back.
                with self.database.transaction() as session:
                    steps = self._requeue(session, _owned(session, tenant_id, job_id))
            except (JobConflict, JobArchived):
                # Not retryable now: its upstream step failed too (that one is retried
                # instead), or it was archived since the listing.
                steps = []
            if steps:
                retried.append(job_id)
            if progress is not None:
                progress(done, len(candidates))
        if retried:
            self.admission.became_ready()
        return retried

    def _requeue(self, session: sa.orm.Session, job: Job, *, run_now: bool = False) -> list[Job]:
        """Requeue with a fresh budget of attempts: its type's, or, in a process that does
        not define the type (a command line without the job's module), the one the job
        recorded when it was created; the workers run it either way."""
        if job.step is not None:
            return self._retry_workflow(session, job)
        if job.parent_id is not None:
            parent = session.get(Job, job.parent_id)
            if parent is not None and parent.status is not JobStatus.SUCCEEDED:
                raise JobConflict(f"retry the upstream step {parent.id} instead")
        _check_family_retry(session, job)
        attempts = _budget(self.registry, job)
        now = self.clock()
        run_at = job.run_at if job.run_at is not None and job.run_at > now and not run_now else now
        return transitions.requeue(session, job, attempts, now, run_at=run_at)

    def _retry_workflow(self, session: sa.orm.Session, job: Job) -> list[Job]:
        """A retry of a workflow, or of any of its jobs, runs it again from its first gate
        that did not succeed: the jobs of that gate's stage that did not succeed run again
        (a map's within its concurrency), then the gate, then the rest of the workflow."""
        run, _ = workflow_run_of(session, job.id, job.tenant_id)
        gates = session.scalars(
            sa.select(Job)
            .where(Job.pipeline_id == run, Job.tenant_id == job.tenant_id)
            .order_by(Job.step_index)
        ).all()
        first = next((gate for gate in gates if gate.status is not JobStatus.SUCCEEDED), None)
        if first is None or not first.status.is_terminal:
            raise JobConflict(
                f"workflow {run} is {'succeeded' if first is None else 'still running'}; "
                "only a failed or cancelled workflow can be retried"
            )
        now, budget = self.clock(), _budget(self.registry, first)
        stage = session.scalars(
            sa.select(Job)
            .where(Job.join_id == first.id, Job.tenant_id == job.tenant_id)
            .order_by(Job.item_index)
        ).all()
        if any(not member.status.is_terminal for member in stage):
            raise JobConflict(f"workflow {run}: wait until its jobs have stopped, then retry")
        workflow = self.registry.get(first.type).workflow
        lost = [member for member in stage if member.status is not JobStatus.SUCCEEDED]
        if changed := changed_since_run(
            first.type, workflow, len(gates), (str(member.step) for member in lost)
        ):
            raise JobConflict(changed)
        reruns = _reruns(self.registry, workflow, lost)
        if first.step_index == 0:
            again = transitions.requeue(session, first, budget, now, run_at=now)
        else:
            again = transitions.retry_stage(session, first, budget, reruns, now)
        if not again:
            raise JobConflict(f"workflow {run} was retried meanwhile")
        return again


def _reruns(registry: Registry, workflow: Workflow | None, lost: Sequence[Job]) -> list[Rerun]:
    """Each lost job again with a fresh budget; a map's past its concurrency held."""
    started: Counter[str] = Counter()
    reruns = []
    for member in lost:
        cap = workflow.step(str(member.step)).concurrency if workflow else None
        started[str(member.step)] += 1
        held = cap is not None and started[str(member.step)] > cap
        reruns.append(Rerun(member, _budget(registry, member), held))
    return reruns


def _check_family_retry(session: sa.orm.Session, job: Job) -> None:
    """Retries inside a fan-out are not supported yet: a child's end was counted by its
    join (a second end would count twice), and a join runs only after its children."""
    if job.join_id is not None:
        raise JobConflict(
            f"job {job.id} is a child of join {job.join_id}: a child cannot be retried by hand yet"
        )
    if job.waiting_on is not None:
        unfinished = session.scalar(
            sa.select(sa.func.count()).where(
                Job.join_id == job.id, Job.status != JobStatus.SUCCEEDED
            )
        )
        if unfinished:
            raise JobConflict(
                f"join {job.id} has {unfinished} child job(s) that did not succeed: "
                "it cannot be retried without them yet"
            )


def status_counts(
    database: Database, tenant_id: str, since: datetime, until: datetime
) -> dict[str, int]:
    """How many of the tenant's jobs created in [since, until) are in each status."""
    with database.session() as session:
        rows = session.execute(
            sa.select(Job.status, sa.func.count())
            .where(Job.tenant_id == tenant_id, Job.created_at >= since, Job.created_at < until)
            .group_by(Job.status)
        ).all()
    return {str(status): count for status, count in rows}


def _filtered(tenant_id: str, filters: JobFilter) -> sa.Select[Job]:
    query = sa.select(Job).where(Job.tenant_id == tenant_id, Job.archived_at.is_(None))
    if filters.status is not None:
        query = query.where(Job.status == filters.status)
    if filters.type is not None:
        query = query.where(Job.type == filters.type)
    return query


# A keyed batch's jobs are keyed `<key>` + BATCH_KEY_SEPARATOR + `<index>`, within the
# column's 256 characters. The separator is a control character, which no key given for a
# single job may hold (`text.name_problem`), so the two kinds of keys never meet.
BATCH_KEY_SEPARATOR = "\x1f"
# What migration 0011 put in place of `#0` in the key of a job recorded alone under `K#0`
# (a batch of one, or a single job: see `_legacy_batch_of_one`).
LEGACY_ITEM = "\x1e0"
MAX_BATCH_KEY_LENGTH = 256 - len(f"{BATCH_KEY_SEPARATOR}999")


def _request_problems(request: NewJob, settings: Settings) -> list[FieldError]:
    """What is wrong with a request whichever way it came (API, CLI, Python, cron)."""
    if problem := tenant_id_problem(request.tenant_id):
        return [FieldError("tenant", problem)]
    texts = [("type", request.type, text_problem), ("subject", request.subject, text_problem)]
    texts.append(("idempotencyKey", request.idempotency_key, name_problem))
    problems = [
        FieldError(name, problem)
        for name, value, check in texts
        if value is not None and (problem := check(value))
    ]
    if not MIN_PRIORITY <= request.priority <= MAX_PRIORITY:
        problems.append(FieldError("priority", f"must be {MIN_PRIORITY} to {MAX_PRIORITY}"))
    return problems + input_problems(request.input, settings)


def _log_created(pipelines: list[list[Job]]) -> None:
    if log.isEnabledFor(logging.INFO):  # one line per job, so a grep finds each one
        for steps in pipelines:
            for step in steps:
                log.info("job created (batch)", extra={**_ids(step), "action": "created"})


def _keyed(requests: Sequence[NewJob], key: str) -> list[NewJob]:
    """A keyed batch's jobs, each under the batch's key and its place in the batch."""
    if len({request.tenant_id for request in requests}) != 1:
        raise ValueError("a keyed batch belongs to one tenant")
    return [
        replace(request, idempotency_key=_batch_item_key(key, index))
        for index, request in enumerate(requests)
    ]


def _batch_item_key(key: str, index: int) -> str:
    return f"{key}{BATCH_KEY_SEPARATOR}{index}"


def _budget(registry: Registry, job: Job) -> int:
    if job.type in registry:
        return registry.get(job.type).retry.max_attempts
    if job.attempt_budget is not None:
        return job.attempt_budget
    raise OrchestratorError(
        f"job {job.id} is of type {job.type!r}, which this process does not define, and "
        "does not record its attempts (it was retried before they were recorded): load "
        "the module that defines it (ORCH_JOB_MODULES) to retry it"
    )


def _cancel_is_news(job: Job) -> bool:
    """Whether a cancel would change anything: not for a finished job, nor for a running
    one whose worker was already asked to stop."""
    if job.status is JobStatus.RUNNING:
        return job.cancel_requested_at is None
    return not job.status.is_terminal


def _owned(session: sa.orm.Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job: 404 if it is someone else's or unknown, 410 once archived."""
    if not ID_PATTERN.fullmatch(job_id):  # not an id we made; the database need not look
        raise JobNotFound(job_id)
    job = session.scalar(sa.select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise JobNotFound(job_id)
    if job.archived_at is not None:
        raise JobArchived(job_id)
    return job


def _children(session: sa.orm.Session, joins: list[str]) -> dict[str, dict[str, int]]:
    """Each join's children by status (one probe of `ix_jobs_join_id` per join)."""
    if not joins:
        return {}
    counts: dict[str, dict[str, int]] = {join: {} for join in joins}
    rows = session.execute(
        sa.select(Job.join_id, Job.status, sa.func.count())
        .where(Job.join_id.in_(joins))
        .group_by(Job.join_id, Job.status)
    )
    for join_id, status, count in rows:
        counts[str(join_id)][JobStatus(status).value] = count
    return counts


def _spawned(index: int, job_type: str, problem: FieldError) -> FieldError:
    return FieldError(f"spawn[{index}] {job_type} {problem.field}", problem.message)


def child_rows(
    registry: Registry, settings: Settings, parent: Job, spawns: Sequence[Spawn], now: datetime
) -> list[Job]:
    """The rows of the children a run spawned (`JobContext.spawn`): each ready, a pipeline
    of its own, its parent's tenant, subject and priority, its parent as its upstream.
    `UnknownJobType` or `InvalidInput` (each input is checked as an API request's is); a
    type with a `then` step cannot be spawned yet (`JobDefinitionError`)."""
    if not spawns:
        return []
    if parent.join_id is not None:
        raise JobDefinitionError("a child job cannot spawn children of its own yet")
    if len(spawns) > MAX_CHILDREN:
        raise JobDefinitionError(f"{len(spawns)} children spawned; at most {MAX_CHILDREN}")
    return [
        _child_row(registry, settings, parent, spawn, index=i, now=now)
        for i, spawn in enumerate(spawns)
    ]


def _child_row(
    registry: Registry, settings: Settings, parent: Job, spawn: Spawn, *, index: int, now: datetime
) -> Job:
    job_type = registry.get(spawn.type)
    if job_type.then is not None or job_type.workflow is not None:
        raise JobDefinitionError(f"{spawn.type} has steps of its own: it cannot be spawned")
    if problems := input_problems(spawn.input, settings):
        raise InvalidInput([_spawned(index, spawn.type, p) for p in problems])
    try:
        data = job_type.validate_input(spawn.input).model_dump(mode="json")
    except InvalidInput as exc:
        raise InvalidInput([_spawned(index, spawn.type, p) for p in exc.errors]) from None
    request = NewJob(tenant_id=parent.tenant_id, type=spawn.type, subject=parent.subject)
    job_id = new_job_id()
    # A map's job past its concurrency waits (`held`): a sibling's end releases it.
    row = _step_row(
        request, job_type, data=data, index=0, job_id=job_id, pipeline_id=job_id,
        parent_id=parent.id, now=now, held=spawn.held,
    )  # fmt: skip
    row.priority = parent.priority
    row.step = spawn.step
    row.trace_context = parent.trace_context
    row.ready_since = None if spawn.held else now
    return row


def _step_row(
    request: NewJob,
    job_type: JobType,
    *,
    data: dict[str, Any],
    index: int,
    job_id: str,
    pipeline_id: str,
    parent_id: str | None,
    now: datetime,
    held: bool = False,
) -> Job:
    first = index == 0 and not held
    return Job.fresh(
        id=job_id,
        tenant_id=request.tenant_id,
        type=job_type.name,
        subject=request.subject,
        input=data,
        status=JobStatus.QUEUED if first else JobStatus.WAITING,
        priority=request.priority,
        queue=job_type.queue,
        attempt=0,
        requeues=0,
        parks=0,
        max_attempts=job_type.retry.max_attempts,
        attempt_budget=job_type.retry.max_attempts,
        pipeline_id=pipeline_id,
        parent_id=parent_id,
        step_index=index,
        created_by=request.created_by,
        created_at=now,
        updated_at=now,
    )


def _ids(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "tenant_id": job.tenant_id,
        "job_type": job.type,
        "attempt": job.attempt,
    }
