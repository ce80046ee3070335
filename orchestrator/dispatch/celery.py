"""Celery dispatch: a pipeline becomes a real `chain` of per-type tasks on Redis."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

import redis
from celery import Celery
from celery.canvas import Signature
from redis.exceptions import RedisError

from orchestrator.dispatch.base import DispatchError, Step
from orchestrator.dispatch.celery_messages import encode, task_name
from orchestrator.settings import Settings


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


class CeleryDispatcher:
    """Sends pipelines to Redis as Celery task messages, a chain of per-type tasks each.

    The messages are written straight into the queues' lists (see `celery_messages`): all
    of a call's messages in one round trip. After the broker refuses a send, further sends
    fail at once for `backoff` seconds: the jobs are safe in the outbox, and requests stay
    fast while Redis is down instead of each waiting out the client's timeouts.
    """

    mode = "celery"
    drives_pipelines = True

    def __init__(self, app: Celery, *, backoff: float = 5.0) -> None:
        self.app = app
        self.backoff = backoff
        self._down_until = 0.0
        timeout = float(app.conf.broker_connection_timeout or 2)
        self._redis = redis.Redis.from_url(
            app.conf.broker_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )

    def signature(self, step: Step) -> Signature:
        """The step as a Celery signature: what `celery_messages` writes, for tests and
        tools that send through Celery itself."""
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
        queues: dict[str, list[bytes]] = {}
        for steps in pipelines:
            queue, message = encode(steps, eta=not_before)
            queues.setdefault(queue, []).append(message)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for queue, messages in queues.items():
                    # LPUSH adds in order at the head, and workers pop from the tail: FIFO.
                    pipe.lpush(queue, *messages)
                pipe.execute()
        except (RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.backoff
            raise DispatchError(f"broker refused the job: {exc}") from exc
