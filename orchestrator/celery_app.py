"""The Celery application: one task per job type, each a thin shell around the runner."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from datetime import datetime
from typing import Any

import prometheus_client
import redis
from celery import Celery, Task
from celery.exceptions import Ignore
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from kombu.transport import redis as kombu_redis

from orchestrator import heap, metrics, tracing
from orchestrator.beat import CATCH_UP_TASK, FIRE_TASK, MAINTENANCE_QUEUE, cron_entry
from orchestrator.cron import CronRegistry, crons
from orchestrator.dispatch.celery import create_celery_app
from orchestrator.dispatch.celery_messages import task_name
from orchestrator.logs import configure_logging, quiet_tasks
from orchestrator.registry import JobType, Registry, load_job_modules
from orchestrator.runner import Failed, Succeeded
from orchestrator.runtime import Runtime
from orchestrator.settings import DispatchMode, Settings, get_settings
from orchestrator.supervisor import dies_with

# Celery's hard limit fires this long after the soft one, which the handler sees as an error.
HARD_LIMIT_GRACE_SECONDS = 15

log = logging.getLogger("orchestrator.worker")


class JobFailed(Exception):
    """A job failed for good (so Celery and Flower show the task as failed)."""


class JobTask(Task):  # type: ignore[misc]
    """Base of every job task: finds the process's runtime and maps outcomes to Celery.

    A message is one attempt of one job. What comes next is the database's: a retry waits
    there for its backoff, and a pipeline's next step is ready there. The success admits
    that step itself when nobody waits before it (and it is sent from here); otherwise the
    dispatcher admits it in its turn, told at once, as it admits a retry when it is due.
    """

    job_type: JobType

    def run_job(self, job_id: str) -> None:
        runtime = Runtime.current()
        outcome = runtime.runner.run(job_id, interruptible=True)
        if isinstance(outcome, Succeeded) and self.job_type.then is not None:
            runtime.admission.released(outcome.admitted)
        if isinstance(outcome, Failed):
            raise JobFailed(f"{outcome.error.type}: {outcome.error.message}")
        if not isinstance(outcome, Succeeded):
            raise Ignore()  # acknowledged: a duplicate, a cancel, a retry for later


def register_job_tasks(app: Celery, registry: Registry) -> None:
    for job_type in registry:
        _register(app, job_type)


def _register(app: Celery, job_type: JobType) -> None:
    def run(self: JobTask, job_id: str) -> None:
        self.run_job(job_id)

    app.task(
        run,
        bind=True,
        base=JobTask,
        name=task_name(job_type.name),
        job_type=job_type,
        max_retries=None,
        throws=(JobFailed,),
        soft_time_limit=job_type.time_limit,
        time_limit=job_type.time_limit + HARD_LIMIT_GRACE_SECONDS,
        acks_late=True,
        reject_on_worker_lost=True,
    )


def tolerate_closed_broker_connections() -> None:
    """Make a Redis channel of a closed broker connection fail with a connection error,
    which Celery recovers from, instead of an `AttributeError`, which stops the worker.

    Why: when the broker goes away while the worker waits on a BRPOP and holds a message
    it has not acknowledged (a task running, `acks_late`), Celery's consumer tears the
    connection down twice (`Connection.collect()`, then `close()`). The first pass fails
    half-way on the dead socket, leaving the task channel open, and ends by detaching the
    transport from its connection; the second pass closes that channel, which tries to
    put its unacknowledged message back and builds a new Redis pool from the detached
    transport: `'NoneType' object has no attribute 'hostname'`. That is not a connection
    error, so the worker logs "Unrecoverable error" and exits instead of reconnecting
    (kombu and celery 5.7.0; about one Redis restart in four mid-fan-out). A task that
    finishes after the loss acknowledges through the same closed channel and fails the
    same way. As a connection error, the close is ignored and the acknowledgement logged,
    the consumer reconnects, and the message is the broker's to give back after the
    visibility timeout (or the dispatcher's to admit again if the broker lost it).
    """
    original: Callable[..., Any] = kombu_redis.Channel._connparams
    if getattr(original, "_tolerates_closed_connection", False):
        return  # patched already

    def connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        return original(self, asynchronous=asynchronous)

    connparams._tolerates_closed_connection = True  # type: ignore[attr-defined]
    setattr(kombu_redis.Channel, "_connparams", connparams)  # noqa: B010 (a library's method)


def create_worker_app(settings: Settings | None = None) -> Celery:
    """The app `celery -A tasks.worker` loads: every job type registered as a task."""
    tolerate_closed_broker_connections()
    settings = settings or get_settings()
    registry = load_job_modules(settings.job_modules)
    app = create_celery_app(settings)
    register_job_tasks(app, registry)
    register_maintenance_tasks(app)
    app.conf.beat_schedule = beat_schedule(settings, crons.runnable(registry))
    app.conf.beat_scheduler = "orchestrator.beat:Scheduler"
    return app


CATCH_UP_SECONDS = 60.0
REAP_TASK = "orchestrator.reap_leases"
DISPATCH_TICK_TASK = "orchestrator.dispatch_tick"
# Push modes have no dispatcher process: beat has a worker run its round this often.
DISPATCH_TICK_SECONDS = 1.0
# Routine housekeeping that beat sends every few seconds: it logs what it did when it did
# something, and stays out of Flower (no task events) and out of Celery's per-task lines
# (`logs.QuietTasks`). A cron firing is work, and shows like a job.
HOUSEKEEPING_TASKS = frozenset({REAP_TASK, DISPATCH_TICK_TASK, CATCH_UP_TASK})


def register_maintenance_tasks(app: Celery) -> None:
    def reap_leases() -> int:
        return Runtime.current().maintenance.reap_leases()

    def dispatch_tick() -> int:
        return Runtime.current().admission.tick()[1]

    def fire_cron(cron_id: str, occurrence: str) -> int:
        return Runtime.current().cron.fire(cron_id, datetime.fromisoformat(occurrence)).created

    def cron_catch_up() -> int:
        return len(Runtime.current().cron.catch_up())

    # Registered on this app only (`shared=False`): each app registers its own.
    quiet = {"ignore_result": True, "send_events": False, "shared": False}
    app.task(reap_leases, name=REAP_TASK, **quiet)
    app.task(dispatch_tick, name=DISPATCH_TICK_TASK, **quiet)
    app.task(fire_cron, name=FIRE_TASK, ignore_result=True, acks_late=True, shared=False)
    app.task(cron_catch_up, name=CATCH_UP_TASK, acks_late=True, **quiet)


def beat_schedule(settings: Settings, definitions: CronRegistry) -> dict[str, dict[str, Any]]:
    """Housekeeping on its own queue, so it never waits behind a backlog of jobs, and one
    entry per cron job.

    Housekeeping entries expire after one period: a reap that could not run in time is
    dropped, not stacked up behind the next one. Cron firings never expire.
    """

    def every(task: str, seconds: float) -> dict[str, Any]:
        return {
            "task": task,
            "schedule": seconds,
            "options": {"queue": MAINTENANCE_QUEUE, "expires": seconds},
        }

    cron_entries = {f"cron:{d.id}": cron_entry(d) for d in definitions}
    schedule = {
        "lease-reaper": every(REAP_TASK, settings.reap_interval),
        **cron_entries,
    }
    if settings.dispatch_mode is not DispatchMode.CELERY:
        # Push modes fill in the web's requests; this finds scheduled jobs due and
        # deliveries gone missing when no request comes.
        schedule["dispatch-tick"] = every(DISPATCH_TICK_TASK, DISPATCH_TICK_SECONDS)
    if cron_entries:
        # A firing that failed (the database away at 01:00, say) is acknowledged all the
        # same; this makes it up within a minute, as /admin/cron/tick does on Cloud Run.
        # Firing is idempotent, so a catch-up that finds the occurrence fired does nothing.
        schedule["cron-catch-up"] = every(CATCH_UP_TASK, CATCH_UP_SECONDS)
    return schedule


def _configure_worker_logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    quiet_tasks(HOUSEKEEPING_TASKS)


# The worker's main process, as its pool processes know it (set before they are forked).
_MAIN_PID: int | None = None


def _note_main_process(**_: Any) -> None:
    global _MAIN_PID  # noqa: PLW0603 (one value per process, read by its forked children)
    _MAIN_PID = os.getpid()


def _start_pool_process(**_: Any) -> None:
    # A pool process dies with the worker's main process, however that dies: one forked
    # just as a `kill -9` of the whole group went out would otherwise outlive it, holding
    # its job and its connections (a solo pool runs in the main process: nothing to do).
    if _MAIN_PID is not None and os.getpid() != _MAIN_PID:
        dies_with(_MAIN_PID, signal.SIGKILL)()
    # A forked child must not share the parent's database sockets.
    Runtime.reset()
    # Build the child's runtime (imports, engines, job modules) now, not in its first
    # job's time: that cost a fresh worker a few hundred milliseconds per process. It
    # opens no connection; a failure here is the first job's to report.
    try:
        Runtime.current()
    except Exception:
        log.exception("could not build the runtime; the first job will try again")
    # OpenTelemetry's Celery spans start in each pool process (its batch exporter's thread
    # does not survive a fork), after the job modules, which may set a tracer provider.
    tracing.instrument()
    heap.freeze_startup_heap()


def _stop_pool_process(**_: Any) -> None:
    tracing.flush()  # the child leaves through os._exit: no exit handler sends its spans


def _started_main_process(**_: Any) -> None:
    heap.freeze_startup_heap()
    _serve_worker_metrics()


def _serve_worker_metrics() -> None:
    """A worker on its own host or container exposes the counters its processes wrote."""
    port = get_settings().worker_metrics_port
    if port is None:
        return
    prometheus_client.start_http_server(
        port, addr=get_settings().host, registry=metrics.scrape_registry()
    )


setup_logging.connect(_configure_worker_logging)
worker_ready.connect(_started_main_process)
worker_init.connect(_note_main_process)
worker_process_init.connect(_start_pool_process)
worker_process_shutdown.connect(_stop_pool_process)
