"""SQLAlchemy models: jobs and their events.

Rows are read by the service and written by `orchestrator.transitions`; nothing else sets
`status`. Every index here serves a query on a hot path (see the comment beside it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from orchestrator.states import CLAIMABLE, LIVE, JobStatus

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware.

    SQLite has no time zones and hands back naive values; normalising here keeps every
    comparison in the code between aware datetimes.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


def status_type(*, checked: bool) -> sa.Enum:
    """The status column type: a checked string, readable by any SQL client."""
    return sa.Enum(
        JobStatus,
        name="job_status",
        native_enum=False,
        create_constraint=checked,
        length=16,
        values_callable=lambda enum: [member.value for member in enum],
        validate_strings=True,
    )


def _status_in(states: Iterable[JobStatus]) -> str:
    return f"status IN ({', '.join(repr(status.value) for status in states)})"


# The gauges' index holds live jobs only (`states.LIVE`).
LIVE_STATES_SQL = _status_in(LIVE)
UNARCHIVED_SQL = "archived_at IS NULL"
# A ready job: claimable and due, waiting for the dispatcher to admit it into the broker's
# window (`orchestrator.admission`). A scheduled one: claimable, due later (a delay, a
# retry's backoff) until the dispatcher finds it due. The queries that look for them say
# so in these very words, so that the index holding nothing else serves them in any plan.
READY_SQL = f"ready_since IS NOT NULL AND {_status_in(sorted(CLAIMABLE))}"
SCHEDULED_SQL = f"ready_since IS NULL AND {_status_in(sorted(CLAIMABLE))}"


def _partial(name: str, columns: list[Any], where: str) -> sa.Index:
    return sa.Index(name, *columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where))


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(128))
    type: Mapped[str] = mapped_column(sa.String(128))
    subject: Mapped[str | None] = mapped_column(sa.String(256))
    input: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[JobStatus] = mapped_column(status_type(checked=True))
    # 1 to 10, higher first among one tenant's ready jobs.
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=5, server_default="5")
    queue: Mapped[str] = mapped_column(sa.String(64))
    attempt: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer)
    # The attempts its type gave it: what a retry by hand grants again.
    attempt_budget: Mapped[int | None] = mapped_column(sa.SmallInteger)
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker: Mapped[str | None] = mapped_column(sa.String(256))
    progress: Mapped[float | None] = mapped_column(sa.Float)
    progress_message: Mapped[str | None] = mapped_column(sa.String(1024))
    result: Mapped[Any | None] = mapped_column(JSONType)
    error_type: Mapped[str | None] = mapped_column(sa.String(256))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    error_traceback: Mapped[str | None] = mapped_column(sa.Text)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(256))
    # A digest of the creating request, so a reused key with another body is refused.
    request_digest: Mapped[str | None] = mapped_column(sa.String(64))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Manual retries so far.
    requeues: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    pipeline_id: Mapped[str] = mapped_column(sa.String(40))
    parent_id: Mapped[str | None] = mapped_column(sa.ForeignKey("jobs.id"))
    step_index: Mapped[int] = mapped_column(sa.SmallInteger, default=0)
    # A child spawned by a handler (`JobContext.spawn`): the join it counts toward (its
    # parent's next step) and its place among its siblings. A join: its children not
    # finished yet, those failed for good, and how many may fail (-1: any number).
    join_id: Mapped[str | None] = mapped_column(sa.String(40))
    item_index: Mapped[int | None] = mapped_column(sa.Integer)
    waiting_on: Mapped[int | None] = mapped_column(sa.Integer)
    children_failed: Mapped[int | None] = mapped_column(sa.Integer)
    failures_allowed: Mapped[int | None] = mapped_column(sa.Integer)
    # In a workflow run: the step this row runs ("#0", "#1"... for its gates).
    step: Mapped[str | None] = mapped_column(sa.String(64))
    created_by: Mapped[str | None] = mapped_column(sa.String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the job became ready to run (claimable and due): written with the change that
    # makes it so, in the same transaction (the outbox: a ready job is one the dispatcher
    # still has to send). NULL while it is due later; kept after its claim, as the start of
    # its queue wait.
    ready_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The W3C `traceparent` of the request that made the job ready, so the trace of an API
    # call goes on through dispatch, the worker and the next step.
    trace_context: Mapped[str | None] = mapped_column(sa.String(64))

    @classmethod
    def fresh(cls, **values: Any) -> Job:
        """A new row that is written with Core INSERTs and only read afterwards, built
        without the ORM's change tracking: setting its three dozen attributes one event at
        a time cost about half a batch creation's Python time."""
        mapper = sa.inspect(cls)
        if not mapper.configured:  # what the ORM's own constructor would check first
            sa.orm.configure_mappers()
        job: Job = mapper.class_manager.new_instance()
        job.__dict__.update(values)
        return job

    __table_args__ = (
        # Listing a tenant's jobs newest first (ids sort by creation time).
        sa.Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        # The same, filtered by status (dead letters are `status = failed`), and the counts
        # per status. Archived jobs are out of it: their number only grows, and nothing that
        # reads by status wants them (a running job is never archived).
        _partial("ix_jobs_tenant_id_status_id", ["tenant_id", "status", "id"], UNARCHIVED_SQL),
        # A pipeline's steps, read with every job.
        sa.Index("ix_jobs_pipeline_id_step_index", "pipeline_id", "step_index"),
        # A step's successor, released (or dispatched) when the step succeeds. Without it
        # that lookup scanned every waiting job: a step's success cost more the more
        # pipelines were in flight. Partial: single-step jobs, most of them, have no parent.
        _partial("ix_jobs_parent_id", ["parent_id"], "parent_id IS NOT NULL"),
        # The ones below are partial: they hold only the rows their scan can want, so the
        # updates on every job's path (claim, success) write fewer index entries.
        # The dispatcher's admissions: per queue, per tenant, its ready jobs in the order
        # they go (higher priority, then the longest ready).
        _partial(
            "ix_jobs_ready",
            ["queue", "tenant_id", sa.desc(sa.column("priority")), "ready_since", "id"],
            READY_SQL,
        ),
        # Scheduled jobs, found when they come due.
        _partial("ix_jobs_scheduled", ["run_at"], SCHEDULED_SQL),
        # The lease reaper's scan.
        _partial("ix_jobs_lease_expires_at", ["lease_expires_at"], "lease_expires_at IS NOT NULL"),
        # Metrics' gauges (queue depth, oldest queued job) read live states only.
        _partial("ix_jobs_status_updated_at", ["status", "updated_at"], LIVE_STATES_SQL),
        # A join's children, in item order (their results, and the join's count).
        _partial("ix_jobs_join_id", ["join_id", "item_index"], "join_id IS NOT NULL"),
        # A workflow map's jobs held back by its concurrency: each of the map's jobs that
        # ends releases the first (without it, that lookup read the whole map each time).
        _partial(
            "ix_jobs_held", ["join_id", "item_index"], "status = 'waiting' AND join_id IS NOT NULL"
        ),
        # Operators' search by subject, across tenants (`operations.search`).
        _partial("ix_jobs_subject", ["subject"], "subject IS NOT NULL"),
        # Nightly archival walks finished, unarchived jobs oldest first.
        _partial(
            "ix_jobs_finished_at_unarchived",
            ["finished_at", "id"],
            f"{UNARCHIVED_SQL} AND finished_at IS NOT NULL",
        ),
        sa.UniqueConstraint("tenant_id", "idempotency_key"),
    )


