"""The dispatcher's Celery messages, through a real Redis: those Celery's own producer writes
(the default) and the hand-built ones (`ORCH_PUBLISH=direct`) are the same message; both
go to the list of their queue and priority, in order; Celery's publish signals fire for
the first; and the dispatcher reads back what the broker holds. Real workers consume these
messages in every other integration test.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.signals import after_task_publish, before_task_publish

from orchestrator.dispatch import Delivery, DispatchError
from orchestrator.dispatch.celery import CeleryDispatcher, create_celery_app, list_for
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.settings import PublishMode, load_settings

VOLATILE = {("properties", "delivery_tag"), ("properties", "reply_to"), ("headers", "origin")}
# What Celery's producer fills in that the hand-built messages leave to defaults.
CELERY_ONLY = {("headers", "ignore_result"), ("properties", "body_encoding")}


def _dispatcher(url: str, publish: PublishMode = PublishMode.CELERY) -> CeleryDispatcher:
    settings = load_settings(env="development", redis_url=url, worker_queues="default")
    return CeleryDispatcher(create_celery_app(settings), publish=publish)


def _drain(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    messages = []
    while (raw := client.rpop(key)) is not None:
        message = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        for section, name in VOLATILE:
            message[section].pop(name)
        messages.append(message)
    return messages


@pytest.fixture
def url(redis_server: EmbeddedRedis) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    client.flushdb()


DELIVERIES = [
    Delivery("job_a", "FIRST", "default", 1),
    Delivery("job_b", "SECOND", "default", 2, priority=9),
    Delivery("job_c", "THIRD", "other", 3, priority=1),
]


@pytest.mark.parametrize("delivery", DELIVERIES, ids=lambda d: d.job_id)
def test_the_direct_messages_are_the_ones_celery_writes(url: str, delivery: Delivery) -> None:
    client = redis.Redis.from_url(url)
    key = list_for(delivery.queue, delivery.priority)
    _dispatcher(url).send([delivery])
    celerys = _drain(client, key)
    _dispatcher(url, PublishMode.DIRECT).send([delivery])
    ours = _drain(client, key)
    assert len(ours) == len(celerys) == 1
    for section, name in CELERY_ONLY:
        celerys[0][section].pop(name, None)
        ours[0][section].pop(name, None)
    assert ours == celerys
    assert ours[0]["headers"]["id"] == delivery.delivery_id


def test_celerys_publish_signals_fire_for_each_message(url: str) -> None:
    seen: list[tuple[str, str]] = []

    def before(headers: dict[str, Any], **_: Any) -> None:
        seen.append(("before", headers["id"]))

    def after(headers: dict[str, Any], **_: Any) -> None:
        seen.append(("after", headers["id"]))

    before_task_publish.connect(before)
    after_task_publish.connect(after)
    try:
        _dispatcher(url).send(DELIVERIES[:2])
    finally:
        before_task_publish.disconnect(before)
        after_task_publish.disconnect(after)
    ids = [d.delivery_id for d in DELIVERIES[:2]]
    assert seen == [(kind, i) for i in ids for kind in ("before", "after")]


@pytest.mark.parametrize("publish", list(PublishMode))
def test_a_batch_goes_in_order_and_by_priority(url: str, publish: PublishMode) -> None:
    dispatcher = _dispatcher(url, publish)
    batch = [
        Delivery(f"job_{n}", "FIRST", "default", n, priority=10 if n == 7 else 5) for n in range(10)
    ]
    dispatcher.send(batch)
    assert dispatcher.waiting(["default", "other"]) == {"default": 10, "other": 0}
    held = dispatcher.held(["default"])
    assert held is not None and held.waiting == {d.delivery_id for d in batch}
    assert held.taken == frozenset()
    client = redis.Redis.from_url(url)
    # Workers pop from a list's tail, the soonest priority's list first.
    urgent = _drain(client, list_for("default", 10))
    assert [m["headers"]["id"] for m in urgent] == ["job_7-d7"]
    rest = _drain(client, list_for("default", 5))
    assert [m["headers"]["id"] for m in rest] == [f"job_{n}-d{n}" for n in range(10) if n != 7]


def test_a_broker_that_is_down_is_a_dispatch_error() -> None:
    dispatcher = _dispatcher("redis://127.0.0.1:9/0")  # nothing listens on port 9
    with pytest.raises(DispatchError, match="broker refused"):
        dispatcher.send(DELIVERIES[:1])
    with pytest.raises(DispatchError, match="recent send failed"):
        dispatcher.send(DELIVERIES[:1])  # fails fast while backing off
    assert dispatcher.waiting(["default"]) is None and dispatcher.held(["default"]) is None
