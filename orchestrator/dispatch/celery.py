"""Celery dispatch: a pipeline becomes a real `chain` of per-type tasks on Redis."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery, chain
from celery.canvas import Signature
from kombu.exceptions import OperationalError

from orchestrator.dispatch.base import DispatchError, Step
from orchestrator.settings import Settings

TASK_PREFIX = "jobs."


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app configured from `celeryconfig` plus the deployment's settings."""
    app = Celery("orchestrator")
    app.config_from_object("celeryconfig")
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        worker_concurrency=settings.worker_concurrency,
        task_default_queue=settings.worker_queues[0],
    )
    return app


def task_name(job_type: str) -> str:
    return f"{TASK_PREFIX}{job_type}"


class CeleryDispatcher:
    mode = "celery"

    def __init__(self, app: Celery) -> None:
        self.app = app

    def signature(self, step: Step) -> Signature:
        # Immutable: each step reads its upstream's result from the database, so the
        # message stays a job id however large the result is.
        return self.app.signature(
            task_name(step.type), args=(step.job_id,), immutable=True, queue=step.queue
        )

    def dispatch(self, steps: Sequence[Step]) -> None:
        signatures = [self.signature(step) for step in steps]
        canvas = signatures[0] if len(signatures) == 1 else chain(*signatures)
        try:
            canvas.apply_async(retry=False)
        except (OperationalError, OSError) as exc:
            raise DispatchError(f"broker refused the job: {exc}") from exc