class JobEvent(Base):
    """One transition, log line or progress report of a job (the `job_logs` of old)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(sa.String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(sa.String(16))
    attempt: Mapped[int] = mapped_column(sa.Integer)
    from_status: Mapped[JobStatus | None] = mapped_column(status_type(checked=False))
    to_status: Mapped[JobStatus | None] = mapped_column(status_type(checked=False))
    level: Mapped[str | None] = mapped_column(sa.String(16))
    message: Mapped[str | None] = mapped_column(sa.Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (sa.Index("ix_job_events_job_id_id", "job_id", "id"),)


class WindowEntry(Base):
    """An attempt of a job admitted into the broker's window: sent to the workers (or about
    to be, once its admission commits). Its id numbers the delivery, so a delivery that
    went missing is sent again under a new name. A claim moves the job to its next
    attempt, which leaves this row behind; the dispatcher drops such rows
    (`window.forget_claimed`), so that the claim stays one statement."""

    __tablename__ = "dispatch_window"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[str] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    queue: Mapped[str] = mapped_column(sa.String(64))
    tenant_id: Mapped[str] = mapped_column(sa.String(128))
    # The attempt the delivery is for: a claim moves the job past it.
    attempt: Mapped[int] = mapped_column(sa.Integer)
    admitted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Push modes: when the backend is to deliver it (Cloud Tasks' scheduleTime).
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # An attempt is admitted once, whoever admits it; the lookups of admission use it.
        sa.UniqueConstraint("job_id", "attempt"),
        # SQLite would hand a deleted row's id out again: a delivery's name would repeat.
        {"sqlite_autoincrement": True},
    )


class Lease(Base):
    """A named lease held by one process at a time (the dispatcher's leadership): `token`
    grows with every new holder."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(256))
    token: Mapped[int] = mapped_column(sa.BigInteger)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Tenant(Base):
    """A tenant seen by the system: its tier decides how long its finished jobs are kept."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    tier: Mapped[str | None] = mapped_column(sa.String(32))  # None: ORCH_DEFAULT_TIER
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MaintenanceRun(Base):
    """What one maintenance run did, for operators: counts per tenant, duration, outcome."""

    __tablename__ = "maintenance_runs"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(sa.String(32))
    job_id: Mapped[str | None] = mapped_column(sa.String(40))
    dry_run: Mapped[bool] = mapped_column(sa.Boolean)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(sa.String(16))  # running, succeeded, failed
    total: Mapped[int] = mapped_column(sa.Integer, default=0)
    per_tenant: Mapped[dict[str, int]] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(sa.Text)

    __table_args__ = (sa.Index("ix_maintenance_runs_kind_started_at", "kind", "started_at"),)


class CronFire(Base):
    """The fire ledger: one row per cron occurrence that fired."""

    __tablename__ = "cron_fires"

    cron_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    occurrence: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    jobs_created: Mapped[int] = mapped_column(sa.Integer)


class ApiKey(Base):
    """A tenant's API key. Only a SHA-256 digest of the key is stored: the key is random
    (256 bits), so a slow hash buys nothing, and the plaintext is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.String(128))
    name: Mapped[str] = mapped_column(sa.String(128))
    digest: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("ix_api_keys_tenant_id", "tenant_id"),)


def utcnow() -> datetime:
    return datetime.now(UTC)
