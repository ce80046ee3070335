"""Admission on SQLite and PostgreSQL: who goes into the broker's window next.

Each test plays the workers by hand: it claims what was sent (which empties the window)
and has the admission fill again, then reads the order of the deliveries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator import transition_statements as statements
from orchestrator import transitions, window
from orchestrator.db import Database
from orchestrator.dispatch import Held
from orchestrator.models import Job, JobEvent, Tenant, WindowEntry, utcnow
from orchestrator.ready import ReadyJob
from orchestrator.registry import load_job_modules
from orchestrator.service import JobService, NewJob
from orchestrator.settings import load_settings
from orchestrator.states import Attempt, ErrorInfo
from orchestrator.window import WindowSizes
from tests.recording import RecordingDispatcher, recorded, recording_service


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def _service(database: Database, window: int, **settings: Any) -> JobService:
    values = load_settings(env="development", database_url=database.url, **settings)
    return recording_service(database, load_job_modules(("tests.jobtypes",)), values, window=window)


def _flood(service: JobService, tenant: str, count: int, priority: int = 5) -> list[str]:
    jobs = [NewJob(tenant_id=tenant, type="TEST_SLEEP", priority=priority) for _ in range(count)]
    return [details.job.id for details in service.create_batch(jobs).jobs]


def _sent(service: JobService) -> list[tuple[str, str]]:
    return [(d.tenant_id or "", d.job_id) for call in recorded(service).sent for d in call]


def _work(service: JobService, rounds: int) -> list[tuple[str, str]]:
    """Claim everything sent so far, then fill again, `rounds` times; what each fill sent."""
    sent: list[tuple[str, str]] = []
    for _ in range(rounds):
        before = len(_sent(service))
        for _tenant, job_id in _sent(service):
            transitions.claim_alone(
                service.database, job_id, worker="w", lease_seconds=60, now=utcnow()
            )
        service.admission.pump()
        sent += _sent(service)[before:]
    return sent


def test_a_flood_delays_a_newcomer_by_a_window_not_by_its_backlog(database: Database) -> None:
    service = _service(database, window=4)
    _flood(service, "a", 40)
    assert [tenant for tenant, _ in _sent(service)] == ["a"] * 4  # the window is full
    late = set(_flood(service, "b", 2))
    next_fill = _work(service, 1)
    assert late <= {job_id for _, job_id in next_fill}
    assert [tenant for tenant, _ in next_fill].count("a") == 2  # a goes on beside b


def test_contending_tiers_share_the_workers_by_their_weights(database: Database) -> None:
    service = _service(database, window=8, tier_weights={"free": 1, "pro": 3})
    with database.transaction() as session:
        session.add(Tenant(id="p", tier="pro", created_at=utcnow()))
    service.admission.limits._read_at = float("-inf")  # read the tier now
    _flood(service, "f", 60)
    _flood(service, "p", 60)
    shares = Counter(tenant for tenant, _ in _work(service, 5))
    assert sum(shares.values()) == 40
    assert 29 <= shares["p"] <= 31, shares  # 75% of 40


def test_equal_tenants_get_equal_shares(database: Database) -> None:
    service = _service(database, window=10)
    for tenant in "abcde":
        _flood(service, tenant, 30)
    shares = Counter(tenant for tenant, _ in _work(service, 6))
    assert set(shares.values()) == {12}, shares


def test_a_tenants_higher_priority_goes_first(database: Database) -> None:
    service = _service(database, window=2)
    _flood(service, "a", 10)
    [urgent] = _flood(service, "a", 1, priority=10)
    [(_, first), _] = _work(service, 1)
    assert first == urgent


def test_a_running_limit_holds_at_admission_and_others_go_on(database: Database) -> None:
    service = _service(database, window=8, tenant_max_running=2)
    _flood(service, "a", 10)
    assert len(_sent(service)) == 2
    _flood(service, "b", 1)
    assert [tenant for tenant, _ in _sent(service)] == ["a", "a", "b"]
    assert _work(service, 1) == []  # a's two run (claimed): nothing more of a's


def test_a_retry_is_admitted_though_its_claimed_attempts_row_is_still_there(
    database: Database,
) -> None:
    """A claim leaves the window's row of the attempt it claimed; fills forget such rows
    only once a second (Celery) or before they count: the next attempt is admitted anyway."""
    service = _service(database, window=8)
    [job_id] = _flood(service, "a", 1)
    claimed = transitions.claim_alone(database, job_id, worker="w", lease_seconds=60, now=utcnow())
    assert claimed is not None
    with database.transaction() as session:
        transitions.schedule_retry(
            session, Attempt(job_id, "a", 1), ErrorInfo("E", "x"), utcnow(), run_at=utcnow()
        )
    service.admission.pump()
    assert [j for _, j in _sent(service)] == [job_id, job_id]
    first, again = (d for call in recorded(service).sent for d in call)
    assert again.delivery_id != first.delivery_id


def test_a_window_grows_with_the_workers_pace_and_no_further() -> None:
    class ByFills(WindowSizes):
        SECONDS = 0.0  # the fills' duration alone

    sizes = ByFills(0, default_concurrency=2)
    assert sizes.of("q") == 8  # four per process
    sizes.observe_fill(0.010)
    sizes.observe_drain("q", taken=8, seconds=0.008)  # 1,000 a second
    assert sizes.of("q") == 40  # half of it lasts two fills
    assert sizes.until_half("q", waiting=30) == pytest.approx(0.010)
    sizes.observe_drain("q", taken=1_000_000, seconds=1)
    assert sizes.of("q") == 8 * WindowSizes.PACE_LIMIT  # a bound on pacing's feedback
    sizes.observe({"q": 400})
    assert sizes.of("q") == WindowSizes.LARGEST
    assert WindowSizes(5, default_concurrency=2).of("q") == 5  # ORCH_DISPATCH_WINDOW


def test_a_window_holds_a_quarter_second_of_the_workers_time() -> None:
    sizes = WindowSizes(0, default_concurrency=2)
    sizes.observe_fill(0.010)
    sizes.observe_drain("q", taken=8, seconds=0.008)  # 1,000 a second
    assert sizes.of("q") == 250  # SECONDS of the workers' time, past the fills' bound
    assert sizes.until_half("q", waiting=200) == pytest.approx(0.075)
    sizes.observe_drain("q", taken=100_000, seconds=1)  # a fast drain: at most LARGEST
    assert sizes.of("q") == WindowSizes.LARGEST


def test_a_window_found_empty_never_slows_the_pace_it_is_sized_by() -> None:
    """Found empty, the workers may have waited for messages: what they took is a floor of
    their pace. Taken as their pace, it would make the next look later, the window emptier
    for longer, and the pace measured next lower still."""
    sizes = WindowSizes(0, default_concurrency=2)
    sizes.observe_drain("q", taken=100, seconds=0.1)  # 1,000 a second
    assert sizes.of("q") == 250  # a quarter second of it
    sizes.observe_drain("q", taken=10, seconds=0.1, dry=True)  # idle most of that time
    assert sizes.of("q") == 250
    sizes.observe_drain("q", taken=200, seconds=0.1, dry=True)  # a floor above the figure
    assert sizes.of("q") == 500
    sizes.observe_drain("q", taken=100, seconds=0.1)  # not dry: slower workers count
    assert sizes.of("q") == 450  # smoothed: 2,000 + 0.2 x (1,000 - 2,000) a second
    # A window a broker's flush emptied: any figure at all, taken as at most double.
    sizes.observe_drain("q", taken=100_000, seconds=0.1, dry=True)
    assert sizes.of("q") == 900


def test_a_pace_known_only_as_a_floor_is_looked_at_at_once_then_measured() -> None:
    """Timed by a floor, the next look would come after the window ran dry again, and the
    figure could only double from fill to fill: a backlog's first half second of idle
    workers. Looked at at once, the window is found half gone with some left, which
    measures the pace, and that measure replaces the floor."""
    sizes = WindowSizes(0, default_concurrency=2)
    sizes.observe_drain("q", taken=100, seconds=0.1)  # 1,000 a second
    assert sizes.until_half("q", waiting=200) == pytest.approx(0.075)
    sizes.observe_drain("q", taken=250, seconds=0.1, dry=True)  # found empty: a floor
    assert sizes.until_half("q", waiting=400) == 0.0  # look now, not when the floor says
    sizes.observe_drain("q", taken=300, seconds=0.1)  # 3,000 a second, measured
    assert sizes.of("q") == 750  # not smoothed toward the floor (2,000 a second)
    assert sizes.until_half("q", waiting=750) == pytest.approx(0.125)


def test_the_workers_pace_is_timed_from_when_they_start_taking(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window left full that nobody takes from (workers that start late, or are all
    busy) says nothing of their pace yet. Timed from its fill, workers that then race
    through it would be taken for slow ones, and the window kept small while they run it
    dry, fill after fill."""
    service = _service(database, window=0)
    admission = service.admission
    queues = _Queues({"default": 4})  # the window's first size (four per process), full
    admission.dispatcher = queues
    now = [100.0]
    monkeypatch.setattr("orchestrator.admission.time", SimpleNamespace(monotonic=lambda: now[0]))
    _flood(service, "a", 10)  # none admitted: the window is full
    assert admission.fill() == []  # left full at 100.0
    now[0] = 101.0
    assert admission.looked({"default": 4}) == set()  # a second later, untouched
    now[0] = 101.004
    queues.depth["default"] = 2  # then two taken in 4 ms: 500 a second
    assert admission.looked({"default": 2}) == {"default"}  # taken from since the last look
    assert admission.looked({"default": 2}) == set()  # and not since
    assert admission.fill()
    assert admission.sizes.of("default") == 125  # a quarter second of that pace
    # Timed from the fill, the same two would be two a second: a window of four.


