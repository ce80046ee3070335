"""Housekeeping that beat runs every few seconds: the outbox sweep and the lease reaper.

Both scan through an index (`dispatch_due_at`, `lease_expires_at`), take bounded batches,
and change each job with its own conditional write, so several sweepers at once are safe.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestrator import transitions
from orchestrator.db import Database
from orchestrator.dispatch import Dispatcher, DispatchError, Step
from orchestrator.models import Job, utcnow
from orchestrator.settings import Settings
from orchestrator.states import CLAIMABLE, JobStatus
from orchestrator.transitions import Attempt
from orchestrator.workers import gone_from_this_host

log = logging.getLogger("orchestrator.maintenance")

BATCH = 500


@dataclass
class Maintenance:
    database: Database
    dispatcher: Dispatcher
    settings: Settings
    clock: Callable[[], datetime] = utcnow

    def sweep_outbox(self, batch: int = BATCH) -> int:
        """Send every job whose dispatch is due: never sent, lost, delayed or backed off.
        After the broker lost its data set, every job it held is due at once."""
        now = self.clock()
        self._notice_a_lost_broker(now)
        with self.database.session() as session:
            due = session.execute(
                sa.select(Job.id, Job.dispatch_due_at)
                .where(Job.dispatch_due_at <= now, Job.status.in_(CLAIMABLE))
                .order_by(Job.dispatch_due_at)
                .limit(batch)
            ).all()
        sent = 0
        for job_id, seen_due in due:
            steps = self._take(job_id, seen_due, now) if seen_due is not None else []
            if not steps:
                continue
            if not self._send(steps, now):
                break  # the broker is down: the next sweep tries again
            sent += 1
        if sent:
            log.info("outbox sweep sent %d job(s)", sent, extra={"action": "swept"})
        return sent

    def _notice_a_lost_broker(self, now: datetime) -> None:
        if not self.dispatcher.lost_messages():
            return
        with self.database.transaction() as session:
            count = transitions.bring_forward_sent(session, now)
        # Only now: had the update failed, the next sweep would still see the loss.
        self.dispatcher.messages_resent()
        if count:
            log.warning(
                "the broker lost what it held (its epoch marker was gone): "
                "sending its %d job(s) again",
                count,
                extra={"action": "broker_lost"},
            )

    def reap_leases(self, batch: int = BATCH) -> int:
        """Take back running jobs whose worker stopped renewing its lease, or is a process
        of this host that is gone (a worker killed, and started again, by `make run`), and
        give parked jobs a fresh chance if their release went missing (as many as their
        tenant has free running slots)."""
        now = self.clock()
        columns = (Job.id, Job.tenant_id, Job.attempt, Job.max_attempts, Job.type, Job.worker)
        with self.database.session() as session:
            expired = session.execute(
                sa.select(*columns)
                .where(Job.lease_expires_at < now, Job.status == JobStatus.RUNNING)
                .limit(batch)
            ).all()
            here = session.execute(
                sa.select(*columns).where(
                    Job.status == JobStatus.RUNNING,
                    Job.worker.startswith(f"{socket.gethostname()}:", autoescape=True),
                )
            ).all()
        seen = {row.id for row in expired}
        orphans = [row for row in here if row.id not in seen and gone_from_this_host(row.worker)]
        for row, orphaned in [(r, False) for r in expired] + [(r, True) for r in orphans]:
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
        # After the expiries: a dead worker's runs no longer hold their tenant's slots.
        self._unpark_stale(now)
        return len(expired) + len(orphans)

    def _unpark_stale(self, now: datetime) -> None:
        if not self.settings.tenant_max_running:
            return
        stale = now - timedelta(seconds=self.settings.lease_seconds)
        with self.database.transaction() as session:
            transitions.unpark_stale(session, stale, now, limit=self.settings.tenant_max_running)

    def _take(self, job_id: str, seen_due: datetime, now: datetime) -> list[Step]:
        """Reserve the entry, and collect the job with the waiting steps after it."""
        resend_at = now + timedelta(seconds=self.settings.redispatch_after_seconds)
        with self.database.transaction() as session:
            if not transitions.take_outbox_entry(
                session, job_id, seen_due, now, resend_at=resend_at
            ):
                return []
            job = session.get(Job, job_id)
            assert job is not None
            later = transitions.later_steps(session, job, JobStatus.WAITING)
            return [Step.of(step) for step in (job, *later)]

    def _send(self, steps: list[Step], now: datetime) -> bool:
        try:
            self.dispatcher.dispatch(steps)
        except DispatchError as exc:
            retry_at = now + timedelta(seconds=self.settings.sweep_interval)
            with self.database.transaction() as session:
                transitions.postpone_outbox_entry(session, steps[0].job_id, retry_at)
            log.warning(
                "outbox sweep could not dispatch: %s",
                exc,
                extra={"job_id": steps[0].job_id, "action": "dispatch_failed"},
            )
            return False
        return True
