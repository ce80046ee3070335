"""Celery beat's side of cron jobs: a croniter schedule with time zones and seconds, and a
scheduler that passes each occurrence to the task and catches up once at start.

Beat runs with `--scheduler orchestrator.beat:Scheduler`. It keeps no schedule file: what
fired is in the database (the `cron_fires` ledger), which every beat shares.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery import beat, schedules

from orchestrator.cron import CronDefinition

FIRE_TASK = "orchestrator.fire_cron"
CATCH_UP_TASK = "orchestrator.cron_catch_up"
# Housekeeping and cron firings travel on their own queue, never behind a job backlog.
MAINTENANCE_QUEUE = "maintenance"


class CronSchedule(schedules.BaseSchedule):  # type: ignore[misc]
    def __init__(self, definition: CronDefinition, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.definition = definition

    def now(self) -> datetime:
        return datetime.now(UTC)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.definition.following(_aware(last_run_at)) - self.now()

    def is_due(self, last_run_at: datetime) -> schedules.schedstate:
        now = self.now()
        upcoming = self.definition.following(_aware(last_run_at))
        if upcoming <= now:
            return schedules.schedstate(True, _seconds(self.definition.following(now) - now))
        return schedules.schedstate(False, _seconds(upcoming - now))

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.definition,))

    def __repr__(self) -> str:
        return f"<cron {self.definition.schedule} {self.definition.timezone}>"


def cron_entry(definition: CronDefinition) -> dict[str, Any]:
    return {
        "task": FIRE_TASK,
        "schedule": CronSchedule(definition),
        "args": (definition.id,),
        "options": {"queue": MAINTENANCE_QUEUE},
    }


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """Adds the occurrence being fired to each cron task, and asks for a catch-up at start."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        self.send_task(CATCH_UP_TASK, queue=MAINTENANCE_QUEUE)

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        schedule = entry.schedule
        if isinstance(schedule, CronSchedule):
            # The occurrence is computed here, in beat, the moment it is due: a task that
            # waits in a queue still fires the occurrence it was sent for.
            occurrence = schedule.definition.latest(schedule.now())
            entry.kwargs = {"occurrence": occurrence.isoformat()}
        return super().apply_async(entry, producer, advance, **kwargs)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _seconds(delta: timedelta) -> float:
    return max(delta.total_seconds(), 0.0)
