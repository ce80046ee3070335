"""Job ids that sort by creation time, so "newest first" is an index scan on the id."""

from __future__ import annotations

import os
import time

PREFIX = "job_"


def new_job_id(now_ms: int | None = None) -> str:
    """`job_` + 12 hex digits of milliseconds since the epoch + 16 random hex digits."""
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{PREFIX}{millis:012x}{os.urandom(8).hex()}"


def looks_like_job_id(value: str) -> bool:
    body = value.removeprefix(PREFIX)
    return value.startswith(PREFIX) and len(body) == 28 and _is_hex(body)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True
