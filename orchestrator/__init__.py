"""A multi-tenant background-job orchestrator on Celery.

The public API: declare job types with `define_job`, create jobs with `send_job`, read them
with `get_job`. Handlers receive a `JobContext` and raise `PermanentError` to fail at once.
"""

from orchestrator.context import JobContext
from orchestrator.errors import PermanentError
from orchestrator.registry import define_job
from orchestrator.retry import RetryPolicy


def __getattr__(name: str) -> object:
    # send_job/get_job pull in the runtime (Celery, SQLAlchemy engines); importing them
    # lazily keeps `from orchestrator import define_job` light for job modules.
    if name in ("send_job", "get_job"):
        from orchestrator import jobs  # noqa: PLC0415

        return getattr(jobs, name)
    raise AttributeError(name)


__all__ = ["JobContext", "PermanentError", "RetryPolicy", "define_job", "get_job", "send_job"]
