"""Request and response bodies of the public API, in the API's camelCase."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from orchestrator.ids import ID_PATTERN
from orchestrator.job_stats import DEFAULT_WINDOW_SECONDS, TenantFigures
from orchestrator.models import Job, JobEvent, MaintenanceRun
from orchestrator.registry import ALL_MAY_FAIL
from orchestrator.service import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY, JobDetails
from orchestrator.states import JobStatus
from orchestrator.tenant_stats import Standing
from orchestrator.text import name_problem, text_problem
from orchestrator.workflow_state import WorkflowState, standing

# Field names here are the API's, so they are camelCase on purpose.
# ruff: noqa: N815

# How far ahead a job may be scheduled, either way it is asked for.
MAX_DELAY = timedelta(days=366)
# The earliest `runAt` taken: older ones are surely mistakes, and the oldest ones would not
# even convert to UTC.
EARLIEST_RUN_AT = datetime(2000, 1, 1, tzinfo=UTC)


def _storable(value: str) -> str:
    if problem := text_problem(value):
        raise ValueError(problem)
    return value


def _a_name(value: str) -> str:
    if problem := name_problem(value):
        raise ValueError(problem)
    return value


# Text the database stores or compares.
Text = Annotated[str, AfterValidator(_storable)]
# A key or name: stored, compared and logged, so no control characters either.
Name = Annotated[str, AfterValidator(_a_name)]


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339_text(value: object) -> object:
    if isinstance(value, datetime) or (isinstance(value, str) and RFC3339.fullmatch(value)):
        return value
    raise ValueError("must be an RFC 3339 time with a zone, such as 2026-12-24T18:00:00Z")


# A time in a strict body: an RFC 3339 string (converted, the one conversion a strict body
# makes), never a number taken for seconds since 1970.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]
# Request bodies take JSON's own types: `{"dryRun": 0}` or `{"limit": "5"}` is a 422, not
# a guess. (Query strings are text, so their models convert.)
# NaN and Infinity: JSON has no such numbers, though Python reads them.
STRICT_BODY = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class CreateJob(BaseModel):
    model_config = STRICT_BODY

    type: Text = Field(min_length=1, max_length=128)
    input: dict[str, Any] = Field(default_factory=dict)
    subject: Text | None = Field(
        None,
        min_length=1,
        max_length=256,
        validation_alias=AliasChoices("subject", "inspectionId"),
        description="What the job is about, e.g. an inspection id (`inspectionId` also accepted).",
    )
    idempotencyKey: Name | None = Field(None, min_length=1, max_length=256)
    delaySeconds: float | None = Field(None, ge=0, le=MAX_DELAY.total_seconds())
    runAt: Timestamp | None = Field(
        None,
        strict=False,
        description="When to run, RFC 3339 (`2026-12-24T18:00:00Z`): from 2000-01-01, at "
        f"most {MAX_DELAY.days} days ahead.",
    )
    priority: int = Field(
        DEFAULT_PRIORITY,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="1 to 10, higher runs sooner among the tenant's ready jobs (in its "
        "queue). Tenants share the workers fairly whatever their jobs' priorities.",
    )

    @model_validator(mode="after")
    def _one_delay(self) -> CreateJob:
        if self.delaySeconds is not None and self.runAt is not None:
            raise ValueError("give delaySeconds or runAt, not both")
        return self

    @field_validator("runAt")
    @classmethod
    def _within_reach(cls, value: datetime | None) -> datetime | None:
        if value is not None and value > datetime.now(UTC) + MAX_DELAY:
            raise ValueError(f"is more than {MAX_DELAY.days} days ahead")
        if value is not None and value < EARLIEST_RUN_AT:
            raise ValueError(f"is before {EARLIEST_RUN_AT.isoformat().replace('+00:00', 'Z')}")
        return value


class CreateBatch(BaseModel):
    model_config = STRICT_BODY

    jobs: list[CreateJob] = Field(min_length=1, max_length=1000)


class BulkRetry(BaseModel):
    model_config = STRICT_BODY

    type: Text | None = Field(None, min_length=1, max_length=128)
    limit: int = Field(100, ge=1, le=1000)


class RetryRequest(BaseModel):
    model_config = STRICT_BODY

    runNow: bool = Field(
        False,
        description="Run at once, even a job that was cancelled before the `runAt` it still "
        "has (by default it runs at that time).",
    )


class BulkRetryResult(BaseModel):
    retried: list[str]
    count: int


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    type: Text | None = Field(None, min_length=1, max_length=128)
    limit: int = Field(50, ge=1, le=100)
    cursor: str | None = Field(
        None, pattern=f"^{ID_PATTERN.pattern}$", description="`nextCursor` of the page before."
    )


class ChildrenQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int = Field(-1, ge=-1, le=2**31 - 1, description="`nextAfter` of the page before.")
    limit: int = Field(50, ge=1, le=100)
    step: Text | None = Field(
        None, min_length=1, max_length=64, description="Only a workflow step's jobs (its name)."
    )


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: int = Field(0, ge=0, le=2**63 - 1)  # event ids are 64-bit
    limit: int = Field(500, ge=1, le=1000)


class ErrorOut(BaseModel):
    type: str
    message: str
    traceback: str | None = None


class ProgressOut(BaseModel):
    percent: float = Field(description="0 to 100.")
    message: str | None


class StepOut(BaseModel):
    id: str
    type: str
    status: JobStatus
    children: dict[str, int] | None = Field(
        None,
        description="For a step that joins the children its upstream step spawned: how "
        "many are in each status.",
    )


class PipelineOut(BaseModel):
    id: str
    steps: list[StepOut]


class WorkflowStepOut(BaseModel):
    name: str
    type: str
    after: list[str] = Field(description="The steps it runs after.")
    map: bool = Field(description="One job per item of a list (`map_step`).")
    over: str | None = Field(None, description="For a map: the list it maps over.")
    concurrency: int | None = Field(None, description="For a map: at most this many at once.")
    allowFailures: int | Literal["all"] = Field(
        description="How many of its jobs may fail for good and the workflow go on."
    )
    jobs: dict[str, int] = Field(description="Its jobs so far, by status.")
    jobId: str | None = Field(None, description="For a single step: its job, once spawned.")
    joinId: str | None = Field(
        None,
        description="The gate that joins its jobs: `GET /v1/jobs/{joinId}/children?step=` "
        "pages them.",
    )


class WorkflowOut(BaseModel):
    name: str
    status: JobStatus = Field(description="The run's as a whole.")
    steps: list[WorkflowStepOut]

    @classmethod
    def of(cls, state: WorkflowState) -> WorkflowOut:
        return cls(
            name=state.name,
            status=JobStatus(state.status),
            steps=[
                WorkflowStepOut(
                    name=s.step.name,
                    type=s.step.type,
                    after=list(s.step.after),
                    map=s.step.is_map,
                    over=s.step.over,
                    concurrency=s.step.concurrency,
                    allowFailures="all"
                    if s.step.allow_failures == ALL_MAY_FAIL
                    else s.step.allow_failures,
                    jobs=s.jobs,
                    jobId=s.job_id,
                    joinId=s.join_id,
                )
                for s in state.steps
            ],
        )


class JobOut(BaseModel):
    id: str
    tenantId: str
    type: str
    status: JobStatus
    subject: str | None
    priority: int
    queue: str
    attempt: int
    maxAttempts: int
    input: dict[str, Any]
    result: Any | None
    error: ErrorOut | None
    progress: ProgressOut | None
    createdBy: str | None
    createdAt: datetime
    updatedAt: datetime
    startedAt: datetime | None
    finishedAt: datetime | None
    runAt: datetime | None
    cancelRequestedAt: datetime | None
    upstreamId: str | None
    joinId: str | None = Field(
        None, description="For a child job (spawned by a handler): the step that joins it."
    )
    step: str | None = Field(
        None, description="In a workflow: the step this job runs (`#0`, `#1`... for its gates)."
    )
    pipeline: PipelineOut | None = None
    workflow: WorkflowOut | None = Field(
        None, description="For a workflow's run (its gates): its steps as they stand."
    )

    @classmethod
    def of(
        cls,
        job: Job,
        steps: list[Job] | None = None,
        children: dict[str, dict[str, int]] | None = None,
        workflow: WorkflowState | None = None,
    ) -> JobOut:
        ended = standing(job, steps or [job], workflow)
        return cls(
            id=job.id,
            tenantId=job.tenant_id,
            type=job.type,
            status=ended.status,
            subject=job.subject,
            priority=job.priority,
            queue=job.queue,
            attempt=job.attempt,
            maxAttempts=job.max_attempts,
            input=job.input,
            result=ended.result,
            error=_error(job),
            progress=_progress(job),
            createdBy=job.created_by,
            createdAt=job.created_at,
            updatedAt=job.updated_at,
            startedAt=job.started_at,
            finishedAt=ended.finished_at,
            runAt=job.run_at,
            cancelRequestedAt=job.cancel_requested_at,
            upstreamId=job.parent_id,
            joinId=job.join_id,
            step=job.step,
            pipeline=None
            if steps is None
            else PipelineOut(
                id=job.pipeline_id,
                steps=[
                    StepOut(
                        id=s.id, type=s.type, status=s.status, children=(children or {}).get(s.id)
                    )
                    for s in steps
                ],
            ),
            workflow=None if workflow is None else WorkflowOut.of(workflow),
        )

    @classmethod
    def of_details(cls, details: JobDetails) -> JobOut:
        return cls.of(details.job, details.steps, details.children, details.workflow)


class JobBatch(BaseModel):
    jobs: list[JobOut]


class JobPage(BaseModel):
    jobs: list[JobOut]
    nextCursor: str | None


class EventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    attempt: int
    fromStatus: JobStatus | None
    toStatus: JobStatus | None
    level: str | None
    message: str | None
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: JobEvent) -> EventOut:
        return cls(
            id=event.id,
            at=event.at,
            kind=event.kind,
            attempt=event.attempt,
            fromStatus=event.from_status,
            toStatus=event.to_status,
            level=event.level,
            message=event.message,
            data=event.data,
        )


class EventList(BaseModel):
    jobId: str
    events: list[EventOut]


def _error(job: Job) -> ErrorOut | None:
    if job.error_type is None:
        return None
    return ErrorOut(
        type=job.error_type, message=job.error_message or "", traceback=job.error_traceback
    )


def _progress(job: Job) -> ProgressOut | None:
    if job.progress is None:
        return None
    return ProgressOut(percent=round(job.progress * 100, 2), message=job.progress_message)


class ArchiveRequest(BaseModel):
    model_config = STRICT_BODY

    dryRun: bool = False


class MaintenanceRunOut(BaseModel):
    id: int
    kind: str
    jobId: str | None
    dryRun: bool
    status: str
    startedAt: datetime
    finishedAt: datetime | None
    total: int
    perTenant: dict[str, int]
    error: str | None

    @classmethod
    def of(cls, run: MaintenanceRun) -> MaintenanceRunOut:
        return cls(
            id=run.id,
            kind=run.kind,
            jobId=run.job_id,
            dryRun=run.dry_run,
            status=run.status,
            startedAt=run.started_at,
            finishedAt=run.finished_at,
            total=run.total,
            perTenant=run.per_tenant,
            error=run.error,
        )


class TenantStandingOut(BaseModel):
    tenantId: str
    tier: str
    weight: int = Field(description="Its share of admissions when tenants contend.")
    queued: int = Field(description="Due, waiting in the database for admission.")
    admitted: int = Field(description="Sent to the workers' queues, not yet started.")
    running: int
    scheduled: int = Field(description="Due later: a delay, or a retry's backoff.")
    backlog: int = Field(description="Due and not started: queued + admitted.")
    admittedLastMinute: int | None = Field(description="Null when the counts are unreadable.")
    share: float | None = Field(description="Its fraction of all admissions in the last minute.")

    @classmethod
    def of(cls, standing: Standing) -> TenantStandingOut:
        load = standing.load
        return cls(
            tenantId=load.tenant_id,
            tier=standing.tier,
            weight=standing.weight,
            queued=load.queued,
            admitted=load.admitted,
            running=load.running,
            scheduled=load.scheduled,
            backlog=load.backlog,
            admittedLastMinute=standing.admitted_last_minute,
            share=None if standing.share is None else round(standing.share, 4),
        )


class TenantStandings(BaseModel):
    tenants: list[TenantStandingOut]


class StatsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    windowSeconds: int = Field(
        DEFAULT_WINDOW_SECONDS,
        ge=60,
        le=7 * 86400,
        description="How far back the window reaches, in seconds (one minute to a week).",
    )


class SpreadOut(BaseModel):
    p50: float | None = Field(description="Median, in seconds; null if nothing was measured.")
    p95: float | None = Field(description="95th percentile (nearest rank), in seconds.")


class StatsWindowOut(BaseModel):
    since: datetime
    seconds: int
    jobs: int = Field(description="Jobs created in the window (read: at most 100,000).")
    truncated: bool = Field(description="More jobs were created than were read.")
    byType: dict[str, dict[str, int]] = Field(
        description="Per job type, how many of the window's jobs are in each status now."
    )
    failureRate: float | None = Field(
        description="failed / (succeeded + failed); null if none finished either way."
    )
    queueWaitSeconds: SpreadOut = Field(
        description="From due (created, or its delay or backoff ended) to its latest start."
    )
    runSeconds: SpreadOut = Field(
        description="From its latest start to its end, for jobs that succeeded or failed."
    )


class TenantStatsOut(BaseModel):
    tenantId: str
    byStatus: dict[str, int] = Field(description="All the tenant's jobs not archived, by status.")
    window: StatsWindowOut

    @classmethod
    def of(cls, figures: TenantFigures) -> TenantStatsOut:
        window = figures.window
        return cls(
            tenantId=figures.tenant_id,
            byStatus=figures.by_status,
            window=StatsWindowOut(
                since=window.since,
                seconds=window.seconds,
                jobs=window.jobs,
                truncated=window.truncated,
                byType=window.by_type,
                failureRate=window.failure_rate,
                queueWaitSeconds=SpreadOut(p50=window.queue_wait.p50, p95=window.queue_wait.p95),
                runSeconds=SpreadOut(p50=window.run_time.p50, p95=window.run_time.p95),
            ),
        )


class ChildList(BaseModel):
    jobId: str
    children: list[JobOut] = Field(description="The join's children, in spawn order.")
    nextAfter: int | None = Field(description="Pass as `after` for the next page; null at the end.")
