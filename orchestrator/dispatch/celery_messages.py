"""Celery task messages (protocol 2) as kombu's Redis transport stores them, built by hand:
the dispatcher's `ORCH_PUBLISH=direct`.

`send_task` spends a good part of a millisecond per message building headers and
serializing; our messages are always alike (a job id as the only argument, no callbacks,
no result backend), so they can be built here directly, at a fraction of that. Celery's
publish signals do not fire for them, which is why this is not the default.
`tests/integration/test_celery_messages.py` checks them against what Celery itself writes,
and real workers consume them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from orchestrator.dispatch.base import Delivery

TASK_PREFIX = "jobs."
# Celery sets it to the app's reply queue; with results ignored nobody reads it.
_REPLY_TO = str(uuid.uuid3(uuid.NAMESPACE_OID, "orchestrator"))
_HOST = socket.gethostname()


def task_name(job_type: str) -> str:
    return f"{TASK_PREFIX}{job_type}"


def encode(delivery: Delivery) -> bytes:
    """The message that runs `delivery`, serialized as kombu keeps it in Redis."""
    body = [
        [delivery.job_id],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    message = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": _headers(delivery),
        "properties": {
            "correlation_id": delivery.delivery_id,
            "reply_to": _REPLY_TO,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": delivery.queue},
            "priority": broker_priority(delivery.priority),
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message).encode()


def broker_priority(priority: int) -> int:
    """Kombu's priority for one of ours (10 -> 0, the soonest)."""
    return max(0, min(9, 10 - priority))


def _headers(delivery: Delivery) -> dict[str, Any]:
    return {
        "lang": "py",
        "task": task_name(delivery.type),
        "id": delivery.delivery_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],  # the task's own limits apply
        "root_id": delivery.delivery_id,
        "parent_id": None,
        "argsrepr": repr((delivery.job_id,)),
        "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{_HOST}",
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
