"""The job service: create, read and list jobs for a tenant. The API and CLI call this."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator import transitions
from orchestrator.db import Database
from orchestrator.dispatch import Dispatcher, DispatchError, Step
from orchestrator.errors import JobNotFound
from orchestrator.ids import new_job_id
from orchestrator.models import Job, JobEvent, utcnow
from orchestrator.registry import JobType, Registry
from orchestrator.states import JobStatus

log = logging.getLogger("orchestrator.service")

MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class NewJob:
    tenant_id: str
    type: str
    input: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None
    created_by: str | None = None


@dataclass(frozen=True)
class JobDetails:
    job: Job
    steps: list[Job]


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    type: str | None = None


class JobService:
    def __init__(
        self,
        database: Database,
        registry: Registry,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.registry = registry
        self.dispatcher = dispatcher
        self.clock = clock

    def create(self, request: NewJob) -> JobDetails:
        """Record the whole pipeline in one transaction, then hand it to the dispatcher.

        The rows carry their own dispatch intent (`dispatch_due_at`), so a broker that is
        down, or a process that dies right after the commit, loses nothing: the job is
        recorded as queued and the outbox sweeper sends it later.
        """
        steps = self._build_pipeline(request, self.clock())
        with self.database.transaction() as session:
            transitions.insert_pipeline(session, steps, self.clock())
        for step in steps:
            log.info("job created", extra={**_ids(step), "action": "created"})
        self._dispatch(steps)
        return JobDetails(job=steps[0], steps=steps)

    def get(self, tenant_id: str, job_id: str) -> JobDetails:
        with self.database.session() as session:
            job = session.scalar(sa.select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
            if job is None:
                raise JobNotFound(job_id)
            steps = session.scalars(
                sa.select(Job)
                .where(Job.pipeline_id == job.pipeline_id, Job.tenant_id == tenant_id)
                .order_by(Job.step_index)
            ).all()
            return JobDetails(job=job, steps=list(steps))

    def list_jobs(
        self, tenant_id: str, filters: JobFilter, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Newest first; `cursor` is the last id of the previous page."""
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        query = sa.select(Job).where(Job.tenant_id == tenant_id, Job.archived_at.is_(None))
        if filters.status is not None:
            query = query.where(Job.status == filters.status)
        if filters.type is not None:
            query = query.where(Job.type == filters.type)
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

    def _build_pipeline(self, request: NewJob, now: datetime) -> list[Job]:
        """Every step up front: the first `queued`, the rest `waiting` on their upstream."""
        types = self.registry.pipeline_of(request.type)
        # Later steps get their type's defaults; registry.check() proved those are valid.
        inputs = [types[0].validate_input(request.input)]
        inputs += [job_type.validate_input({}) for job_type in types[1:]]
        pipeline_id = new_job_id()
        steps: list[Job] = []
        for index, (job_type, data) in enumerate(zip(types, inputs, strict=True)):
            steps.append(
                _step_row(
                    request,
                    job_type,
                    data=data.model_dump(mode="json"),
                    index=index,
                    job_id=pipeline_id if index == 0 else new_job_id(),
                    pipeline_id=pipeline_id,
                    parent_id=steps[-1].id if steps else None,
                    now=now,
                )
            )
        return steps

    def _dispatch(self, steps: Sequence[Job]) -> None:
        try:
            self.dispatcher.dispatch([Step.of(step) for step in steps])
        except DispatchError as exc:
            log.warning(
                "dispatch failed; the outbox sweeper will retry: %s",
                exc,
                extra={**_ids(steps[0]), "action": "dispatch_failed"},
            )
            return
        with self.database.transaction() as session:
            transitions.mark_dispatched(session, [steps[0].id], self.clock())


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
) -> Job:
    first = index == 0
    return Job(
        id=job_id,
        tenant_id=request.tenant_id,
        type=job_type.name,
        subject=request.subject,
        input=data,
        status=JobStatus.QUEUED if first else JobStatus.WAITING,
        priority=0,
        queue=job_type.queue,
        attempt=0,
        max_attempts=job_type.retry.max_attempts,
        pipeline_id=pipeline_id,
        parent_id=parent_id,
        step_index=index,
        created_by=request.created_by,
        created_at=now,
        updated_at=now,
        # The outbox entry: due now for the first step; later steps get theirs when released.
        dispatch_due_at=now if first else None,
    )


def _ids(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "tenant_id": job.tenant_id, "job_type": job.type}
