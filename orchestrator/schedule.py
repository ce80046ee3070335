"""Firing cron occurrences: the jobs they create, and the fire ledger.

Beat asks for an occurrence to fire; this module makes it happen at most once, however many
beats ask. Each job's idempotency key names the cron and the occurrence (unique per tenant
in the database), so a second firing of one occurrence creates nothing. The `cron_fires`
ledger row is written after the jobs, so a crash in between leaves the ledger short, never
the jobs: the next request for that occurrence completes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from orchestrator.cron import CronDefinition, CronRegistry
from orchestrator.db import Database
from orchestrator.models import CronFire, Tenant, utcnow
from orchestrator.service import JobService, NewJob
from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.cron")


@dataclass
class Firing:
    created: int  # jobs created by this call; 0 when another beat fired it first


class CronFirer:
    def __init__(
        self,
        database: Database,
        service: JobService,
        crons: CronRegistry,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.service = service
        self.crons = crons
        self.settings = settings
        self.clock = clock

    def fire(self, cron_id: str, occurrence: datetime) -> Firing:
        definition = self.crons.get(cron_id)
        created = 0
        for tenant in self._tenants(definition):
            outcome = self.service.create(
                NewJob(
                    tenant_id=tenant,
                    type=definition.job_type,
                    input=definition.job_input(occurrence),
                    subject=f"cron:{definition.id}@{occurrence.isoformat()}",
                    idempotency_key=definition.idempotency_key(occurrence),
                )
            )
            created += outcome.created
        self._record(definition, occurrence, created)
        log.info(
            "cron %s fired for %s: %d job(s) created",
            cron_id,
            occurrence.isoformat(),
            created,
            extra={"action": "cron_fired"},
        )
        return Firing(created)

    def catch_up(self) -> list[tuple[str, datetime]]:
        """Fire, once, each cron's latest missed occurrence (the documented policy)."""
        now, fired = self.clock(), []
        for definition in self.crons:
            occurrence = definition.catch_up(
                now, self.last_fired(definition.id), self.settings.cron_catchup_seconds
            )
            if occurrence is not None:
                self.fire(definition.id, occurrence)
                fired.append((definition.id, occurrence))
        return fired

    def last_fired(self, cron_id: str) -> datetime | None:
        with self.database.session() as session:
            return session.scalar(
                sa.select(sa.func.max(CronFire.occurrence)).where(CronFire.cron_id == cron_id)
            )

    def _tenants(self, definition: CronDefinition) -> list[str]:
        if not definition.per_tenant:
            return [self.settings.system_tenant]
        with self.database.session() as session:
            return list(
                session.scalars(
                    sa.select(Tenant.id)
                    .where(Tenant.id != self.settings.system_tenant)
                    .order_by(Tenant.id)
                )
            )

    def _record(self, definition: CronDefinition, occurrence: datetime, created: int) -> None:
        try:
            with self.database.transaction() as session:
                session.add(
                    CronFire(
                        cron_id=definition.id,
                        occurrence=occurrence,
                        fired_at=self.clock(),
                        jobs_created=created,
                    )
                )
        except IntegrityError:
            pass  # another beat's firing of this occurrence recorded it first
