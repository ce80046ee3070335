"""Celery's settings, chosen for work that must not be lost or run twice.

Values that depend on the deployment (broker URL, visibility timeout, concurrency, queues)
come from `ORCH_*` variables and are applied by `orchestrator.celery_app.create_celery_app`.
"""

# Acknowledge after the task ran, not when it was received: a worker that dies mid-job
# leaves its message to be redelivered rather than lost.
task_acks_late = True
# ...and a child process killed by the OS (OOM, SIGKILL) counts as "not done" too.
task_reject_on_worker_lost = True
# One message at a time per process: no job waits behind a long one in a busy worker's buffer.
worker_prefetch_multiplier = 1

# Job state lives in the database; Celery's result backend would be a second, weaker copy.
task_ignore_result = True
result_backend = None

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

task_default_queue = "default"
# Task events feed Flower's view of every task. They cost the worker a publish per task
# state, so they are off until a monitor asks: Flower switches them on in every worker
# while it runs (its `enable_events` option, on by default), and `celery control
# enable_events` does the same by hand.
worker_send_task_events = False
task_send_sent_event = False

broker_connection_retry_on_startup = True
# A worker that loses the broker mid-task reconnects, and must not exit instead: kombu's
# Redis channel fails on a connection Celery already closed with an error Celery does not
# recover from, so the worker app turns it into a connection error
# (`orchestrator.celery_app.tolerate_closed_broker_connections`, which says when).
# A web request must not hang on a dead broker: fail fast; the job is recorded, ready, and
# the dispatcher admits it again once the broker is back.
broker_connection_timeout = 2
worker_cancel_long_running_tasks_on_connection_loss = False
worker_hijack_root_logger = False
