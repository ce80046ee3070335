"""A cron job every two seconds, for the beat tests only (`ORCH_JOB_MODULES=...,tests.cronjobs`)."""

from __future__ import annotations

from orchestrator.cron import define_cron_job

define_cron_job("test-every-2s", "* * * * * */2", job_type="TEST_ECHO_UPSTREAM")
