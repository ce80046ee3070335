"""Benchmarks: the orchestrator beside raw Celery, on real Redis and databases (`make bench`)."""
