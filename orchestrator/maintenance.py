"""The lease reaper, which beat runs every few seconds: it takes back the runs of workers
that are gone.

It scans through an index (`lease_expires_at`), takes bounded batches, and changes each
job with its own conditional write, so several reapers at once are safe. A job taken back
is ready again, and the dispatcher is told.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator import transitions
from orchestrator.admission import Admission
from orchestrator.db import Database
from orchestrator.models import Job, utcnow
from orchestrator.states import Attempt, JobStatus
from orchestrator.workers import gone_from_this_host

log = logging.getLogger("orchestrator.maintenance")

BATCH = 500
_COLUMNS = (Job.id, Job.tenant_id, Job.attempt, Job.max_attempts, Job.type, Job.worker)


@dataclass
class Maintenance:
    database: Database
    admission: Admission
    clock: Callable[[], datetime] = utcnow

    def reap_leases(self, batch: int = BATCH) -> int:
        """Take back running jobs whose worker stopped renewing its lease, or is a process
        of this host that is gone (a worker killed, and started again, by `make run`)."""
        now = self.clock()
        with self.database.session() as session:
            expired = session.execute(
                sa.select(*_COLUMNS)
                .where(Job.lease_expires_at < now, Job.status == JobStatus.RUNNING)
                .limit(batch)
            ).all()
            here = session.execute(
                sa.select(*_COLUMNS).where(
                    Job.status == JobStatus.RUNNING,
                    Job.worker.startswith(f"{socket.gethostname()}:", autoescape=True),
                )
            ).all()
        seen = {row.id for row in expired}
        orphans = [row for row in here if row.id not in seen and gone_from_this_host(row.worker)]
        for row, orphaned in [(r, False) for r in expired] + [(r, True) for r in orphans]:
            self._take_back(row, now, orphaned=orphaned)
        if expired or orphans:
            self.admission.became_ready()
        return len(expired) + len(orphans)

    def _take_back(self, row: Any, now: datetime, *, orphaned: bool) -> None:
        with self.database.transaction() as session:
            run = Attempt(row.id, row.tenant_id, row.attempt, row.type)
            status = transitions.expire_lease(
                session, run, row.max_attempts, now, orphaned=orphaned
            )
        log.warning(
            "lease expired: job now %s",
            status,
            extra={
                "job_id": row.id,
                "tenant_id": row.tenant_id,
                "attempt": row.attempt,
                "action": "lease_expired",
            },
        )
