"""What each tenant may have of the workers: its weight when tenants contend, and how many
jobs it (and its tier, all together) may have running or sent at once.

Tiers come from the `tenants` table (`orchestrator tenants set-tier`); a tenant without one
is in `ORCH_DEFAULT_TIER`. They are read at most every `REFRESH_SECONDS`, in one query,
so a dispatcher deciding many admissions a second does not ask for each.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

import sqlalchemy as sa

from orchestrator.db import Database
from orchestrator.models import Tenant
from orchestrator.settings import Settings

REFRESH_SECONDS = 10.0
UNLIMITED = 1 << 30


class TenantLimits:
    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self._tiers: dict[str, str] = {}
        self._read_at = float("-inf")

    def tier(self, tenant_id: str) -> str:
        self._refresh()
        return self._tiers.get(tenant_id) or self.settings.default_tier

    def weight(self, tenant_id: str) -> int:
        return self.settings.tier_weights.get(self.tier(tenant_id), 1)

    @property
    def configured(self) -> bool:
        """Whether any running limit is set (for any tenant or tier)."""
        return bool(self.settings.tenant_max_running or self.settings.tier_max_running)

    def limited(self, tenant_id: str) -> bool:
        """Whether a running limit applies to the tenant (its own, or its tier's)."""
        return bool(self.settings.tenant_max_running) or (
            self.tier(tenant_id) in self.settings.tier_max_running
        )

    def headroom(self, tenant_id: str, tenants: Mapping[str, int], tiers: Mapping[str, int]) -> int:
        """How many more jobs the tenant may have running or sent, given what each tenant
        (`tenants`) and each tier (`tiers`) has now; `UNLIMITED` when nothing limits it."""
        room = UNLIMITED
        if self.settings.tenant_max_running:
            room = min(room, self.settings.tenant_max_running - tenants.get(tenant_id, 0))
        tier = self.tier(tenant_id)
        tier_limit = self.settings.tier_max_running.get(tier)
        if tier_limit is not None:
            room = min(room, tier_limit - tiers.get(tier, 0))
        return room

    def tier_counts(self, tenants: Mapping[str, int]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for tenant_id, count in tenants.items():
            counts[self.tier(tenant_id)] += count
        return counts

    def _refresh(self) -> None:
        if time.monotonic() - self._read_at < REFRESH_SECONDS:
            return
        with self.database.session() as session:
            rows = session.execute(
                sa.select(Tenant.id, Tenant.tier).where(Tenant.tier.is_not(None))
            )
            self._tiers = {tenant_id: tier for tenant_id, tier in rows if tier}
        self._read_at = time.monotonic()
