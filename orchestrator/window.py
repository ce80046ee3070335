"""The dispatch window: what was admitted into the broker and not yet claimed.

A row per admitted attempt of a job (`models.WindowEntry`). Its id numbers the delivery.
Rows are written in the transaction that admits the job (the dispatcher's fill, or a
creation's fast path), so an attempt is admitted once whoever admits it (job id and
attempt are unique here). A claim moves the job to its next attempt, which leaves its row
behind: such rows are dropped (`forget_claimed`) once a second, and before anything
counts the window's rows; a delivery that went missing or was refused is taken back
(`withdraw`): its job is then ready again and admitted anew.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator.dispatch.base import Delivery
from orchestrator.models import READY_SQL, Job, WindowEntry
from orchestrator.states import CLAIMABLE

if TYPE_CHECKING:
    from orchestrator.ready import ReadyJob

WINDOW: sa.Table = WindowEntry.__table__  # type: ignore[assignment]
JOBS: sa.Table = Job.__table__  # type: ignore[assignment]


class WindowSizes:
    """How many messages each queue's window holds: `ORCH_DISPATCH_WINDOW` if set, else
    the larger of two needs:

    - the workers' concurrency: four messages per process that consumes the queue (as
      `observe` last saw it; before any was seen, per `ORCH_WORKER_CONCURRENCY`);
    - their pace: a fill starts when half the window is gone, so half a window must last
      the workers through two fills (one may start late, or run slow). Short jobs drain a
      window of a few messages faster than a fill takes, leaving the workers idle; the
      window grows with the drain rate (`observe_drain`) times a fill's duration
      (`observe_fill`), both measured, and holds at least `SECONDS` of the workers' time
      (so that a fill's fixed cost, a few round trips, is shared by enough jobs), to
      `PACE_LIMIT` times the first need at most.

    Never more than `LARGEST`.

    Sized so, a window holds a few fills' worth of the workers' time, whatever their jobs'
    length: that is how long a tenant arriving behind a flood waits for a place.
    """

    PER_PROCESS = 4
    PACE_LIMIT = 8  # pacing grows a window to eight times what concurrency needs, at most
    # Of the workers' time, at their pace, a window holds at least this much: a fill's
    # fixed cost (its statements, a read of every contending tenant's next jobs) is about
    # ten times a job's share of it, so fills of a few jobs would cost the machine more
    # than the jobs (bench/RESULTS.md); a newcomer waits this long at most more.
    SECONDS = 0.25
    LARGEST = 1000
    SMOOTHING = 0.2  # weight of a new measurement in the running figures

    def __init__(self, fixed: int, default_concurrency: int) -> None:
        self.fixed = fixed
        self.default = self.PER_PROCESS * default_concurrency
        self._seen: dict[str, int] = {}
        self._rate: dict[str, float] = {}  # messages a second the workers take, per queue
        self._floors: set[str] = set()  # queues whose figure is only a floor of their pace
        self._fill_seconds = 0.0

    def of(self, queue: str) -> int:
        if self.fixed:
            return self.fixed
        needed = max(self._seen.get(queue, self.default), self.PER_PROCESS)
        rate = self._rate.get(queue, 0.0)
        # A fill takes longer the more it admits: without a bound on pacing by the fills'
        # duration, a window that grows lengthens the fills that size it, and so on up to
        # LARGEST. The time it holds is a constant: it needs no bound of its own.
        paced = min(math.ceil(4 * rate * self._fill_seconds), needed * self.PACE_LIMIT)
        return min(max(needed, paced, math.ceil(rate * self.SECONDS)), self.LARGEST)

    def until_half(self, queue: str, waiting: int) -> float:
        """Seconds until the workers, at their pace, leave half the window: 0 while their
        pace is unknown, or known only as a floor. Timed by a floor, the next look comes
        after the window ran dry, so the pace measured then is a floor again, and the
        window grows by no more than double a fill: a backlog's first half second, workers
        left idle between fills. Looked at at once, half the window is found gone while
        some is left, which measures the pace itself."""
        rate = self._rate.get(queue, 0.0)
        if not rate or queue in self._floors:
            return 0.0
        return (waiting - self.of(queue) / 2) / rate

    def floored(self, queue: str) -> bool:
        """Whether the queue's pace is known only as a floor (its window was last found
        empty)."""
        return queue in self._floors

    def observe(self, concurrency_per_queue: dict[str, int]) -> None:
        self._seen = {q: self.PER_PROCESS * n for q, n in concurrency_per_queue.items()}

    def observe_drain(self, queue: str, taken: int, seconds: float, *, dry: bool = False) -> None:
        """The workers took `taken` messages of a full window in `seconds`. `dry`: the
        window was found empty, so they may have waited for part of that time and the
        figure is only a floor of their pace: it may raise the pace, never lower it.
        (Lowered by it, the next look would come later still, the window would run dry for
        longer, and the pace measured next would be lower again: workers left idle for
        tens of milliseconds each fill under a load that slowed them for a moment.)"""
        if seconds <= 0:
            return
        rate = taken / seconds
        old = self._rate.get(queue)
        if dry:  # a floor: taken when above the figure, which is then too low
            # ...but at most doubling it: a window emptied by a broker's flush or restart,
            # not by the workers, would give any figure at all.
            self._rate[queue] = rate if old is None else max(old, min(rate, 2 * old))
            self._floors.add(queue)
        else:
            # A measure above a floor replaces it (the floor only said "at least"); one
            # below is smoothed, as any other: it may be timed from a stale fill.
            above = queue in self._floors and old is not None and rate > old
            self._rate[queue] = rate if above else self._smooth(old, rate)
            self._floors.discard(queue)

    def observe_fill(self, seconds: float) -> None:
        """A fill took `seconds`, from its start until its messages were in the broker."""
        self._fill_seconds = self._smooth(self._fill_seconds or None, seconds)

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.SMOOTHING * (new - old)


@dataclass(frozen=True)
class Entry:
    number: int
    job_id: str
    queue: str
    admitted_at: datetime
    not_before: datetime | None

    def delivery_id(self) -> str:
        return f"{self.job_id}-d{self.number}"


def admit(
    session: Session, jobs: Sequence[ReadyJob], now: datetime, *, ahead: bool = False
) -> list[Delivery]:
    """Record these jobs as admitted; their deliveries, numbered. `ahead`: jobs due later
    are sent with their time (push modes)."""
    if not jobs:
        return []
    if session.get_bind().dialect.name == "postgresql":
        numbers = _admit_rows_postgresql(session, jobs, now, ahead=ahead)
    else:
        rows = [
            {
                "job_id": job.id,
                "queue": job.queue,
                "tenant_id": job.tenant_id,
                "attempt": job.attempt,
                "admitted_at": now,
                "not_before": _not_before(job, now, ahead=ahead),
            }
            for job in jobs
        ]
        inserted = session.execute(
            sa.insert(WINDOW).returning(WINDOW.c.id, sort_by_parameter_order=True), rows
        ).scalars()
        numbers = dict(zip((job.id for job in jobs), inserted, strict=True))
    return [_delivery(job, numbers[job.id], now, ahead=ahead) for job in jobs]


# PostgreSQL: a fill's rows as arrays, one per column (typed by their bind parameters,
# which psycopg's dialect casts). The statement's text is the same
# whatever the fill's size, so the driver prepares it once; a multi-row VALUES would be a
# new text for each size, converted and planned each time (a sixth of the dispatcher's
# CPU in a drain).
_ADMIT_ROWS = sa.text(
    """
    INSERT INTO dispatch_window (job_id, queue, tenant_id, attempt, admitted_at, not_before)
    SELECT job_id, queue, tenant_id, attempt, :now, not_before
    FROM unnest(:job_ids, :queues, :tenants, :attempts, :not_befores)
        AS admitted(job_id, queue, tenant_id, attempt, not_before)
    RETURNING id, job_id
    """
).bindparams(
    sa.bindparam("job_ids", type_=postgresql.ARRAY(sa.String())),
    sa.bindparam("queues", type_=postgresql.ARRAY(sa.String())),
    sa.bindparam("tenants", type_=postgresql.ARRAY(sa.String())),
    sa.bindparam("attempts", type_=postgresql.ARRAY(sa.Integer())),
    sa.bindparam("not_befores", type_=postgresql.ARRAY(WINDOW.c.not_before.type)),
    sa.bindparam("now", type_=WINDOW.c.admitted_at.type),
)


def _admit_rows_postgresql(
    session: Session, jobs: Sequence[ReadyJob], now: datetime, *, ahead: bool
) -> dict[str, int]:
    """The window rows of `jobs` (each once), inserted; job id -> delivery number."""
    params = {
        "job_ids": [job.id for job in jobs],
        "queues": [job.queue for job in jobs],
        "tenants": [job.tenant_id for job in jobs],
        "attempts": [job.attempt for job in jobs],
        "not_befores": [_not_before(job, now, ahead=ahead) for job in jobs],
        "now": now,
    }
    return {job_id: number for number, job_id in session.execute(_ADMIT_ROWS, params)}


def _delivery(job: ReadyJob, number: int, now: datetime, *, ahead: bool = False) -> Delivery:
    return Delivery(
        job_id=job.id,
        type=job.type,
        queue=job.queue,
        number=number,
        priority=job.priority,
        not_before=_not_before(job, now, ahead=ahead),
        trace=job.trace,
        tenant_id=job.tenant_id,
    )


def nobody_waits_sql(queue: str, besides: str = "") -> str:
    """SQL: no ready job of the queue `queue` (an SQL expression) waits outside the window,
    but those `besides` excludes (an SQL condition on `jobs`). Admitting a job when this
    holds passes nobody: the rule of the admissions made outside a fill (a creation's, a
    success's), each checked in the statement that admits."""
    extra = f" AND {besides}" if besides else ""
    return f"""NOT EXISTS (
        SELECT 1 FROM jobs WHERE {READY_SQL} AND jobs.queue = {queue}{extra}
          AND NOT EXISTS (
              SELECT 1 FROM dispatch_window w
              WHERE w.job_id = jobs.id AND w.attempt = jobs.attempt
          )
    )"""  # noqa: S608 (constants and the callers' expressions, no input)


# PostgreSQL, a creation's fast path: one statement, the same text each time (so the
# driver prepares it), with no planning and no second round trip for its check.
_ADMIT_UNCONTENDED = sa.text(
    f"""
    INSERT INTO dispatch_window (job_id, queue, tenant_id, attempt, admitted_at)
    SELECT new.id, new.queue, new.tenant_id, new.attempt, :now
    FROM jobs AS new
    WHERE new.id = ANY(:admit) AND {nobody_waits_sql(":queue", "jobs.id <> ALL(:new)")}
    RETURNING id, job_id
    """  # noqa: S608 (constants, no input)
).bindparams(
    sa.bindparam("admit", type_=postgresql.ARRAY(sa.String())),
    sa.bindparam("new", type_=postgresql.ARRAY(sa.String())),
    sa.bindparam("now", type_=WINDOW.c.admitted_at.type),
)


def admit_uncontended(
    session: Session, queue: str, jobs: Sequence[ReadyJob], new: Sequence[str], now: datetime
) -> list[Delivery]:
    """In the transaction that made `new` ready (job ids, all in `queue`): admit `jobs` (of
    them) if no other ready job of the queue waits outside the window, so that admitting
    them passes nobody. Their deliveries, or none."""
    if not jobs:
        return []
    if session.get_bind().dialect.name != "postgresql":  # SQLite: the check, then the insert
        return admit(session, jobs, now) if _nobody_waits(session, queue, new) else []
    params = {"admit": [job.id for job in jobs], "new": list(new), "queue": queue, "now": now}
    numbers = {job_id: number for number, job_id in session.execute(_ADMIT_UNCONTENDED, params)}
    return [_delivery(job, numbers[job.id], now) for job in jobs if job.id in numbers]


def _nobody_waits(session: Session, queue: str, besides: Sequence[str]) -> bool:
    """`nobody_waits_sql` as a query of its own (SQLite)."""
    waiting = (
        sa.select(JOBS.c.id)
        .where(sa.text(READY_SQL), JOBS.c.queue == queue, not_admitted())
        .where(JOBS.c.id.not_in(list(besides)))
        .limit(1)
    )
    return session.execute(waiting).first() is None


def _not_before(job: ReadyJob, now: datetime, *, ahead: bool) -> datetime | None:
    return job.run_at if ahead and job.run_at is not None and job.run_at > now else None


def forget_claimed(session: Session) -> int:
    """Drop the rows of jobs claimed since they were admitted (or cancelled, or moved on
    to a later attempt): a claim does not touch the window, which keeps it one statement.
    Returns how many."""
    result = session.execute(forget_claimed_statement())
    return int(result.rowcount)  # type: ignore[attr-defined]


def forget_claimed_statement() -> sa.Delete:
    current = sa.exists().where(
        JOBS.c.id == WINDOW.c.job_id,
        JOBS.c.status.in_(sorted(CLAIMABLE)),
        JOBS.c.attempt == WINDOW.c.attempt,
    )
    return sa.delete(WINDOW).where(~current)


def withdraw(session: Session, numbers: Iterable[int]) -> None:
    """Take these deliveries back (their send failed, or they went missing): their jobs are
    ready to be admitted again."""
    wanted = list(numbers)
    if wanted:
        session.execute(sa.delete(WINDOW).where(WINDOW.c.id.in_(wanted)))


def entries(session: Session) -> list[Entry]:
    rows = session.execute(
        sa.select(
            WINDOW.c.id,
            WINDOW.c.job_id,
            WINDOW.c.queue,
            WINDOW.c.admitted_at,
            WINDOW.c.not_before,
        )
    ).all()
    return [Entry(*row) for row in rows]


def per_queue(session: Session) -> Counter[str]:
    return Counter(
        dict(
            session.execute(
                sa.select(WINDOW.c.queue, sa.func.count()).group_by(WINDOW.c.queue)
            ).all()
        )
    )


def per_tenant(session: Session) -> Counter[str]:
    rows = session.execute(
        sa.select(WINDOW.c.tenant_id, sa.func.count()).group_by(WINDOW.c.tenant_id)
    ).all()
    return Counter(dict(rows))


def admitted() -> sa.Exists:
    """For a query over jobs: the job's current attempt is in the window (a row of an
    earlier attempt is one left by a claim, soon forgotten)."""
    return sa.exists().where(WINDOW.c.job_id == JOBS.c.id, WINDOW.c.attempt == JOBS.c.attempt)


def not_admitted() -> sa.ColumnElement[bool]:
    return ~admitted()
