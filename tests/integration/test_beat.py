"""Two real beat processes against one Redis and one database: every occurrence fires once,
and a beat that was down catches up once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from orchestrator import migrate
from orchestrator.cron import CronDefinition
from orchestrator.embedded_postgres import EmbeddedPostgres
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.models import CronFire, Job
from tests.integration.stack import Stack, Worker, stack_settings

CRON_ID = "test-every-2s"
EVERY_TWO = CronDefinition(CRON_ID, "* * * * * */2", "TEST_ECHO_UPSTREAM")


@pytest.fixture(scope="module")
def beat_stack(
    redis_server: EmbeddedRedis,
    postgres_server: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("beats")
    postgres_server.create_database("beats")
    database_url = postgres_server.url("beats")
    migrate.upgrade(database_url)
    redis_url = f"{redis_server.url.rsplit('/', 1)[0]}/5"
    settings = stack_settings(database_url, redis_url, job_modules="tests.jobtypes,tests.cronjobs")
    stack = Stack.build(settings, folder)
    try:
        yield stack.start()
    finally:
        stack.stop()


def _fires(stack: Stack, since: datetime) -> list[datetime]:
    with stack.runtime.database.session() as session:
        return list(
            session.scalars(
                sa.select(CronFire.occurrence)
                .where(CronFire.cron_id == CRON_ID, CronFire.occurrence > since)
                .order_by(CronFire.occurrence)
            )
        )


def _cron_jobs(stack: Stack, since: datetime) -> Counter[str]:
    with stack.runtime.database.session() as session:
        subjects = session.scalars(
            sa.select(Job.subject).where(
                Job.subject.like(f"cron:{CRON_ID}@%"), Job.created_at > since
            )
        )
        return Counter(subjects)


def test_two_beats_fire_each_occurrence_once(beat_stack: Stack, tmp_path: Path) -> None:
    second = Worker(
        beat_stack.settings.model_copy(update={"state_dir": tmp_path}),
        tmp_path / "beat-2.log",
        kind="beat",
    )
    started = datetime.now(UTC)
    second.start(beat_stack.runtime)
    try:
        time.sleep(16)
    finally:
        second.stop()
    window_end = datetime.now(UTC) - timedelta(seconds=3)  # the last firings may be in flight
    expected = list(EVERY_TWO.occurrences(started + timedelta(seconds=3), window_end))
    fired = [f for f in _fires(beat_stack, started) if f <= window_end]
    jobs = _cron_jobs(beat_stack, started - timedelta(seconds=5))
    assert len(expected) >= 5
    assert [f for f in fired if f in expected] == expected  # none missed, none twice
    assert all(count == 1 for count in jobs.values()), jobs
    assert len(fired) == len(set(fired))


def test_beat_down_over_occurrences_catches_up_once(beat_stack: Stack) -> None:
    beat_stack.beat.stop()
    stopped = datetime.now(UTC)
    time.sleep(7)  # three occurrences pass with no beat running
    starts = beat_stack.beat.log_path.read_text().count("beat: Starting")
    launched = datetime.now(UTC)
    beat_stack.beat.start(beat_stack.runtime)
    deadline = time.monotonic() + 60  # however long beat takes to boot on a loaded machine
    while beat_stack.beat.log_path.read_text().count("beat: Starting") == starts:
        assert time.monotonic() < deadline, beat_stack.beat.log_tail()
        time.sleep(0.1)
    ready = datetime.now(UTC)
    # What passed with no beat at all, and what passed while the new one was booting (we
    # notice its boot late on a loaded machine, and it may fire on schedule meanwhile).
    down = list(EVERY_TWO.occurrences(stopped + timedelta(seconds=1), launched))
    booting = list(EVERY_TWO.occurrences(launched, ready))
    assert len(down) >= 3
    while not [f for f in _fires(beat_stack, stopped) if f in [down[-1], *booting]]:
        assert time.monotonic() < deadline, "the catch-up never fired"
        time.sleep(0.2)
    time.sleep(1)  # room for a wrong second catch-up to show itself
    fired = _fires(beat_stack, stopped)
    # The catch-up fires the latest occurrence when beat came back, once; never the older
    # ones. A beat that booted before the next occurrence can only have caught up on the
    # last one it missed.
    assert [f for f in fired if f in down[:-1]] == [], (down, fired)
    if not booting:
        assert down[-1] in fired, (down, fired)
    jobs = _cron_jobs(beat_stack, stopped)
    assert jobs and all(count == 1 for count in jobs.values()), jobs
