"""A multi-tenant background-job orchestrator on Celery.

The public API: declare job types with `define_job` (and cron schedules with
`define_cron_job`, and workflows of steps with `define_workflow`, `step` and
`map_step`); create jobs with `send_job` or `schedule_job` (inside your own
transaction with `session=`); read them with `get_job` and `list_jobs`; `cancel_job`,
`retry_job` and `retry_failed_jobs`. Handlers receive a `JobContext` and raise
`PermanentError` to fail at once.
"""

from orchestrator.context import JobContext
from orchestrator.cron import define_cron_job
from orchestrator.errors import PermanentError
from orchestrator.registry import define_job
from orchestrator.retry import RetryPolicy
from orchestrator.workflows import define_workflow, map_step, step

_OPERATIONS = (
    "send_job",
    "schedule_job",
    "get_job",
    "list_jobs",
    "cancel_job",
    "retry_job",
    "retry_failed_jobs",
)


def __getattr__(name: str) -> object:
    # send_job/get_job pull in the runtime (Celery, SQLAlchemy engines); importing them
    # lazily keeps `from orchestrator import define_job` light for job modules.
    if name in _OPERATIONS:
        from orchestrator import jobs  # noqa: PLC0415

        return getattr(jobs, name)
    raise AttributeError(name)


__all__ = [
    "JobContext",
    "PermanentError",
    "RetryPolicy",
    "cancel_job",
    "define_cron_job",
    "define_job",
    "define_workflow",
    "get_job",
    "list_jobs",
    "map_step",
    "retry_failed_jobs",
    "retry_job",
    "schedule_job",
    "send_job",
    "step",
]
