"""A dispatcher that records what it is given, and a job service built around it: the
service, admission and transitions as they run, with nothing sent anywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from orchestrator.admission import Admission
from orchestrator.db import Database
from orchestrator.dispatch import Delivery, Held
from orchestrator.models import utcnow
from orchestrator.registry import Registry
from orchestrator.service import JobService
from orchestrator.settings import Settings
from orchestrator.tenant_limits import TenantLimits
from orchestrator.window import WindowSizes


class RecordingDispatcher:
    """Sends nothing; `sent` lists each call's deliveries. Like a push backend it cannot
    say what waits, so a window holds what was admitted and not yet claimed (`window`
    sizes it, 1,000 by default)."""

    mode = "recording"

    def __init__(self) -> None:
        self.sent: list[list[Delivery]] = []

    def send(self, deliveries: Sequence[Delivery]) -> None:
        self.sent.append(list(deliveries))

    def waiting(self, queues: Iterable[str]) -> dict[str, int] | None:
        return None

    def held(self, queues: Iterable[str]) -> Held | None:
        return None

    def job_ids(self) -> list[str]:
        return [delivery.job_id for call in self.sent for delivery in call]


def recording_service(
    database: Database,
    registry: Registry,
    settings: Settings,
    *,
    window: int = 1000,
    clock: Callable[[], datetime] = utcnow,
) -> JobService:
    """A service whose every creation is filled and 'sent' at once (a push mode's way)."""
    dispatcher = RecordingDispatcher()
    limits = TenantLimits(database, settings)
    admission = Admission(database, dispatcher, limits, WindowSizes(window, 1), clock=clock)
    return JobService(database, registry, admission, settings, clock=clock)


def recorded(service: JobService) -> RecordingDispatcher:
    dispatcher = service.admission.dispatcher
    assert isinstance(dispatcher, RecordingDispatcher)
    return dispatcher
