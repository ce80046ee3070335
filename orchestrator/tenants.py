"""Tenants' tiers: the one setting per tenant so far (it decides retention)."""

from __future__ import annotations

import sqlalchemy as sa

from orchestrator.db import Database
from orchestrator.errors import OrchestratorError
from orchestrator.ids import require_tenant_id
from orchestrator.models import Tenant, utcnow
from orchestrator.settings import Settings


def set_tier(database: Database, settings: Settings, tenant_id: str, tier: str) -> None:
    require_tenant_id(tenant_id)
    if tier not in settings.retention_days:
        known = ", ".join(sorted(settings.retention_days))
        raise OrchestratorError(f"unknown tier {tier!r}; ORCH_RETENTION_DAYS has {known}")
    with database.transaction() as session:
        updated = session.execute(sa.update(Tenant).where(Tenant.id == tenant_id).values(tier=tier))
        if not updated.rowcount:  # type: ignore[attr-defined]
            session.add(Tenant(id=tenant_id, tier=tier, created_at=utcnow()))


def known_tenants(database: Database, limit: int = 200) -> list[str]:
    """The tenants that have created jobs, by id (the first `limit`)."""
    with database.session() as session:
        return list(session.scalars(sa.select(Tenant.id).order_by(Tenant.id).limit(limit)))
