"""Redis dies under a worker's live broker connection: tearing it down fails only with
errors the worker recovers from, never with one that ends its process (the worker of the
chaos test's Redis restart exited with "Unrecoverable error" and ran nothing more)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import kombu.common
import pytest

from orchestrator.celery_app import tolerate_closed_broker_connections
from orchestrator.embedded_redis import EmbeddedRedis
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
