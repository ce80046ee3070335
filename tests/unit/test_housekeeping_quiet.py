"""Housekeeping, sent by beat every few seconds, stays out of the logs and out of Flower
unless it did something; jobs and cron firings do not."""

from __future__ import annotations

import logging

import pytest
from celery import Celery

from orchestrator.beat import FIRE_TASK
from orchestrator.celery_app import HOUSEKEEPING_TASKS, REAP_TASK, register_maintenance_tasks
from orchestrator.logs import QuietTasks, quiet_tasks

# Celery's own messages, with the arguments Celery passes (worker/strategy.py,
# app/trace.py, beat.py).
RECEIVED = "Task %(name)s[%(id)s] received"
SUCCEEDED = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"


def _record(logger: str, level: int, msg: str, args: object) -> logging.LogRecord:
    record = logging.LogRecord(logger, level, __file__, 1, msg, None, None)
    record.args = args  # as logging keeps a lone mapping argument
    return record


@pytest.mark.parametrize(
    ("logger", "msg", "args"),
    [
        ("celery.worker.strategy", RECEIVED, {"name": REAP_TASK, "id": "1"}),
        ("celery.app.trace", SUCCEEDED, {"name": REAP_TASK, "id": "1", "runtime": 0.01}),
        ("celery.beat", "Scheduler: Sending due task %s (%s)", ("lease-reaper", REAP_TASK)),
    ],
)
def test_routine_lines_about_housekeeping_are_dropped(logger: str, msg: str, args: object) -> None:
    quiet = QuietTasks(HOUSEKEEPING_TASKS)
    assert not quiet.filter(_record(logger, logging.INFO, msg, args))
    # A failure still shows.
    assert quiet.filter(_record(logger, logging.ERROR, msg, args))


@pytest.mark.parametrize("task", ["jobs.ANALYZE_INSPECTION", FIRE_TASK])
def test_lines_about_jobs_and_cron_firings_stay(task: str) -> None:
    quiet = QuietTasks(HOUSEKEEPING_TASKS)
    assert quiet.filter(_record("celery.worker.strategy", logging.INFO, RECEIVED, {"name": task}))
    beat = ("cron:nightly-archival", task)
    assert quiet.filter(_record("celery.beat", logging.INFO, "Sending %s (%s)", beat))


def test_installed_once_on_celerys_loggers() -> None:
    quiet_tasks(HOUSEKEEPING_TASKS)
    quiet_tasks(HOUSEKEEPING_TASKS)
    for name in QuietTasks.LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, QuietTasks) for f in filters) == 1


def test_housekeeping_sends_no_task_events_so_flower_does_not_list_it() -> None:
    app = Celery("quiet-test")
    register_maintenance_tasks(app)
    for name in HOUSEKEEPING_TASKS:
        assert app.tasks[name].send_events is False
    assert app.tasks[FIRE_TASK].send_events is True
