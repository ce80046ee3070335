"""Celery task messages (protocol 2) as kombu's Redis transport stores them, built by hand.

`apply_async` spends about half a millisecond per message building headers, serializing
and publishing with a round trip each; a batch of a thousand jobs spent most of its time
there. Our messages are always alike (a job id as the only argument, the rest of the
pipeline as an immutable chain, no result backend), so they are built here directly and
pushed in one `LPUSH` per queue. `tests/unit/test_celery_messages.py` checks them against
what Celery itself writes, and every integration test has real workers consume them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from orchestrator.dispatch.base import Step

TASK_PREFIX = "jobs."
# Celery sets it to the app's reply queue; with results ignored nobody reads it.
_REPLY_TO = str(uuid.uuid3(uuid.NAMESPACE_OID, "orchestrator"))
_HOST = socket.gethostname()


def task_name(job_type: str) -> str:
    return f"{TASK_PREFIX}{job_type}"


def encode(steps: Sequence[Step], *, eta: datetime | None = None) -> tuple[str, bytes]:
    """The message that starts `steps[0]` and chains the rest: (queue, serialized message)."""
    first = steps[0]
    # Celery keeps a chain as a stack: the step to run next is the last element.
    chain = [_signature(step) for step in reversed(steps[1:])] or None
    body = [
        [first.job_id],
        {},
        {"callbacks": None, "errbacks": None, "chain": chain, "chord": None},
    ]
    message = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": _headers(first, eta),
        "properties": {
            "correlation_id": first.delivery_id,
            "reply_to": _REPLY_TO,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": first.queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return first.queue, json.dumps(message).encode()


def _headers(step: Step, eta: datetime | None) -> dict[str, Any]:
    return {
        "lang": "py",
        "task": task_name(step.type),
        "id": step.delivery_id,
        "shadow": None,
        "eta": eta.isoformat() if eta is not None else None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],  # the task's own limits apply
        "root_id": step.delivery_id,
        "parent_id": None,
        "argsrepr": repr((step.job_id,)),
        "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{_HOST}",
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


def _signature(step: Step) -> dict[str, Any]:
    return {
        "task": task_name(step.type),
        "args": [step.job_id],
        "kwargs": {},
        "options": {"queue": step.queue, "task_id": step.delivery_id, "reply_to": _REPLY_TO},
        "subtask_type": None,
        "immutable": True,
    }
