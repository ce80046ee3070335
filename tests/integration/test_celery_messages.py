"""The dispatcher's hand-built task messages are the ones Celery itself would write.

Both go through a real Redis: Celery's `apply_async` of the same signature or chain, and
`CeleryDispatcher`; the decoded messages must agree on everything but the values that are
random or name the sending process. Real workers consume these messages in every other
integration test.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from celery import chain

from orchestrator.dispatch import DispatchError, Step
from orchestrator.dispatch.celery import CeleryDispatcher, create_celery_app
from orchestrator.embedded_redis import EmbeddedRedis
from orchestrator.settings import load_settings

VOLATILE = {("properties", "delivery_tag"), ("properties", "reply_to"), ("headers", "origin")}


def _dispatcher(url: str) -> CeleryDispatcher:
    settings = load_settings(env="development", redis_url=url, worker_queues="default")
    return CeleryDispatcher(create_celery_app(settings))


def _drain(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    messages = []
    while (raw := client.rpop(queue)) is not None:
        message = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        for section, key in VOLATILE:
            message[section].pop(key)
        for signature in message["body"][2]["chain"] or []:
            signature["options"].pop("reply_to")
        messages.append(message)
    return messages


@pytest.fixture
def url(redis_server: EmbeddedRedis) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    return redis_server.url


STEPS = [
    Step("job_a", "FIRST", "default"),
    Step("job_b", "SECOND", "default", attempt=2, requeues=1),
    Step("job_c", "THIRD", "other"),
]


@pytest.mark.parametrize("length", [1, 2, 3])
def test_messages_match_what_celery_writes(url: str, length: int) -> None:
    dispatcher = _dispatcher(url)
    client = redis.Redis.from_url(url)
    steps = STEPS[:length]
    signatures = [dispatcher.signature(step) for step in steps]
    canvas = signatures[0] if length == 1 else chain(*signatures)
    canvas.apply_async(retry=False)
    celerys = _drain(client, "default")

    dispatcher.dispatch(steps)
    ours = _drain(client, "default")
    assert ours == celerys
    assert ours[0]["headers"]["id"] == "job_a-a1-r0"


def test_an_eta_is_carried_like_celerys(url: str) -> None:
    dispatcher = _dispatcher(url)
    client = redis.Redis.from_url(url)
    eta = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    dispatcher.signature(STEPS[0]).apply_async(retry=False, eta=eta)
    celerys = _drain(client, "default")
    dispatcher.dispatch(STEPS[:1], not_before=eta)
    assert _drain(client, "default") == celerys


def test_a_batch_is_one_push_per_queue_in_order(url: str) -> None:
    dispatcher = _dispatcher(url)
    client = redis.Redis.from_url(url)
    pipelines = [[Step(f"job_{n}", "FIRST", "default" if n % 2 else "other")] for n in range(10)]
    dispatcher.dispatch_many(pipelines)
    # Workers pop from the tail: the first job created is the first consumed.
    assert [m["headers"]["id"] for m in _drain(client, "default")] == [
        f"job_{n}-a1-r0" for n in (1, 3, 5, 7, 9)
    ]
    assert [m["headers"]["id"] for m in _drain(client, "other")] == [
        f"job_{n}-a1-r0" for n in (0, 2, 4, 6, 8)
    ]


def test_a_broker_that_is_down_is_a_dispatch_error() -> None:
    dispatcher = _dispatcher("redis://127.0.0.1:9/0")  # nothing listens on port 9
    with pytest.raises(DispatchError, match="broker refused"):
        dispatcher.dispatch(STEPS[:1])
    with pytest.raises(DispatchError, match="recent send failed"):
        dispatcher.dispatch(STEPS[:1])  # fails fast while backing off
