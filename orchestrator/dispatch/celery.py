"""Celery dispatch: a pipeline becomes a real `chain` of per-type tasks on Redis."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

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
    """Sends pipelines to Redis. After the broker refuses a send, further sends fail at once
    for `backoff` seconds: the jobs are safe in the outbox, and requests stay fast while
    Redis is down instead of each waiting out the client's connection retries."""

    mode = "celery"
    drives_pipelines = True

    def __init__(self, app: Celery, *, backoff: float = 5.0) -> None:
        self.app = app
        self.backoff = backoff
        self._down_until = 0.0

    def signature(self, step: Step) -> Signature:
        # Immutable: each step reads its upstream's result from the database, so the
        # message stays a job id however large the result is.
        # The task id carries the job id, so Celery's own log lines (and Flower) can be
        # found by grepping for the job.
        return self.app.signature(
            task_name(step.type),
            args=(step.job_id,),
            immutable=True,
            queue=step.queue,
            task_id=step.delivery_id,
        )

    def dispatch(self, steps: Sequence[Step], *, not_before: datetime | None = None) -> None:
        self._send([steps], not_before)

    def dispatch_many(self, pipelines: Sequence[Sequence[Step]]) -> None:
        self._send(pipelines, None)

    def _send(self, pipelines: Sequence[Sequence[Step]], not_before: datetime | None) -> None:
        if time.monotonic() < self._down_until:
            raise DispatchError("broker unavailable (recent send failed); left to the sweeper")
        try:
            with self.app.producer_or_acquire() as producer:
                for steps in pipelines:
                    self._canvas(steps).apply_async(retry=False, eta=not_before, producer=producer)
        except (OperationalError, OSError) as exc:
            self._down_until = time.monotonic() + self.backoff
            raise DispatchError(f"broker refused the job: {exc}") from exc

    def _canvas(self, steps: Sequence[Step]) -> Signature:
        signatures = [self.signature(step) for step in steps]
        return signatures[0] if len(signatures) == 1 else chain(*signatures)
