"""What one process needs to do its work, built once from the settings.

Processes that Celery or gunicorn start find theirs with `Runtime.current()`; tests and
embedding code build their own with `Runtime.build(settings)` and pass it explicitly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

from orchestrator import transitions
from orchestrator.cron import crons
from orchestrator.db import Database
from orchestrator.delivery import PushDelivery
from orchestrator.dispatch import Dispatcher, Step
from orchestrator.dispatch.celery import CeleryDispatcher, create_celery_app
from orchestrator.dispatch.cloud_tasks import CloudTasksDispatcher, make_client
from orchestrator.dispatch.http import HttpDispatcher
from orchestrator.dispatch.inline import InlineDispatcher
from orchestrator.dispatch.push import PushTarget
from orchestrator.dispatch.stats import CountingDispatcher, DispatchStats
from orchestrator.maintenance import Maintenance
from orchestrator.models import utcnow
from orchestrator.registry import Registry, load_job_modules
from orchestrator.runner import Runner
from orchestrator.schedule import CronFirer
from orchestrator.service import JobService
from orchestrator.settings import DispatchMode, Settings, get_settings
from orchestrator.workers import worker_name


@dataclass
class Runtime:
    settings: Settings
    database: Database
    registry: Registry
    runner: Runner
    dispatcher: Dispatcher
    service: JobService
    maintenance: Maintenance
    cron: CronFirer
    stats: DispatchStats
    delivery: PushDelivery

    _current: ClassVar[Runtime | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        registry = load_job_modules(settings.job_modules)
        database = Database.from_settings(settings)
        runner = Runner(database, registry, settings, worker=worker_name())
        stats = DispatchStats()
        dispatcher = make_dispatcher(settings, runner, registry, stats, database)
        service = JobService(database, registry, dispatcher, settings)
        maintenance = Maintenance(database, dispatcher, settings)
        return cls(
            settings,
            database,
            registry,
            runner,
            dispatcher,
            service,
            maintenance,
            cron=CronFirer(database, service, crons.runnable(registry), settings),
            stats=stats,
            delivery=PushDelivery(runner, service),
        )

    @classmethod
    def current(cls) -> Runtime:
        """This process's runtime, built on first use (after any fork)."""
        with cls._lock:
            if cls._current is None:
                cls._current = cls.build(get_settings())
            return cls._current

    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            if cls._current is not None:
                cls._current.database.dispose()
            cls._current = None


def resend_soon(database: Database, settings: Settings) -> Callable[[Step], None]:
    """For a push that failed after it left (HTTP push sends in the background): the
    sweeper sends the job again after the grace period, not after the long resend of a
    job a backend took."""
    grace = timedelta(seconds=settings.dispatch_grace_seconds)

    def failed(step: Step) -> None:
        now = utcnow()
        database.statement(
            lambda session: transitions.resend_soon(session, step.job_id, now + grace, now)
        )

    return failed


def make_dispatcher(
    settings: Settings,
    runner: Runner,
    registry: Registry,
    stats: DispatchStats,
    database: Database,
) -> Dispatcher:
    mode = settings.dispatch_mode
    if mode is DispatchMode.INLINE:
        inner: Dispatcher = InlineDispatcher(runner)
    elif mode is DispatchMode.CELERY:
        inner = CeleryDispatcher(create_celery_app(settings))
    else:
        assert settings.worker_url is not None  # the settings insist on it in push modes
        target = PushTarget(
            url=settings.worker_url,
            secret=settings.service_auth_secret,
            oidc_service_account=settings.oidc_service_account,
            oidc_audience=settings.expected_oidc_audience,
        )
        if mode is DispatchMode.HTTP:
            inner = HttpDispatcher(target, stats, failed=resend_soon(database, settings))
        else:
            assert settings.cloud_tasks_queue is not None
            inner = CloudTasksDispatcher(
                make_client(settings.cloud_tasks_endpoint),
                settings.cloud_tasks_queue,
                target,
                # A type this process does not define still goes out (a worker may know it).
                lambda job_type: registry.resolve(job_type).time_limit,
            )
    return CountingDispatcher(inner, stats)
