"""Cron definitions: occurrences, time zones and the catch-up policy, on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.beat import CATCH_UP_TASK
from orchestrator.celery_app import beat_schedule
from orchestrator.cron import CronDefinition, CronRegistry, define_cron_job
from orchestrator.errors import JobDefinitionError
from orchestrator.settings import load_settings

NIGHTLY = CronDefinition("nightly", "0 1 * * *", "ARCHIVE")
DAY = 86400.0


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "latest"),
    [
        ("2026-03-10T01:00:00", "2026-03-10T01:00:00"),  # exactly on time
        ("2026-03-10T01:00:00.5", "2026-03-10T01:00:00"),
        ("2026-03-10T00:59:59", "2026-03-09T01:00:00"),
        ("2026-03-10T23:00:00", "2026-03-10T01:00:00"),
    ],
)
def test_latest_occurrence(now: str, latest: str) -> None:
    assert NIGHTLY.latest(at(now)) == at(latest)


def test_occurrences_between_two_moments() -> None:
    every_two = CronDefinition("fast", "* * * * * */2", "T")
    moments = list(every_two.occurrences(at("2026-01-01T00:00:00"), at("2026-01-01T00:00:07")))
    assert [m.second for m in moments] == [2, 4, 6]


def test_time_zones_follow_daylight_saving() -> None:
    paris = CronDefinition("paris", "0 6 * * *", "T", timezone="Europe/Paris")
    winter = paris.following(at("2026-01-15T00:00:00"))
    summer = paris.following(at("2026-07-15T00:00:00"))
    assert (winter.hour, summer.hour) == (5, 4)  # 06:00 local is 05:00 / 04:00 UTC


def test_catch_up_fires_only_the_latest_missed_occurrence() -> None:
    now = at("2026-03-10T09:30:00")  # beat was down from the 7th to now
    assert NIGHTLY.catch_up(now, last_fired=at("2026-03-07T01:00:00"), window=DAY) == at(
        "2026-03-10T01:00:00"
    )


def test_catch_up_does_nothing_when_the_latest_already_fired() -> None:
    now = at("2026-03-10T09:30:00")
    assert NIGHTLY.catch_up(now, last_fired=at("2026-03-10T01:00:00"), window=DAY) is None


def test_catch_up_skips_an_occurrence_older_than_the_window() -> None:
    now = at("2026-03-10T09:30:00")
    assert NIGHTLY.catch_up(now, last_fired=None, window=3600) is None
    assert NIGHTLY.catch_up(now, last_fired=None, window=DAY) == at("2026-03-10T01:00:00")


def test_idempotency_key_names_cron_and_occurrence() -> None:
    paris = datetime(2026, 3, 10, 2, 0, tzinfo=UTC) + timedelta(hours=0)
    assert NIGHTLY.idempotency_key(paris) == "cron:nightly:2026-03-10T02:00:00+00:00"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron_id": "Bad Id", "schedule": "0 1 * * *"}, "cron id"),
        ({"cron_id": "ok", "schedule": "not cron"}, "invalid schedule"),
        ({"cron_id": "ok", "schedule": "0 1 * * *", "timezone": "Mars/Olympus"}, "time zone"),
    ],
)
def test_bad_definitions_fail_at_definition_time(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(JobDefinitionError, match=message):
        define_cron_job(**kwargs, job_type="T", target=CronRegistry())


def test_a_cron_id_defined_twice_differently_is_an_error() -> None:
    registry = CronRegistry()
    define_cron_job("twice", "0 1 * * *", job_type="A", target=registry)
    with pytest.raises(JobDefinitionError, match="twice"):
        define_cron_job("twice", "0 2 * * *", job_type="A", target=registry)


def test_handler_crons_take_their_occurrence_as_input() -> None:
    registry = CronRegistry()

    @define_cron_job("with-handler", "*/5 * * * *", target=registry)
    def handler(ctx: object, data: object) -> None:
        return None

    definition = registry.get("with-handler")
    assert definition.job_type == "cron.with-handler"
    occurrence = at("2026-01-01T00:05:00")
    assert definition.job_input(occurrence) == {"scheduledFor": occurrence.isoformat()}


def test_beat_makes_up_a_failed_firing_within_a_minute() -> None:
    """A firing task that raised is acknowledged; the periodic catch-up fires it again."""
    settings = load_settings(env="development")
    definitions = CronRegistry()
    definitions.add(NIGHTLY)
    entry = beat_schedule(settings, definitions)["cron-catch-up"]
    assert entry["task"] == CATCH_UP_TASK and entry["schedule"] <= 60
    assert "cron-catch-up" not in beat_schedule(settings, CronRegistry())  # no crons, no need


def test_the_night_clocks_go_back_a_fixed_time_fires_once_and_an_hourly_one_keeps_time() -> None:
    """As cron does: `30 1 * * *` in New York runs once on 1 November 2026, though 01:30
    comes twice; a schedule over every hour runs in both passes of the repeated hour."""
    nightly = CronDefinition("ny-nightly", "30 1 * * *", "ARCHIVE", timezone="America/New_York")
    start, end = datetime(2026, 10, 31, 12, tzinfo=UTC), datetime(2026, 11, 2, 12, tzinfo=UTC)
    assert [o.isoformat() for o in nightly.occurrences(start, end)] == [
        "2026-11-01T05:30:00+00:00",  # 01:30 EDT; 01:30 EST an hour later is no new night
        "2026-11-02T06:30:00+00:00",
    ]
    assert nightly.latest(datetime(2026, 11, 1, 6, 45, tzinfo=UTC)).hour == 5
    half_hourly = CronDefinition("ny-half", "*/30 * * * *", "ARCHIVE", timezone="America/New_York")
    repeated_hour = (
        datetime(2026, 11, 1, 5, 10, tzinfo=UTC),
        datetime(2026, 11, 1, 6, 50, tzinfo=UTC),
    )
    assert len(list(half_hourly.occurrences(*repeated_hour))) == 3  # 05:30, 06:00, 06:30 UTC


def test_macros_and_minute_wildcards_through_the_repeated_hour() -> None:
    """`@daily` reads as `0 0 * * *` (fixed); `*/15 1 * * *` runs every quarter of an hour
    in both passes of the repeated 01:00 hour, as cron runs a minute wildcard."""
    daily = CronDefinition("daily", "@daily", "ARCHIVE", timezone="America/New_York")
    assert daily.latest(datetime(2026, 11, 1, 12, tzinfo=UTC)).isoformat() == (
        "2026-11-01T04:00:00+00:00"
    )
    quarters = CronDefinition("quarters", "*/15 1 * * *", "ARCHIVE", timezone="America/New_York")
    night = (datetime(2026, 11, 1, 4, tzinfo=UTC), datetime(2026, 11, 1, 8, tzinfo=UTC))
    assert len(list(quarters.occurrences(*night))) == 8  # 01:00-01:45, twice
