"""Celery dispatch: each admitted job is one Celery task message on its queue, in Redis.

Messages go through Celery's own producer by default (`app.send_task`, batched into one
Redis round trip per send), so Celery's publish signals fire, its routing and priority
options apply, and tracing instrumentation sees them. `ORCH_PUBLISH=direct` writes the
same messages built here instead (`celery_messages`), which costs less CPU per message.

The dispatcher also asks Redis what it holds: how many messages wait in each queue (the
window's depth) and which deliveries are there at all (a message that went missing is
noticed within seconds and its job admitted again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu.exceptions import BatchPublishError, OperationalError
from redis.exceptions import RedisError

from orchestrator import tracing
from orchestrator.dispatch.base import Delivery, DispatchError, Held
from orchestrator.dispatch.celery_messages import broker_priority, encode, task_name
from orchestrator.settings import PublishMode, Settings

# Kombu keeps a queue's messages of each priority step in a list of its own (`priority`
# lower is sooner there); ours run from 1 to 10, higher sooner.
PRIORITY_STEPS = (0, 3, 6, 9)
_PRIORITY_SEPARATOR = "\x06\x16"
UNACKED = "unacked"  # kombu's hash of messages taken and not yet acknowledged
WAKE_KEY = "orchestrator:dispatch:wake"


def restore_unacked(app: Celery) -> int:
    """Put every message a worker had taken but not acknowledged back in its queue, as
    kombu does for a worker that stops cleanly. Only for a broker no worker uses yet (the
    embedded one, before its workers start): a worker that died holding messages would
    otherwise leave them until the dispatcher finds them stuck."""
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
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "priority_steps": list(PRIORITY_STEPS),
        },
        worker_concurrency=settings.worker_concurrency,
        task_default_queue=settings.worker_queues[0],
    )
    return app


def priority_lists(queue: str) -> list[str]:
    """The Redis lists holding a queue's messages, soonest first."""
    return [
        queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS
    ]


def queue_depths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """How many messages wait in each queue (all its priority lists), in one round trip."""
    names = list(queues)
    with client.pipeline(transaction=False) as pipe:
        for queue in names:
            for key in priority_lists(queue):
                pipe.llen(key)
        lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    return {q: sum(lengths[i * steps : (i + 1) * steps]) for i, q in enumerate(names)}


def list_for(queue: str, priority: int) -> str:
    wanted = broker_priority(priority)
    step = max(s for s in PRIORITY_STEPS if s <= wanted)
    return priority_lists(queue)[PRIORITY_STEPS.index(step)]


class CeleryDispatcher:
    """Sends deliveries as Celery task messages. After the broker refuses a send, further
    sends fail at once for `backoff` seconds: the jobs stay ready in the database, and a
    dispatcher does not wait out the client's timeouts on every try while Redis is down."""

    mode = "celery"

    def __init__(
        self, app: Celery, *, publish: PublishMode = PublishMode.CELERY, backoff: float = 2.0
    ) -> None:
        self.app = app
        self.publish = publish
        self.backoff = backoff
        self._down_until = 0.0
        timeout = float(app.conf.broker_connection_timeout or 2)
        self.redis = redis.Redis.from_url(
            app.conf.broker_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        self._origin = anon_nodename()
        self._sent_events = bool(app.conf.task_send_sent_event)

    def send(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        if time.monotonic() < self._down_until:
            raise DispatchError("broker unavailable (a recent send failed)")
        try:
            if self.publish is PublishMode.DIRECT:
                self._push(deliveries)
            else:
                self._publish(deliveries)
        # A batch that failed on a connection Redis dropped (kombu's BatchPublishError:
        # delivery uncertain) is a refusal too: raised, it ended the dispatcher's loop.
        # Taken back, a job sent after all is delivered twice and run once (its claim).
        except (RedisError, OSError, OperationalError, BatchPublishError) as exc:
            self._down_until = time.monotonic() + self.backoff
            raise DispatchError(f"broker refused the job: {exc}") from exc

    def _publish(self, deliveries: Sequence[Delivery]) -> None:
        """Through Celery's producer, batched into one Redis round trip. `send_task` is cut
        to the two calls it ends in: Celery's message (`create_task_message`) and its
        send (`send_task_message`, which fires the publish signals). What `send_task` adds
        would cost a fill three times as much CPU for nothing here: routing (our queue is
        the job type's own), a `repr` of the arguments (a job id) and the queue's
        declaration on every message (workers declare the queues they consume, and a
        message for a queue goes straight to its list)."""
        amqp = self.app.amqp
        # Published from inside a task (a pipeline's step, released by its upstream's
        # success): the message names that task as its parent, as `send_task` does.
        parent = self.app.current_worker_task
        parent_id = parent.request.id if parent else None
        root_id = (parent.request.root_id or parent_id) if parent else None
        with self.app.producer_or_acquire() as producer, producer.batch():
            for delivery in deliveries:
                name = task_name(delivery.type)
                with tracing.resumed(delivery.trace):
                    message = amqp.create_task_message(
                        delivery.delivery_id,
                        name,
                        (delivery.job_id,),
                        {},
                        ignore_result=True,
                        argsrepr=repr((delivery.job_id,)),
                        kwargsrepr="{}",
                        origin=self._origin,
                        create_sent_event=self._sent_events,
                        root_id=root_id,
                        parent_id=parent_id,
                    )
                    amqp.send_task_message(
                        producer,
                        name,
                        message,
                        queue=delivery.queue,
                        exchange_type="direct",  # to the queue's own list, by its name
                        declare=(),
                        retry=False,  # a refusal is the fill's to handle: the job stays ready
                        priority=broker_priority(delivery.priority),
                    )

    def _push(self, deliveries: Sequence[Delivery]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for delivery in deliveries:
                # LPUSH at the head; workers pop from the tail: first in, first out.
                pipe.lpush(list_for(delivery.queue, delivery.priority), encode(delivery))
            pipe.execute()

    def waiting(self, queues: Iterable[str]) -> dict[str, int] | None:
        try:
            return queue_depths(self.redis, queues)
        except (RedisError, OSError):
            return None

    def held(self, queues: Iterable[str]) -> Held | None:
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for queue in queues:
                    for key in priority_lists(queue):
                        pipe.lrange(key, 0, -1)
                pipe.hvals(UNACKED)
                *lists, taken = pipe.execute()
        except (RedisError, OSError):
            return None
        waiting = frozenset(_id_of(raw) for messages in lists for raw in messages)
        return Held(waiting=waiting, taken=frozenset(_id_of(raw, unacked=True) for raw in taken))

    def nudge(self) -> None:
        """Tell the dispatcher there is work to admit (it waits on this between fills)."""
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(WAKE_KEY, 1)
                pipe.ltrim(WAKE_KEY, 0, 0)
                pipe.execute()
        except (RedisError, OSError):
            pass  # the dispatcher also looks on its own every fraction of a second

    def wait_for_nudge(self, timeout: float) -> bool:
        try:
            if self.redis.blpop([WAKE_KEY], timeout=timeout) is None:
                return False
            self.redis.delete(WAKE_KEY)
            return True
        except (RedisError, OSError):
            time.sleep(timeout)
            return False


def _id_of(raw: bytes, *, unacked: bool = False) -> str:
    """The task id in a message as kombu keeps it (`unacked` entries wrap it with its
    exchange and routing key)."""
    try:
        message: Any = json.loads(raw)
        if unacked:
            message = message[0]
        return str(message["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
