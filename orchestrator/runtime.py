"""What one process needs to do its work, built once from the settings.

Processes that Celery or gunicorn start find theirs with `Runtime.current()`; tests and
embedding code build their own with `Runtime.build(settings)` and pass it explicitly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import redis

from orchestrator.admission import Admission
from orchestrator.cron import crons
from orchestrator.db import Database
from orchestrator.delivery import PushDelivery
from orchestrator.dispatch import Dispatcher
from orchestrator.dispatch.celery import CeleryDispatcher, create_celery_app
from orchestrator.dispatch.cloud_tasks import CloudTasksDispatcher, make_client
from orchestrator.dispatch.http import HttpDispatcher
from orchestrator.dispatch.inline import InlineDispatcher
from orchestrator.dispatch.push import PushTarget
from orchestrator.dispatch.stats import CountingDispatcher, DispatchStats
from orchestrator.maintenance import Maintenance
from orchestrator.registry import Registry, load_job_modules
from orchestrator.runner import Runner
from orchestrator.schedule import CronFirer
from orchestrator.service import JobService
from orchestrator.settings import DispatchMode, Settings, get_settings
from orchestrator.tenant_limits import TenantLimits
from orchestrator.tenant_stats import AdmissionCounts
from orchestrator.window import WindowSizes
from orchestrator.workers import worker_name

# Push modes: tasks created and not yet run, when ORCH_DISPATCH_WINDOW does not say.
PUSH_WINDOW = 64
# Inline: every ready job runs at once.
UNBOUNDED = 10_000


@dataclass
class Runtime:
    settings: Settings
    database: Database
    registry: Registry
    runner: Runner
    dispatcher: Dispatcher
    admission: Admission
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
        dispatcher = make_dispatcher(settings, runner, registry, stats)
        admission = make_admission(settings, database, dispatcher)
        runner.admit_next = admission.may_admit_released
        runner.became_ready = admission.became_ready
        service = JobService(database, registry, admission, settings)
        return cls(
            settings,
            database,
            registry,
            runner,
            dispatcher,
            admission,
            service,
            Maintenance(database, admission),
            cron=CronFirer(database, service, crons.runnable(registry), settings),
            stats=stats,
            delivery=PushDelivery(runner, admission),
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


def make_admission(settings: Settings, database: Database, dispatcher: Dispatcher) -> Admission:
    """Fills: sized by the workers' concurrency for Celery; in push modes a fixed window of
    tasks created and not yet run, and jobs due within the housekeeping tick sent ahead
    with their time; inline, everything ready at once."""
    mode = settings.dispatch_mode
    fixed = settings.dispatch_window
    if mode is DispatchMode.INLINE:
        fixed = fixed or UNBOUNDED
    elif mode is not DispatchMode.CELERY:
        fixed = fixed or PUSH_WINDOW
    ahead = timedelta(0)
    if mode in (DispatchMode.HTTP, DispatchMode.CLOUD_TASKS):
        ahead = timedelta(seconds=settings.schedule_ahead_seconds)
    sizes = WindowSizes(fixed, settings.worker_concurrency)
    # Every mode but inline has Redis (Celery's broker, or beat's in push modes): the
    # admission counts of all the processes that admit meet there.
    client = None if mode is DispatchMode.INLINE else counts_client(settings.redis_url)
    admission = Admission(
        database,
        dispatcher,
        TenantLimits(database, settings),
        sizes,
        ahead=ahead,
        counts=AdmissionCounts(client),
    )
    if isinstance(getattr(dispatcher, "inner", None), HttpDispatcher):
        # A push that fails after it left: its job is admitted again at the next fill.
        dispatcher.inner.failed = lambda delivery: admission.take_back([delivery.number])  # type: ignore[attr-defined]
    return admission


def counts_client(url: str) -> redis.Redis:
    # Short timeouts: the counts are figures, and an admission does not wait on them.
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def make_dispatcher(
    settings: Settings,
    runner: Runner,
    registry: Registry,
    stats: DispatchStats,
) -> Dispatcher:
    mode = settings.dispatch_mode
    if mode is DispatchMode.INLINE:
        inner: Dispatcher = InlineDispatcher(runner)
    elif mode is DispatchMode.CELERY:
        inner = CeleryDispatcher(create_celery_app(settings), publish=settings.publish)
    else:
        assert settings.worker_url is not None  # the settings insist on it in push modes
        target = PushTarget(
            url=settings.worker_url,
            secret=settings.service_auth_secret,
            oidc_service_account=settings.oidc_service_account,
            oidc_audience=settings.expected_oidc_audience,
        )
        if mode is DispatchMode.HTTP:
            inner = HttpDispatcher(target, stats)
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
