"""Admission: which ready jobs go into the broker's window next, fairly across tenants.

The database is the queue of record. A job is ready when it is claimable and due
(`ready_since` set: `models.READY_SQL`). The broker holds only a small window of messages
per queue, waiting for a worker (`WindowSizes`); whenever a queue's window has room, a
fill takes that many ready jobs, tenant after tenant by start-time fair queueing weighted
by tier (a pro tenant gets three jobs for a free tenant's one, by default), a tenant's own
jobs by priority and then the longest ready first, and never past a tenant's or a tier's
running limit. Since the window is small, a tenant that floods the system delays another
by a window's worth of jobs, not by its backlog.

Fills run in the dispatcher process (`orchestrator.dispatcher`) for Celery, and in the
requests themselves in push modes (`pump`). Either way a fill is one transaction that
holds the fill lock, so two never fill at once.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from orchestrator import window
from orchestrator.db import Database
from orchestrator.dispatch.base import Delivery, Dispatcher, DispatchError
from orchestrator.models import LIVE_STATES_SQL, Job, utcnow
from orchestrator.ready import (
    ReadyJob,
    ReadyJobs,
    next_due,
    per_tenant_guess,
    promote_due_statement,
    ready_queues,
    ready_queues_column,
)
from orchestrator.states import JobStatus
from orchestrator.tenant_limits import TenantLimits
from orchestrator.tenant_stats import AdmissionCounts
from orchestrator.window import WindowSizes

log = logging.getLogger("orchestrator.admission")

JOBS: sa.Table = Job.__table__  # type: ignore[assignment]
# A delivery admitted this long ago that the broker does not hold went missing (a publish
# lost with a crash, a broker that lost its data): its job is admitted again.
MISSING_AFTER = timedelta(seconds=2)
# A delivery a worker took this long ago without claiming its job: that worker is gone.
STUCK_AFTER = timedelta(seconds=10)
# In push modes the backend cannot be asked: a delivery whose job nobody claimed this long
# after it was due went missing.
PUSH_MISSING_AFTER = timedelta(seconds=120)
# A window found full is taken to stay full this long: under load, when every window is
# full and the jobs made go to the dispatcher, a creation need not ask Redis each time.
# A job made meanwhile into a window that had emptied waits for the dispatcher's fill,
# as when any other job waits before it.
SEEN_FULL_SECONDS = 0.01
# An advisory lock's key for fills on PostgreSQL (SQLite's write lock does it there).
FILL_LOCK = 0x6F726368


@dataclass
class InFlight:
    """Each tenant's jobs running or admitted, and their tiers' totals, as a fill goes."""

    limits: TenantLimits
    tenants: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)

    @classmethod
    def read(cls, session: Session, limits: TenantLimits) -> InFlight:
        if not limits.configured:  # nothing to count against: a fill reads nothing
            return cls(limits)
        counts = running_by_tenant(session) + window.per_tenant(session)
        return cls(limits, counts, limits.tier_counts(counts))

    def may_add(self, tenant_id: str) -> bool:
        if not self.limits.configured:
            return True
        return self.limits.headroom(tenant_id, self.tenants, self.tiers) > 0

    def add(self, tenant_id: str) -> None:
        if not self.limits.configured:  # nothing to count against (a tier lookup a job)
            return
        self.tenants[tenant_id] += 1
        self.tiers[self.limits.tier(tenant_id)] += 1


class FairShare:
    """Start-time fair queueing over tenants, one virtual clock per queue.

    Each admission of a tenant's job advances the tenant's finish tag by 1/weight; the next
    admission goes to the tenant whose next job would start earliest, never earlier than
    the queue's virtual time (a tenant that was idle gets no credit for it). Over time each
    contending tenant gets admissions in proportion to its weight; one that just arrived
    gets the next or nearly the next. The tags live in this process: a standby that takes
    over starts them afresh, which only evens out the next few admissions.
    """

    def __init__(self, weight: Callable[[str], int]) -> None:
        self.weight = weight
        self._finish: dict[tuple[str, str], float] = {}
        self._now: dict[str, float] = {}  # virtual time, per queue

    def choose(
        self, queue: str, free: int, ready: ReadyJobs, in_flight: InFlight
    ) -> list[ReadyJob]:
        now = self._now.get(queue, 0.0)
        heap = [(max(self._finish.get((queue, t), 0.0), now), t) for t in ready.tenants]
        heapq.heapify(heap)
        chosen: list[ReadyJob] = []
        while heap and len(chosen) < free:
            start, tenant = heapq.heappop(heap)
            if not in_flight.may_add(tenant):
                continue  # at its limit: its jobs wait, the others go on
            job = ready.next(tenant, free - len(chosen))
            if job is None:
                continue  # its ready jobs are all in the window already
            chosen.append(job)
            in_flight.add(tenant)
            finish = start + 1.0 / self.weight(tenant)
            self._finish[(queue, tenant)] = finish
            self._now[queue] = now = start
            heapq.heappush(heap, (finish, tenant))
        self._forget_idle(queue)
        return chosen

    def _forget_idle(self, queue: str) -> None:
        """Tags behind the virtual clock say nothing (an idle tenant starts at it)."""
        now = self._now.get(queue, 0.0)
        for key in [k for k, tag in self._finish.items() if k[0] == queue and tag <= now]:
            del self._finish[key]


class Admission:
    """Fills the window from the ready jobs and sends what it admitted."""

    def __init__(
        self,
        database: Database,
        dispatcher: Dispatcher,
        limits: TenantLimits,
        sizes: WindowSizes,
        *,
        ahead: timedelta = timedelta(0),
        clock: Callable[[], datetime] = utcnow,
        counts: AdmissionCounts | None = None,
    ) -> None:
        self.database = database
        self.dispatcher = dispatcher
        self.limits = limits
        self.sizes = sizes
        self.ahead = ahead  # push modes: jobs due this soon go out with their time
        self.clock = clock
        self.counts = counts or AdmissionCounts(None)
        self.fair = FairShare(limits.weight)
        self.backlogged = False  # the last fill left ready jobs out (a window was full)
        self.full_queues: list[str] = []  # and in which queues
        self.admitted = 0  # in this process, for figures
        self._contending: dict[str, int] = {}  # tenants with ready jobs at the last fill
        self._full: dict[str, tuple[float, int]] = {}  # windows left full: when, holding
        self._last_look: dict[str, int] = {}  # what each window held at the last look
        self._seen_full: dict[str, float] = {}  # windows `room` found full: until when
        self._suspects: set[int] = set()  # deliveries the last check found missing
        self._pumping = threading.local()  # a pump is running on this thread's stack

    def fill(self, fence: sa.ScalarSelect[Any] | None = None) -> list[Delivery]:
        """Admit as many ready jobs as the windows have room for; their deliveries, to be
        sent once this returns (their admission has committed). `fence`: a leader's check
        that it still holds its lease (`Leadership.fence`), read in the fill's first
        statement."""
        now = self.clock()
        with self.database.transaction() as session:
            start = _begin_fill(session, now + self.ahead, forget=self._counts_window, fence=fence)
            if not start.held:
                return []
            if not start.queues:
                self.backlogged, self.full_queues = False, []
                return []
            chosen = self._choose(session, start.queues)
            deliveries = window.admit(session, chosen, now, ahead=self.ahead > timedelta(0))
        self.admitted += len(deliveries)
        return deliveries

    @property
    def _counts_window(self) -> bool:
        """Whether a fill counts the window's rows: against running limits, or as the
        window itself where the backend cannot be asked (push modes)."""
        return self.limits.configured or self.in_process

    def _choose(self, session: Session, queues: list[str]) -> list[ReadyJob]:
        waiting = self.dispatcher.waiting(queues)
        if waiting is None and not self.in_process:
            # Celery, and the broker cannot be asked: whatever is admitted now could not
            # be sent (and would be taken back at once): the jobs wait in the database.
            self.backlogged, self.full_queues = False, []
            return []
        if waiting is None:  # push modes: the window is what was admitted and not claimed
            waiting = window.per_queue(session)
        in_flight = InFlight.read(session, self.limits)
        chosen: list[ReadyJob] = []
        self.full_queues = []
        for queue in queues:
            self._observe_drain(queue, waiting.get(queue, 0))
            free = self.sizes.of(queue) - waiting.get(queue, 0)
            taken = self._choose_in(session, queue, free, in_flight) if free > 0 else []
            if len(taken) == max(free, 0):  # ready jobs may be left out: the window is full
                self.full_queues.append(queue)
                self._full[queue] = (time.monotonic(), waiting.get(queue, 0) + len(taken))
                self._last_look[queue] = waiting.get(queue, 0) + len(taken)
            chosen += taken
        self.backlogged = bool(self.full_queues)
        return chosen

    def looked(self, waiting: dict[str, int]) -> set[str]:
        """A look at the windows between fills (`waiting`: what each queue's holds); the
        queues the workers took from since the last look (the dispatcher looks at a window
        less often while they take nothing from it: busy with long jobs, or not started).

        A window left full that nobody has taken from since says nothing yet of the
        workers' pace: it is timed from the last look that found the window untouched.
        Timed from the fill, workers that started late (a deploy, a burst after an idle
        hour) or were all busy would be taken for slow ones, and the window sized for slow
        workers while they run dry, a fill after another, for the first second of a
        backlog."""
        now, moved = time.monotonic(), set()
        for queue, count in waiting.items():
            left = self._full.get(queue)
            if left is not None and count >= left[1]:
                self._full[queue] = (now, count)
            if count < self._last_look.get(queue, count):
                moved.add(queue)
            self._last_look[queue] = count
        return moved

    def _observe_drain(self, queue: str, waiting: int) -> None:
        """How fast the workers took from a window this process left full (how fast they
        go when they never wait for a message), for the window's size."""
        left = self._full.pop(queue, None)
        if left is not None and left[1] > waiting:
            seconds = time.monotonic() - left[0]
            self.sizes.observe_drain(queue, left[1] - waiting, seconds, dry=waiting == 0)

    def _choose_in(
        self, session: Session, queue: str, free: int, in_flight: InFlight
    ) -> list[ReadyJob]:
        per_tenant = per_tenant_guess(free, self._contending.get(queue, 1))
        ready = ReadyJobs(session, queue, per_tenant)
        self._contending[queue] = len(ready.tenants)
        return self.fair.choose(queue, free, ready, in_flight)

    def until_next_due(self) -> float | None:
        """Seconds until the first scheduled job (a delay, a retry's backoff) comes due;
        None when none waits. An idle dispatcher wakes then, not a quarter second late."""
        with self.database.session() as session:
            first = next_due(session)
        if first is None:
            return None
        return max(0.0, (first - self.ahead - self.clock()).total_seconds())

    def refill_due(self, queue: str, waiting: int) -> bool:
        """Whether a full window emptied enough to be worth a fill: half of it (one fill a
        message would cost the database a transaction each; half a window still keeps
        every worker busy while the fill runs)."""
        size = self.sizes.of(queue)
        return size - waiting >= max(1, size // 2)

    @property
    def in_process(self) -> bool:
        """Whether fills happen where jobs become ready (push and inline modes), rather than
        in a dispatcher process that is told there is work (Celery)."""
        return self.dispatcher.mode != "celery"

    def room(self, queues: set[str]) -> dict[str, int]:
        """How many more messages each queue's window takes now (Celery: what the broker
        holds, asked before a creation's transaction, except of windows found full less
        than `SEEN_FULL_SECONDS` ago); none in other modes, whose fills run after it."""
        if self.in_process or not queues:
            return {}
        now = time.monotonic()
        if all(now < self._seen_full.get(q, 0.0) for q in queues):
            return dict.fromkeys(queues, 0)
        waiting = self.dispatcher.waiting(queues) or {}
        room = {}
        for queue in queues:
            size = self.sizes.of(queue)
            room[queue] = free = size - waiting.get(queue, size)
            if free > 0:
                self._seen_full.pop(queue, None)
            else:
                self._seen_full[queue] = now + SEEN_FULL_SECONDS
        return room

    def admit_new(
        self, session: Session, jobs: Sequence[Job], room: dict[str, int], now: datetime
    ) -> list[Delivery]:
        """In the transaction that made `jobs` ready: admit them at once if their queue's
        window has room and no other ready job waits there (passing nobody, so no fill is
        needed to be fair). A tenant under a running limit waits for a fill, which counts
        what it has running."""
        deliveries: list[Delivery] = []
        for queue, free in room.items():
            mine = [j for j in jobs if j.queue == queue and not self.limits.limited(j.tenant_id)]
            if free > 0 and mine:
                chosen = [ReadyJob.of(job) for job in mine[:free]]
                new = [job.id for job in mine]
                deliveries += window.admit_uncontended(session, queue, chosen, new, now)
        self.admitted += len(deliveries)
        return deliveries

    def after_commit(self, deliveries: Sequence[Delivery], *, more_ready: bool) -> None:
        """Send what a creation admitted; the rest is the dispatcher's (told here)."""
        self.send(deliveries)
        if more_ready or self.in_process:
            self.became_ready()

    def may_admit_released(self, queue: str, tenant_id: str) -> bool:
        """Whether a worker's success may admit the step it releases itself, in the
        success's own statement: Celery (push modes fill as requests come), the step's
        queue has room in its window, and its tenant counts against no running limit (a
        fill counts what it runs). The statement then admits it only if no ready job of
        the queue waits: it passes nobody."""
        if self.in_process or self.limits.limited(tenant_id):
            return False
        return self.room({queue}).get(queue, 0) > 0

    def released(self, admitted: Delivery | None) -> None:
        """A worker's success made a pipeline's next step ready. If the success admitted
        it (`admitted`), it is sent now. Otherwise other ready jobs of its queue wait
        before it, or its window is full: it goes in its turn, at the dispatcher's next
        fill, which is told (a fill here would only add a second filler beside it)."""
        if admitted is not None:
            self.admitted += 1
            try:
                if self.send([admitted]):
                    return
            except sa.exc.SQLAlchemyError:  # the job's success stands; its step waits
                log.exception(
                    "could not take back a released step's refused delivery; the dispatcher "
                    "finds it missing within seconds"
                )
        self.became_ready()

    def became_ready(self) -> None:
        """Jobs became ready: fill now (push and inline modes), or nudge the dispatcher."""
        if self.in_process:
            self.pump()
            return
        nudge = getattr(self.dispatcher, "nudge", None)
        if nudge is not None:
            nudge()

    def send(self, deliveries: Sequence[Delivery]) -> bool:
        """Send what a fill admitted; a refusal takes the admissions back (the jobs stay
        ready for the next fill). Whether they were sent."""
        if not deliveries:
            return True
        try:
            self.dispatcher.send(deliveries)
        except DispatchError as exc:
            log.warning(
                "could not send %d admitted job(s); they wait for the next fill: %s",
                len(deliveries),
                exc,
                extra={"action": "dispatch_failed"},
            )
            self.take_back([d.number for d in deliveries])
            return False
        self.counts.record(d.tenant_id for d in deliveries if d.tenant_id)
        return True

    def pump(self) -> int:
        """Fill and send, here and now (push and inline modes, after a job became ready).
        Inline sends run their jobs, whose successes make later steps ready: those are
        filled and run too, until nothing ready is left."""
        if getattr(self._pumping, "active", False):
            # Inline: a job this pump runs made others ready (children, a join). The pump
            # further up this thread's stack fills again; pumping here would nest a run
            # per job, and a fan-out of hundreds would overflow the stack.
            return 0
        self._pumping.active = True
        sent = 0
        try:
            while deliveries := self.fill():
                self.send(deliveries)
                sent += len(deliveries)
                if self.dispatcher.mode != "inline":
                    break
        finally:
            self._pumping.active = False
        return sent

    def tick(self) -> tuple[int, int]:
        """The dispatcher's round, once (push modes' housekeeping, or by hand): find what
        went missing, then fill and send. Returns (missing, sent)."""
        missing = self.find_missing()
        return missing, self.pump()

    def take_back(self, numbers: Sequence[int]) -> None:
        with self.database.transaction() as session:
            window.withdraw(session, numbers)

    def find_missing(self, *, recheck: bool = False) -> int:
        """Deliveries the broker does not hold, though their jobs still wait: lost with a
        crash or a broker's data, or taken by a worker that died. They are taken back, and
        their jobs admitted again under new names. Returns how many.

        `recheck` (the dispatcher's loop, which checks every second): a delivery must be
        found missing by two checks in a row. Between a look at the window and one at the
        broker a worker may take a message and claim its job, and a message a worker is
        taking is for a moment in none of the broker's lists: one check may see a message
        missing that is not, which costs a delivery sent twice (run once, as the claim
        decides), not a loss."""
        now = self.clock()
        with self.database.transaction() as session:
            window.forget_claimed(session)
            entries = window.entries(session)
        if not entries:
            return 0
        held = self.dispatcher.held({entry.queue for entry in entries})
        if held is None and not self.in_process:
            return 0  # Celery, and the broker cannot be asked now: look again next time
        if held is None:  # push modes: the backend cannot be asked, only timed
            lost = [e.number for e in entries if _overdue(e, now)]
        else:
            present = held.waiting | held.taken
            missing = {
                e.number
                for e in entries
                if (e.delivery_id() not in present and now - e.admitted_at > MISSING_AFTER)
                or (e.delivery_id() in held.taken and now - e.admitted_at > STUCK_AFTER)
            }
            lost = sorted(missing & self._suspects if recheck else missing)
            self._suspects = missing - set(lost)
        if lost:
            self.take_back(lost)
            log.warning(
                "%d admitted job(s) were not in the broker; admitting them again",
                len(lost),
                extra={"action": "dispatch_missing"},
            )
        return len(lost)


def _overdue(entry: window.Entry, now: datetime) -> bool:
    due = entry.not_before or entry.admitted_at
    return now - due > PUSH_MISSING_AFTER


@dataclass(frozen=True)
class FillStart:
    held: bool  # the leader's lease is still its own (always, for a fill without a fence)
    queues: list[str]  # the queues with ready jobs


def _begin_fill(
    session: Session,
    due_by: datetime,
    *,
    forget: bool,
    fence: sa.ScalarSelect[Any] | None,
) -> FillStart:
    """A fill's first steps: take the fill lock, make scheduled jobs due by `due_by` ready
    (`ready.promote_due_statement`) and, when the fill counts the window's rows (`forget`), drop
    those of jobs claimed since (`window.forget_claimed`); otherwise that waits for the
    next check for missing deliveries, a second at most: scanning a window the workers
    churn through costs more than a fill. Then check the `fence` and read which queues
    have ready jobs.

    On PostgreSQL, one statement (a fill is on the workers' critical path: each round
    trip is a gap in their supply), whose commit does not wait for the disk: a fill lost
    with a crash of the server only means its jobs are admitted again (what it wrote says
    what was sent, and a delivery sent twice runs once: the claim decides). Neither step
    needs the lock: each is idempotent, and row locks order them with a concurrent fill's.
    The queues are read in the snapshot taken before the lock, with those of the jobs
    promoted here (the jobs themselves are read after, in a snapshot that has them).
    """
    steps: list[sa.Update | sa.Delete] = [promote_due_statement(due_by)]
    if forget:
        steps.append(window.forget_claimed_statement())
    if session.get_bind().dialect.name != "postgresql":
        for step in steps:  # SQLite: the transaction holds the write lock already
            session.execute(step)
        held = fence is None or session.scalar(sa.select(fence)) is not None
        return FillStart(held, ready_queues(session) if held else [])
    columns: list[sa.ColumnElement[Any]] = [
        sa.func.set_config("synchronous_commit", "off", True),  # SET LOCAL
        sa.func.pg_advisory_xact_lock(FILL_LOCK),
    ]
    if fence is not None:
        columns.append(fence.label("fence"))
    # With the queues of the jobs the first step (its CTE is named below) makes ready.
    columns.append(ready_queues_column(promoted="step0").label("queues"))
    statement = sa.select(*columns)
    for number, step in enumerate(steps):
        statement = statement.add_cte(step.cte(f"step{number}"))
    row = session.execute(statement).one()
    held = fence is None or row.fence is not None
    return FillStart(held, list(row.queues) if held else [])


def running_by_tenant(session: Session) -> Counter[str]:
    """Each tenant's running jobs. Said with the live states' index's own words, so that
    it reads that index (running jobs only) in any plan, never the jobs' history."""
    rows = session.execute(
        sa.select(JOBS.c.tenant_id, sa.func.count())
        .where(sa.text(LIVE_STATES_SQL), JOBS.c.status == JobStatus.RUNNING)
        .group_by(JOBS.c.tenant_id)
    ).all()
    return Counter(dict(rows))
