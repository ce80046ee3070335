"""Process logging: one line per record, carrying job id, tenant and action when known."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

# Attributes a log call may pass in `extra` that belong on every line about a job.
CONTEXT_FIELDS = ("job_id", "tenant_id", "job_type", "attempt", "action", "reason", "worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_context(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        pairs = " ".join(f"{key}={value}" for key, value in _context(record).items())
        return f"{base} {pairs}" if pairs else base


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {key: getattr(record, key) for key in CONTEXT_FIELDS if hasattr(record, key)}


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class QuietTasks(logging.Filter):
    """Drops Celery's routine INFO lines about some tasks: a worker's "received" and
    "succeeded", beat's "Sending due task". Housekeeping runs every few seconds; three
    lines each time, saying nothing, buried the lines about jobs. What it did, it logs
    itself; its failures still show (they are not INFO)."""

    LOGGERS = ("celery.worker.strategy", "celery.app.trace", "celery.beat")

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        self.task_names = frozenset(task_names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        return _task_name(record.args) not in self.task_names


def _task_name(args: object) -> object:
    if isinstance(args, Mapping):  # the worker's: a task's context, `name` among it
        return args.get("name")
    if isinstance(args, tuple) and len(args) == 2:  # beat's: (entry's name, task's name)
        return args[1]
    return None


def quiet_tasks(task_names: Iterable[str]) -> None:
    """Install `QuietTasks` on Celery's loggers (once per process)."""
    for name in QuietTasks.LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietTasks) for f in logger.filters):
            logger.addFilter(QuietTasks(task_names))