def test_a_delay_keeps_a_job_out_of_the_window_until_due(database: Database) -> None:
    service = _service(database, window=8)
    later = utcnow() + timedelta(hours=1)
    service.create(NewJob(tenant_id="a", type="TEST_SLEEP", run_at=later))
    assert _sent(service) == []
    assert service.admission.until_next_due() == pytest.approx(3600, abs=5)  # wakes then
    service.admission.clock = lambda: later + timedelta(seconds=1)
    service.admission.pump()
    assert len(_sent(service)) == 1
    assert service.admission.until_next_due() is None


class _BrokerAway(RecordingDispatcher):
    """Celery's dispatcher while Redis refuses: it can say neither what waits nor what it
    holds."""

    mode = "celery"

    def held(self, queues: Iterable[str]) -> Held | None:
        return None


def test_with_the_broker_away_nothing_is_admitted_nor_taken_for_missing(
    database: Database,
) -> None:
    service = _service(database, window=8)
    _flood(service, "a", 3)
    service.admission.dispatcher = _BrokerAway()
    _flood(service, "a", 3)  # made ready while the broker is away
    assert service.admission.fill() == []
    service.admission.clock = lambda: utcnow() + timedelta(hours=1)  # long overdue
    assert service.admission.find_missing() == 0  # not a reason to send all again


