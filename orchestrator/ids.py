"""Job ids that sort by creation time, so "newest first" is an index scan on the id.

`job_` + 12 hex digits of milliseconds since the epoch + 16 hex digits that are random for
the first id of a millisecond and count up after it, so ids one process makes always sort
in the order it made them (the steps of a pipeline, say), as in ULID's monotonic mode.
"""

from __future__ import annotations

import os
import re
import threading
import time

from orchestrator.errors import OrchestratorError

PREFIX = "job_"
ID_PATTERN = re.compile(r"job_[0-9a-f]{28}")
# A tenant's id (and a user's), wherever it is named (a header, an API key, the CLI, Python):
# it goes into URLs, log lines and metric labels as it is.
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}")
_RANDOM_BITS = 64
# Room to count up within one millisecond before the random part would overflow.
_HEADROOM = 1 << 32

_lock = threading.Lock()
_last: tuple[int, int] = (-1, 0)


def tenant_id_problem(tenant_id: str) -> str | None:
    """Why `tenant_id` cannot name a tenant, or `None` if it can."""
    if TENANT_ID_PATTERN.fullmatch(tenant_id):
        return None
    return f"must match {TENANT_ID_PATTERN.pattern}"


def require_tenant_id(tenant_id: str) -> None:
    """`OrchestratorError` unless `tenant_id` can name a tenant (keys, tiers: one line)."""
    if problem := tenant_id_problem(tenant_id):
        raise OrchestratorError(f"tenant {tenant_id!r} {problem}")


def new_job_id(now_ms: int | None = None) -> str:
    """A new id; `now_ms` (for tests) fixes the time part and skips the per-process order."""
    if now_ms is not None:
        return f"{PREFIX}{now_ms:012x}{_random_part():016x}"
    global _last  # noqa: PLW0603 - one counter per process, guarded by the lock
    millis = int(time.time() * 1000)
    with _lock:
        last_millis, last_random = _last
        if millis <= last_millis and last_random + 1 < (1 << _RANDOM_BITS):
            millis, random_part = last_millis, last_random + 1
        else:
            random_part = _random_part()
        _last = (millis, random_part)
    return f"{PREFIX}{millis:012x}{random_part:016x}"


def _random_part() -> int:
    return int.from_bytes(os.urandom(8)) % ((1 << _RANDOM_BITS) - _HEADROOM)


def looks_like_job_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None
