"""Redis dies under a live broker connection: the worker's and the dispatcher's uses of it
fail only with errors they recover from, never with one that ends their process (the two
ways the chaos test's Redis restart left jobs waiting: the worker exited with
"Unrecoverable error", or the dispatcher with `BatchPublishError`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import kombu.common
import pytest

from orchestrator.celery_app import tolerate_closed_broker_connections
from orchestrator.dispatch import Delivery, DispatchError
from orchestrator.dispatch.celery import CeleryDispatcher, create_celery_app
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.settings import load_settings
from tests.servers import free_port

# kombu's API is untyped: reached through Any.
KOMBU: Any = kombu


@pytest.fixture
def doomed_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis.start(port=free_port(), data_dir=tmp_path) as server:
        yield server


def test_a_connection_lost_mid_task_closes_and_its_late_ack_is_a_connection_error(
    doomed_redis: EmbeddedRedis,
) -> None:
    tolerate_closed_broker_connections()
    connection = KOMBU.Connection(doomed_redis.url)
    channel = connection.default_channel
    tasks = KOMBU.Queue("tasks", KOMBU.Exchange("tasks", type="direct"), "tasks")
    with connection.Producer() as producer:
        producer.publish({"job": 1}, exchange=tasks.exchange, routing_key="tasks", declare=[tasks])
    taken: list[Any] = []
    consumer = connection.Consumer(
        [tasks], channel=channel, callbacks=[lambda _, message: taken.append(message)]
    )
    consumer.consume()
    connection.drain_events(timeout=5)  # a task taken, not acknowledged (acks_late)
    # The remote-control channel: an auto-delete fanout queue, deleted as it closes.
    control = connection.channel()
    broadcast = KOMBU.Queue("control", KOMBU.Exchange("control", type="fanout"), auto_delete=True)
    connection.Consumer([broadcast], channel=control, no_ack=True).consume()
    assert control.client is not None
    channel._brpop_start()  # the event loop's BRPOP, waiting for the next task

    doomed_redis.kill()
    # What Celery's consumer does on a connection loss (`on_connection_error_after_connected`).
    with contextlib.suppress(Exception):  # as Celery does
        connection.collect(socket_timeout=1)
    # Without `tolerate_closed_broker_connections`: AttributeError ('NoneType' object has
    # no attribute 'hostname'), which Celery treats as unrecoverable.
    KOMBU.common.ignore_errors(connection, connection.close)

    [message] = taken
    with pytest.raises(connection.connection_errors):  # logged by Celery, not fatal
        message.ack()


def test_a_publish_on_a_connection_redis_dropped_is_refused_not_raised(
    doomed_redis: EmbeddedRedis,
) -> None:
    """The dispatcher's pooled producer connection outlives Redis: the batch's failure
    (kombu's `BatchPublishError`, delivery uncertain) is a refusal the fill takes back, not
    an exception that ends the dispatcher's loop."""
    settings = load_settings(
        env="development",
        database_url="sqlite://",
        redis_url=doomed_redis.url,
        job_modules="tests.jobtypes",
    )
    dispatcher = CeleryDispatcher(create_celery_app(settings))
    dispatcher.send([Delivery("job_1", "TEST_FLAKY", "default", number=1)])  # pools a connection
    doomed_redis.kill()
    with pytest.raises(DispatchError, match="delivery is uncertain"):
        dispatcher.send([Delivery("job_2", "TEST_FLAKY", "default", number=2)])