class _Queues(RecordingDispatcher):
    """Celery's dispatcher, with queues as deep as `depth` says; counts its questions."""

    mode = "celery"

    def __init__(self, depth: dict[str, int]) -> None:
        super().__init__()
        self.depth = depth
        self.asked = 0

    def waiting(self, queues: Iterable[str]) -> dict[str, int] | None:
        self.asked += 1
        return {queue: self.depth.get(queue, 0) for queue in queues}


def test_a_window_found_full_is_not_asked_about_again_for_a_moment(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load every creation would ask Redis how full its window is, to learn it is
    full; a window with room is asked each time (a creation admits into it)."""
    admission = _service(database, window=8).admission
    queues = _Queues({"full": 8, "roomy": 2})
    admission.dispatcher = queues
    monkeypatch.setattr("orchestrator.admission.SEEN_FULL_SECONDS", 60.0)
    assert admission.room({"full"}) == {"full": 0}
    queues.depth["full"] = 3
    assert admission.room({"full"}) == {"full": 0}  # taken as still full
    assert queues.asked == 1
    assert admission.room({"full", "roomy"}) == {"full": 5, "roomy": 6}  # roomy: asked
    assert queues.asked == 2
    monkeypatch.setattr("orchestrator.admission.SEEN_FULL_SECONDS", 0.0)
    queues.depth["full"] = 8
    assert admission.room({"full"}) == {"full": 0}
    assert admission.room({"full"}) == {"full": 0}  # the moment is over: asked again
    assert queues.asked == 4


def test_a_new_job_is_admitted_at_once_only_when_nobody_waits_in_its_queue(
    database: Database,
) -> None:
    """The creation's fast path: its check and its insert are one statement on PostgreSQL."""
    service = _service(database, window=8)
    first, second = _flood(service, "a", 2)
    with database.transaction() as session:
        session.execute(sa.delete(WindowEntry))  # both wait, ready, outside the window
        jobs = [ReadyJob.of(session.get(Job, job_id)) for job_id in (first, second)]  # type: ignore[arg-type]
        # `second` as if just created: `first` waits before it, so it is left to a fill.
        assert window.admit_uncontended(session, "default", jobs[1:], [second], utcnow()) == []
        assert session.scalars(sa.select(WindowEntry.job_id)).all() == []
        # Both new: nobody else waits, both go in, numbered by their rows.
        admitted = window.admit_uncontended(session, "default", jobs, [first, second], utcnow())
        rows = {
            job_id: number
            for job_id, number in session.execute(sa.select(WindowEntry.job_id, WindowEntry.id))
        }
    assert [d.job_id for d in admitted] == [first, second]
    assert {d.job_id: d.number for d in admitted} == rows


def test_a_creation_that_admits_nothing_is_one_prepared_statement(
    database: Database,
) -> None:
    """Every window full: nothing to admit in the creating transaction, so the rows and
    their events go in as one statement prepared on the driver's connection, without
    BEGIN and COMMIT; the jobs and their events are there all the same, and a repeat of
    the same rows fails as an IntegrityError (what a creation's retry looks for)."""
    if database.dialect != "postgresql":
        pytest.skip("on SQLite a statement is a transaction like any other")
    service = _service(database, window=8)
    service.admission.room = lambda queues: dict.fromkeys(queues, 0)  # type: ignore[method-assign]
    inserts: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "INSERT INTO jobs" in statement:
            inserts.append(statement)

    sa.event.listen(database.engine, "before_cursor_execute", seen)
    try:
        [job_id] = _flood(service, "a", 1)
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", seen)
    assert inserts == []  # not on the transactional engine
    assert id(statements.create_postgresql()) in database._prepared  # but prepared
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        kinds = session.scalars(sa.select(JobEvent.message).where(JobEvent.job_id == job_id))
        assert kinds.all() == ["created"]
        session.expunge(job)
    with pytest.raises(sa.exc.IntegrityError):
        transitions.insert_pipeline_alone(database, [Job.fresh(**_columns(job))], utcnow())


def _columns(job: Job) -> dict[str, Any]:
    return {c.key: getattr(job, c.key) for c in Job.__table__.columns}


def test_admit_records_each_jobs_row_and_numbers_its_delivery(database: Database) -> None:
    """A fill's rows in one statement (on PostgreSQL, arrays unnested): each job's
    delivery carries its own row's number, in the fill's order, and a job due later keeps
    its time when admitted ahead (push modes)."""
    service = _service(database, window=0)
    ids = _flood(service, "t1", 3) + _flood(service, "t2", 2)
    now = utcnow()
    later = now + timedelta(seconds=30)
    with database.transaction() as session:
        session.execute(sa.delete(WindowEntry))  # what their creation admitted
        jobs = [ReadyJob.of(job) for job in session.scalars(sa.select(Job).where(Job.id.in_(ids)))]
    jobs = [replace(jobs[0], run_at=later), *jobs[1:]][::-1]  # not the insertion order
    with database.transaction() as session:
        deliveries = window.admit(session, jobs, now, ahead=True)
    assert [d.job_id for d in deliveries] == [job.id for job in jobs]
    with database.session() as session:
        rows = {row.id: row for row in session.scalars(sa.select(WindowEntry))}
    assert len({d.number for d in deliveries}) == len(jobs)
    for delivery, job in zip(deliveries, jobs, strict=True):
        row = rows[delivery.number]
        assert (row.job_id, row.tenant_id, row.attempt) == (job.id, job.tenant_id, job.attempt)
        assert row.not_before == (later if job.run_at == later else None)
        assert delivery.not_before == row.not_before
