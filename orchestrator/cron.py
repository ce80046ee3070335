"""Cron jobs: job types that beat creates on a schedule.

    @define_cron_job("daily-tenant-summary", "0 6 * * *", per_tenant=True)
    def summary(ctx: JobContext, data: CronInput) -> dict[str, object]: ...

Each occurrence creates normal job records (one, or one per tenant), visible in the API and
retried per their policy. Each record's idempotency key names the cron and the occurrence,
so two beats firing the same occurrence create it once; the `cron_fires` ledger records
every occurrence that fired.

Catch-up policy: when beat starts, the most recent occurrence is fired if it did not fire
and is less than `ORCH_CRON_CATCHUP_SECONDS` old. Older missed occurrences are not replayed:
a beat down for a week runs the nightly job once, not seven times.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AwareDatetime, BaseModel

from orchestrator.errors import JobDefinitionError
from orchestrator.registry import NAME_PATTERN, Handler, define_job
from orchestrator.retry import RetryPolicy

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9\-]{0,63}$")
H = TypeVar("H", bound=Handler)


class CronInput(BaseModel):
    """The input of a cron job defined with a handler: the occurrence it runs for."""

    model_config = {"extra": "forbid"}

    scheduledFor: AwareDatetime | None = None  # noqa: N815 - the API's field name


@dataclass(frozen=True)
class CronDefinition:
    id: str
    schedule: str
    job_type: str
    timezone: str = "UTC"
    per_tenant: bool = False
    input: dict[str, Any] = field(default_factory=dict)
    # True when the job type takes a CronInput, so the occurrence goes into its input.
    takes_occurrence: bool = False

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.id):
            raise JobDefinitionError(f"cron id {self.id!r} must match {ID_PATTERN.pattern}")
        if not croniter.is_valid(self.schedule):
            raise JobDefinitionError(f"cron {self.id}: invalid schedule {self.schedule!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise JobDefinitionError(
                f"cron {self.id}: unknown time zone {self.timezone!r}"
            ) from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def latest(self, now: datetime) -> datetime:
        """The most recent occurrence at or before `now`, in UTC."""
        times = croniter(self.schedule, (now + timedelta(microseconds=1)).astimezone(self.zone))
        while self._repeated(previous := times.get_prev(datetime)):
            pass
        return previous.astimezone(UTC)

    def following(self, moment: datetime) -> datetime:
        """The first occurrence strictly after `moment`, in UTC."""
        times = croniter(self.schedule, moment.astimezone(self.zone))
        while self._repeated(upcoming := times.get_next(datetime)):
            pass
        return upcoming.astimezone(UTC)

    def _repeated(self, occurrence: datetime) -> bool:
        """The second pass of a wall-clock time, the night clocks go back: no occurrence of
        a schedule at fixed times (cron runs `30 1 * * *` once that night), but one of a
        schedule over every hour or minute (whose runs follow real time)."""
        return self._at_fixed_times and occurrence.astimezone(UTC).astimezone(self.zone).fold == 1

    @cached_property  # asked for each candidate occurrence; the schedule never changes
    def _at_fixed_times(self) -> bool:
        """Neither the minute nor the hour is a wildcard (`*`, `*/n`), macros (`@daily`)
        read as the fields they stand for: cron's test for what runs once in that hour."""
        minute, hour = croniter(self.schedule).expressions[:2]
        return not (minute.startswith("*") or hour.startswith("*"))

    def occurrences(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Every occurrence in (start, end], in UTC."""
        moment = self.following(start)
        while moment <= end:
            yield moment
            moment = self.following(moment)

    def catch_up(
        self, now: datetime, last_fired: datetime | None, window: float
    ) -> datetime | None:
        """The occurrence to fire when beat starts, under the catch-up policy, if any."""
        latest = self.latest(now)
        if last_fired is not None and last_fired >= latest:
            return None
        if (now - latest).total_seconds() > window:
            return None
        return latest

    def idempotency_key(self, occurrence: datetime) -> str:
        return f"cron:{self.id}:{occurrence.astimezone(UTC).isoformat()}"

    def job_input(self, occurrence: datetime) -> dict[str, Any]:
        if self.takes_occurrence:
            return {**self.input, "scheduledFor": occurrence.isoformat()}
        return dict(self.input)


class CronRegistry:
    def __init__(self) -> None:
        self._crons: dict[str, CronDefinition] = {}

    def add(self, definition: CronDefinition) -> None:
        existing = self._crons.get(definition.id)
        if existing is not None and existing != definition:
            raise JobDefinitionError(f"cron {definition.id!r} is defined twice")
        self._crons[definition.id] = definition

    def get(self, cron_id: str) -> CronDefinition:
        try:
            return self._crons[cron_id]
        except KeyError:
            raise JobDefinitionError(f"unknown cron {cron_id!r}") from None

    def __iter__(self) -> Iterator[CronDefinition]:
        return iter(self._crons.values())

    def runnable(self, job_types: Container[str]) -> CronRegistry:
        """The crons whose job type this process knows (its `ORCH_JOB_MODULES`)."""
        subset = CronRegistry()
        for definition in self:
            if definition.job_type in job_types:
                subset.add(definition)
        return subset


crons = CronRegistry()


def define_cron_job(
    cron_id: str,
    schedule: str,
    handler: Handler | None = None,
    *,
    timezone: str = "UTC",
    per_tenant: bool = False,
    job_type: str | None = None,
    input: dict[str, Any] | None = None,  # noqa: A002 - the job's input, as elsewhere
    retry: RetryPolicy | None = None,
    time_limit: float = 300.0,
    target: CronRegistry | None = None,
) -> Callable[[H], H]:
    """Schedule a job: either an existing `job_type` (with a fixed `input`), or a handler
    (directly or as a decorator) that becomes job type `cron.<id>` taking a `CronInput`.

    `per_tenant=True` creates one job per known tenant at each occurrence; otherwise one job
    for the system tenant (`ORCH_SYSTEM_TENANT`).
    """
    registry = target or crons

    def register(function: H) -> H:
        name = f"cron.{cron_id}"
        if not NAME_PATTERN.match(name):
            raise JobDefinitionError(f"cron id {cron_id!r} makes a bad job type name")
        define_job(name, input=CronInput, retry=retry, time_limit=time_limit, public=False)(
            function
        )
        registry.add(
            CronDefinition(
                cron_id, schedule, name, timezone, per_tenant, input or {}, takes_occurrence=True
            )
        )
        return function

    if job_type is not None:
        if handler is not None:
            raise JobDefinitionError(f"cron {cron_id}: give a handler or a job_type, not both")
        registry.add(CronDefinition(cron_id, schedule, job_type, timezone, per_tenant, input or {}))
        return lambda function: function
    if handler is not None:
        register(handler)
        return lambda function: function
    return register
