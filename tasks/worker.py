"""The Celery entry point: `celery -A tasks.worker worker|beat|flower`."""

from orchestrator.celery_app import create_worker_app

app = create_worker_app()
