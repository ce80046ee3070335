"""Celery dispatch: a pipeline becomes a real `chain` of per-type tasks on Redis."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

import redis
from celery import Celery
from celery.canvas import Signature
from redis.exceptions import RedisError

from orchestrator.dispatch.base import DispatchError, Step
from orchestrator.dispatch.celery_messages import encode, task_name
from orchestrator.settings import Settings

# A marker in the broker's own data: it disappears with everything else when Redis loses
# its data set (a restart without persistence, a flush), which is how that is noticed.
EPOCH_KEY = "orchestrator:broker-epoch"


def forget_broker_epoch(redis_url: str) -> None:
    """Say that the broker may have lost messages (it crashed, so its append-only file may
    miss its last second): the next sweep re-sends what it held."""
    with redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2) as client:
        client.delete(EPOCH_KEY)


def restore_unacked(app: Celery) -> int:
    """Put every message a worker had taken but not acknowledged back in its queue, as
    kombu does for a worker that stops cleanly. Only for a broker no worker uses yet (the
    embedded one, before its workers start): a worker that died holding messages (killed,
    or stopped after the broker) would otherwise leave them for the visibility timeout."""
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        client = channel.client
        tags = client.hkeys(channel.unacked_key)
        for tag in tags:
            channel.qos.restore_by_tag(tag, client=client)
    return len(tags)


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

    def lost_messages(self) -> bool:
        """True while the broker's epoch marker is missing: it lost its data set (or this
        is its first use), and nobody has said since that what it held was sent again.
        Only the sweeper sets the marker (`messages_resent`), after it did so; a send
        never does, or a loss followed by a send would go unnoticed. False when it cannot
        tell: a broker that does not answer holds nothing new either."""
        try:
            return not self._redis.exists(EPOCH_KEY)
        except (RedisError, OSError):
            return False

    def messages_resent(self) -> None:
        # Unsaid if Redis does not answer: the next sweep sends them once more.
        with contextlib.suppress(RedisError, OSError):
            self._redis.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)

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
